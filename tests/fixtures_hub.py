"""Local stand-ins, in the published schemas, for every hub reference of ``full`` and ``small``.

Each writer makes one kind of thing the hub would serve, small enough for a CPU test:

* :func:`write_llama_checkpoint`: a random Llama in the HF layout of Llama-3.1-8B-Instruct
  (``llama3`` RoPE, factor 8, untied) or Llama-3.2-1B-Instruct (factor 32, tied), with
  :func:`llama31_tokenizer` (byte-level BPE with Llama-3's pre-tokenizer, 128,000 BPE ids or
  only those learned, then Llama-3.1's 256 special tokens, its chat template, no pad token) or
  the book's word-level stand-in;
* :func:`write_whisperspeech_quantizer`: a WhisperVQ file saved by WhisperSpeech's own
  ``RQBottleneckTransformer.save_model`` (the ``whisper-vq-stoks-*.model`` format) and the
  openai-whisper checkpoint its encoder comes from;
* :func:`published_chats`, :func:`parquet_shards`, :func:`write_phase1_languages`: upstream's
  phase datasets (``conversations`` chats; ``text`` sound rows, one data directory per language);
* :func:`write_audio_parquet` / :func:`wav_bytes`: AudioBench- and LibriSpeech-shaped parquet
  with real audio columns (encoded ``datasets.Audio`` or ``{array, sampling_rate}`` structs);
* :func:`write_mmlu_copy`: a local copy of ``cais/mmlu`` that lm-eval's ``mmlu`` group reads.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import types
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
import torch
import yaml

from ichigo_lib import tokens as T

# -- base LLMs ---------------------------------------------------------------------------------
LLAMA31_VOCAB = 128_256  # Llama-3.1/3.2's tokenizer: 128,000 BPE ids + 256 special tokens
LLAMA31_NAMED_SPECIALS = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
}
# Llama-3.1-Instruct's chat template without its tool-calling branches: a system turn with the
# knowledge-cutoff lines always comes first, as in the published tokenizer_config.json.
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LAYOUTS = {
    # rope_parameters and the ties of the published config.json files
    "llama3.1": {"factor": 8.0, "tie_word_embeddings": False, "max_position_embeddings": 131072},
    "llama3.2": {"factor": 32.0, "tie_word_embeddings": True, "max_position_embeddings": 131072},
}


def llama31_special_tokens() -> list[str]:
    """Llama-3.1's 256 special tokens in id order (128000..128255)."""
    out, reserved = [], 0
    for i in range(256):
        if i in LLAMA31_NAMED_SPECIALS:
            out.append(LLAMA31_NAMED_SPECIALS[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


def llama31_tokenizer(texts: list[str], merges: int = 1500, bpe_ids: int | None = 128_000):
    """A byte-level BPE tokenizer in Llama-3.1's layout: Llama-3's pre-tokenizer, BPE trained on
    ``texts`` (up to ``merges`` merges), padded to ``bpe_ids`` ids with tokens no merge produces
    (None: the learned ids alone), then Llama-3.1's 256 special tokens (at 128000..128255 when
    padded to 128,000); ``<|eot_id|>`` ends a turn, no pad token, as published."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # Llama-3's pre-tokenizer: its split pattern, then bytes as characters
    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
        r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    spec = json.loads(core.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), bpe_ids or len(vocab)):
        vocab[f"<|filler_{i}|>"] = i  # never produced: no merge makes it
    first_special = len(vocab)
    core = Tokenizer.from_str(json.dumps(spec))
    specials = llama31_special_tokens()
    core.add_special_tokens(specials)
    core.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", first_special)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA31_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=True,
        model_max_length=131072,
    )
    assert len(tokenizer) == first_special + 256 and tokenizer.pad_token is None
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == first_special + 9
    return tokenizer


def write_llama_checkpoint(
    out_dir: Path,
    tokenizer,
    layout: str = "llama3.1",
    embed_dim: int = 32,
    num_layers: int = 1,
    seed: int = 0,
) -> Path:
    """A random Llama in the HF layout of ``layout`` (see :data:`LAYOUTS`): its RoPE scaling,
    tie and context; tiny widths. ``eos_token_id`` lists end-of-text, end-of-message and
    end-of-turn, as Llama-3.1-Instruct's config.json does."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = LAYOUTS[layout]
    ids = tokenizer.get_vocab()
    eos = [ids[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>") if t in ids]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=embed_dim,
        intermediate_size=2 * embed_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as the 8B's 32 / 8
        head_dim=embed_dim // 2,
        max_position_embeddings=shape["max_position_embeddings"],
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": shape["factor"],
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=shape["tie_word_embeddings"],
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, do_sample=False
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# -- the WhisperVQ quantizer, in WhisperSpeech's own file format ---------------------------------
def stub_torchaudio() -> None:
    """WhisperSpeech imports torchaudio/torio at module level but the code under test never
    calls them; PyPI's torchaudio is a CUDA build that does not load on CPU machines."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import torio.io._streaming_media_decoder  # noqa: F401
    except (ImportError, OSError):
        names = ("torio", "torio.io", "torio.io._streaming_media_decoder")
        mods = [types.ModuleType(n) for n in names]
        mods[0].io, mods[1]._streaming_media_decoder = mods[1], mods[2]
        sys.modules.update(dict(zip(names, mods, strict=True)))


def randomise(model: torch.nn.Module) -> None:
    """Random matrices of unit-ish gain (the zero/constant inits give constant codes)."""
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=1.0 / p.shape[-1] ** 0.5)


def write_whisperspeech_quantizer(out_dir: Path, seed: int = 0, n_text_ctx: int = 32):
    """``(vq, quantizer file, whisper file)``: a random WhisperSpeech ``RQBottleneckTransformer``
    saved by its own ``save_model`` (the published ``whisper-vq-stoks-*.model`` format; 512 codes,
    25 tokens/s) and a tiny random openai-whisper checkpoint (``{dims, model_state_dict}``) of the
    width its bottleneck expects (its decoder writes up to ``n_text_ctx // 2`` tokens); ``vq``
    is WhisperSpeech's model with that Whisper attached."""
    stub_torchaudio()
    import whisper
    from whisperspeech import vq_stoks

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dims = whisper.model.ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=51865,
        n_text_ctx=n_text_ctx,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    wmodel = whisper.model.Whisper(dims)
    randomise(wmodel)
    wpath = out_dir / "tiny-whisper.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": wmodel.state_dict()}, wpath)
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):  # CPU-only box
        vq = vq_stoks.RQBottleneckTransformer(
            vq_codes=512,
            q_depth=1,
            n_head=2,
            head_width=32,
            depth=1,
            codebook_dim=16,
            downsample=2,
            threshold_ema_dead_code=0,
            use_cosine_sim=True,
            whisper_model_name="tiny",
        )
    randomise(vq)
    qpath = out_dir / "whisper-vq-stoks-tiny.model"
    vq.save_model(qpath)
    vq.eval()
    vq.whmodel = [wmodel.eval()]
    vq.decoding_options = whisper.DecodingOptions(
        language="en", without_timestamps=True, fp16=False, sample_len=12
    )
    return vq, qpath, wpath


# -- upstream's phase datasets -------------------------------------------------------------------
def published_chats(n: int, seed: int = 0, turns: int = 1, answer: str = "the answer is"):
    """Chat rows in upstream's published schema: ``turns`` spoken questions, each with a text
    answer (``conversations``: OpenAI-style ``role``/``content``, audio turns as strings)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        chat = []
        for _ in range(turns):
            codes = rng.integers(0, 513, rng.integers(5, 60))
            chat.append({"role": "user", "content": T.audio_turn(codes)})
            chat.append({"role": "assistant", "content": " ".join([answer] * rng.integers(1, 4))})
        rows.append({"index": i, "conversations": chat})
    return rows


def parquet_shards(rows: list[dict], directory: Path, shards: int = 3, prefix: str = "train"):
    """``rows`` as ``shards`` parquet files ``<prefix>-K.parquet`` in ``directory``."""
    directory.mkdir(parents=True)
    for k in range(shards):
        datasets.Dataset.from_list(rows[k::shards]).to_parquet(
            str(directory / f"{prefix}-{k}.parquet")
        )
    return directory


def write_phase1_languages(root: Path, languages, rows_per_language: int, seed: int = 0) -> Path:
    """Sound-only rows as ``homebrewltd/raw-speech-whispervq-v2`` lays them out: one data
    directory per language, parquet shards with one column ``text`` holding one
    ``<|sound_start|>...<|sound_end|>`` string."""
    rng = np.random.default_rng(seed)
    for lang in languages:
        texts = [
            T.audio_turn(rng.integers(0, 513, rng.integers(10, 80)))
            for _ in range(rows_per_language)
        ]
        parquet_shards([{"text": t} for t in texts], root / lang, shards=2)
    return root


# -- AudioBench- and LibriSpeech-shaped benchmark sets -------------------------------------------
def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV")
    return buf.getvalue()


def write_audio_parquet(path: Path, columns: dict, encoded: bool) -> Path:
    """A parquet file like the hub's: ``context`` a ``datasets.Audio`` column ({bytes, path},
    the features in the schema metadata) when ``encoded``, else a {array, sampling_rate} struct."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    if encoded:
        features = datasets.Features(
            {
                name: datasets.Audio() if name == "context" else datasets.Value("string")
                for name in columns
            }
        )
        meta = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path)
    return path


# -- MMLU ----------------------------------------------------------------------------------------
def mmlu_subjects() -> list[str]:
    """The 57 subjects lm-eval's ``mmlu`` group names (``dataset_name`` of its subtasks)."""
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    return sorted(yaml.safe_load(p.read_text())["dataset_name"] for p in tasks.glob("mmlu_*.yaml"))


def write_mmlu_copy(root: Path, test_rows: int = 2) -> Path:
    """A local copy in the hub repository's layout: ``<subject>/{test,dev}-*.parquet`` for
    every subject lm-eval's ``mmlu`` group names, and the README's per-subject configs; the
    right letter varies with the row and the subject."""
    configs = []
    for k, subject in enumerate(mmlu_subjects()):
        for split, n in (("test", test_rows), ("dev", 5)):
            rows = [
                {
                    "question": f"Larlor {i} ?",
                    "subject": subject,
                    "choices": ["green", "Vazelro", "Larlor", "what"],
                    "answer": (i + k) % 4,
                }
                for i in range(n)
            ]
            (root / subject).mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(root / subject / f"{split}-00000.parquet")
        files = [{"split": s, "path": f"{subject}/{s}-*"} for s in ("test", "dev")]
        configs.append({"config_name": subject, "data_files": files})
    (root / "README.md").write_text(f"---\n{yaml.safe_dump({'configs': configs})}---\n")
    return root

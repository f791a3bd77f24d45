"""HF-format Llama checkpoints: write a tiny random one, fetch a real one, load it in torchtune.

Every model in the book is handed between stages as an HF transformers directory
(``config.json`` + ``*.safetensors`` + tokenizer files): torchtune's ``FullModelHFCheckpointer``
reads and writes it, lm-evaluation-harness and transformers load it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ichigo_lib.config import LlamaArch
from ichigo_lib.errors import IchigoError

HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "original/tokenizer.model"]


class CheckpointError(IchigoError, FileNotFoundError):
    """A checkpoint directory that cannot be used; the message says what is missing."""


def write_llama_init(
    arch: LlamaArch, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, seed: int
) -> Path:
    """A randomly initialised Llama (HF format, with its tokenizer) for torchtune to train."""
    out_dir = Path(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.embed_dim,
        intermediate_size=arch.intermediate_dim,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        head_dim=arch.embed_dim // arch.num_heads,
        max_position_embeddings=arch.max_seq_len,
        rms_norm_eps=arch.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_base},
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def safetensors_files(ckpt_dir: str | Path) -> list[str]:
    """The weight files of an HF checkpoint, in shard order."""
    files = sorted(p.name for p in Path(ckpt_dir).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{ckpt_dir}: no *.safetensors weight files")
    return files


def validate_hf_checkpoint(ckpt_dir: str | Path) -> dict:
    """Check an HF Llama directory is complete; return its ``config.json``."""
    ckpt_dir = Path(ckpt_dir)
    config_path = ckpt_dir / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{ckpt_dir}: no config.json (not an HF checkpoint directory)")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "llama":
        raise CheckpointError(
            f"{config_path}: model_type is {config.get('model_type')!r}, not llama"
        )
    safetensors_files(ckpt_dir)
    if not (ckpt_dir / "tokenizer.json").exists():
        raise CheckpointError(f"{ckpt_dir}: no tokenizer.json next to the weights")
    return config


def fetch_hf_checkpoint(
    repo: str, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local HF checkpoint directory for ``repo``: a local path as is, else a hub download.

    Hub access uses ``HF_TOKEN`` from the environment (gated models such as Llama-3.1).
    """
    local = Path(repo).expanduser()
    if local.is_dir():
        validate_hf_checkpoint(local)
        return local.resolve()
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=HUB_PATTERNS,
            token=os.environ.get("HF_TOKEN"),
        )
    except Exception as err:  # the hub client raises many types; all mean "not available here"
        raise CheckpointError(
            f"could not download '{repo}' from the hub ({type(err).__name__}: {err}). "
            "Set HF_TOKEN for gated models, or point base_model.hf_repo at a local directory "
            "holding config.json, *.safetensors and tokenizer.json."
        ) from err
    validate_hf_checkpoint(path)
    return Path(path)


def torchtune_llama_from_config(ckpt_dir: str | Path) -> torch.nn.Module:
    """An untrained torchtune Llama with the architecture of ``ckpt_dir/config.json`` (its
    vocabulary included, e.g. Llama-3.1-s's 128,771 tokens); Llama-3.1's scaled RoPE when
    ``rope_scaling`` asks for it, and Llama-3.2's tied output (its 1B and 3B models) when
    ``tie_word_embeddings`` does. The training configs name this as their model component."""
    from torchtune.models.llama3 import llama3
    from torchtune.models.llama3_1 import llama3_1
    from torchtune.models.llama3_2 import llama3_2

    ckpt_dir = Path(ckpt_dir)
    config = validate_hf_checkpoint(ckpt_dir)
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    tied = bool(config.get("tie_word_embeddings", False))
    kwargs = dict(
        vocab_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        embed_dim=config["hidden_size"],
        intermediate_dim=config["intermediate_size"],
        max_seq_len=config["max_position_embeddings"],
        rope_base=float(rope.get("rope_theta", config.get("rope_theta", 500000.0))),
        norm_eps=config["rms_norm_eps"],
    )
    if rope.get("rope_type") == "llama3":
        fixed = {
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        if any(float(rope.get(k, v)) != v for k, v in fixed.items()):
            raise CheckpointError(
                f"{ckpt_dir}/config.json: llama3 RoPE scaling {rope} differs from Llama-3.1's "
                f"{fixed}, the only one torchtune's llama3_1 builder implements"
            )
        if tied:  # Llama-3.2's small models share the input embedding with the output
            return llama3_2(
                **kwargs, scale_factor=int(rope.get("factor", 32)), tie_word_embeddings=True
            )
        return llama3_1(**kwargs, scale_factor=int(rope.get("factor", 8)))
    if tied:
        raise CheckpointError(
            f"{ckpt_dir}/config.json: tied word embeddings with RoPE {rope or 'default'}; "
            "torchtune builds tied Llamas only with Llama-3.2's llama3 RoPE scaling"
        )
    if rope.get("rope_type", "default") == "default":
        return llama3(**kwargs)
    raise CheckpointError(f"{ckpt_dir}/config.json: unsupported RoPE scaling {rope}")


def torchtune_llama_from_hf(ckpt_dir: str | Path) -> torch.nn.Module:
    """Load an HF Llama checkpoint into a torchtune model through ``FullModelHFCheckpointer``
    (the path the training recipes take)."""
    from torchtune.training import FullModelHFCheckpointer

    ckpt_dir = Path(ckpt_dir)
    model = torchtune_llama_from_config(ckpt_dir)
    with tempfile.TemporaryDirectory() as scratch:  # the checkpointer insists on an output dir
        checkpointer = FullModelHFCheckpointer(
            checkpoint_dir=str(ckpt_dir),
            checkpoint_files=safetensors_files(ckpt_dir),
            model_type="LLAMA3",
            output_dir=scratch,
        )
        state = checkpointer.load_checkpoint()["model"]
    model.load_state_dict(state, strict=True)
    return model


def write_sound_init(
    base_dir: str | Path, out_dir: str | Path, codebook: torch.Tensor | None = None, seed: int = 0
) -> dict:
    """The checkpoint phase 1 starts from: ``base_dir`` plus the 515 sound tokens.

    The analogue of upstream's ``llama3.1-s-whispervq-init``: tokenizer extended with
    ``<|sound_start|>``, ``<|sound_end|>`` and ``<|sound_0000|>``..``<|sound_0512|>``; input
    embeddings and (untied) output head grown with mean-initialised rows, so every old token's
    logits are unchanged. With ``codebook`` (the quantizer's code vectors, one row per code,
    see :func:`codebook_embeddings`) the sound tokens' *input* rows mirror the codebook's
    geometry instead, so codes the quantizer finds alike start alike in the LLM. The chat
    template becomes Llama-3's layout without a default system turn, what the phases train on
    (torchtune's Llama-3 format, upstream's token stream): Llama-3.1-Instruct's own template
    would add a dated system turn at inference only. Returns the layout and sizes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ichigo_lib.tokens import extend_hf_tokenizer, resize_token_embeddings
    from ichigo_lib.wordtok import CHAT_TEMPLATE

    validate_hf_checkpoint(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    old_vocab = model.get_input_embeddings().weight.shape[0]
    layout = extend_hf_tokenizer(tokenizer)
    new_vocab = max(len(tokenizer), old_vocab, layout.vocab_size_min)
    resize_token_embeddings(model, new_vocab)
    if codebook is not None:
        emb = model.get_input_embeddings().weight
        rows = codebook_embeddings(emb[:old_vocab], codebook, seed)
        with torch.no_grad():
            emb[layout.first_sound_id : layout.first_sound_id + len(rows)] = rows.to(emb.dtype)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "old_vocab_size": old_vocab,
        "vocab_size": new_vocab,
        "sound_start_id": layout.start_id,
        "sound_end_id": layout.end_id,
        "first_sound_id": layout.first_sound_id,
        "sound_embeddings": "mean" if codebook is None else "codebook",
    }


def codebook_embeddings(text: torch.Tensor, codebook: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Input embeddings for the sound tokens from the quantizer's ``codebook`` (codes x dim).

    Each code's unit vector is carried into the LLM's space by a seeded random orthonormal map
    and scaled to the text embeddings' mean distance from their centroid, around that centroid:
    cosine-near codes (the same sound in two voices, often) get near embeddings, at the scale of
    a word's. The mean initialisation gives every code the same row; the LLM then has to learn
    from a few spoken questions which of 512 codes sound alike.
    """
    text = text.detach().float()
    if codebook.dim() != 2 or codebook.shape[1] > text.shape[1]:
        raise ValueError(
            f"codebook must be (codes, dim) with dim <= the LLM's {text.shape[1]}, "
            f"got {tuple(codebook.shape)}"
        )
    centre = text.mean(0)
    scale = (text - centre).norm(dim=-1).mean()
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(text.shape[1], codebook.shape[1], generator=gen))
    units = torch.nn.functional.normalize(codebook.detach().float(), dim=-1)
    return centre + scale * units @ basis.T


def add_special_token(ckpt_dir: str | Path, token: str, out_dir: str | Path) -> int:
    """``ckpt_dir`` with ``token`` as a special token (a mean-initialised new embedding row when
    the tokenizer lacks it, as Llama-3's reserved tokens need none), written to ``out_dir``.
    Returns the token's id. Used for v0.2's transcription-token ablation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ichigo_lib.tokens import resize_token_embeddings

    validate_hf_checkpoint(ckpt_dir)
    tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype="auto")
    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [token]}, replace_extra_special_tokens=False
        )
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        resize_token_embeddings(model, len(tokenizer))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer.convert_tokens_to_ids(token)

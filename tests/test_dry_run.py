"""A CPU dry run of ``full`` and ``small``: every notebook, under each profile, with papermill.

No line of ``full`` should first run on a GPU user's box. The hub is out of reach here, so the
test writes a local stand-in for every hub reference the two profiles make, each in the schema
upstream published it in (``tests/fixtures_hub.py``), and runs all eight notebooks under
``profile="full"`` and ``profile="small"`` (``runner.run_all``, the two runs side by side in two
processes) with overrides of sizes, devices and sources:

* sources: ``base_model.hf_repo`` -> a random checkpoint in Llama-3.1-8B-Instruct's HF layout for
  ``full`` (``llama3`` RoPE factor 8, untied, grouped-query attention; a byte-level BPE
  ``tokenizer.json`` with Llama-3's pre-tokenizer, then Llama-3.1's 256 special tokens, its chat
  template, ``<|eot_id|>`` as end of turn and no pad token, as published) and in
  Llama-3.2-1B-Instruct's for ``small`` (factor 32, tied embeddings) with the book's word-level
  stand-in tokenizer; ``speech.quantizer``/``speech.whisper`` -> a file written by
  WhisperSpeech's own ``save_model`` (the ``whisper-vq-stoks-*.model`` format) and a tiny
  openai-whisper checkpoint; ``data.published_phase1..3`` -> parquet shards (phase 1: one data
  directory per language, column ``text``; phases 2-3: column ``conversations``);
  ``eval.benchmarks.*`` -> AudioBench-shaped parquet (encoded audio at 22.05 kHz) and
  LibriSpeech-shaped parquet (``{array, sampling_rate}`` at 24 kHz); ``eval.mc.dataset`` -> a
  local copy of ``cais/mmlu`` in the hub repository's layout (all 57 subjects);
  ``eval.judge.url``/``model`` and ``phase3_data.refusal_url``/``refusal_model`` -> a loopback
  OpenAI-compatible server (``tests/http_stub.py``) that rates answers and writes refusals.
* sizes: the world (as ``smoke``), held-out sets, model widths, batch sizes, gradient
  accumulation (kept > 1), ``max_seq_len`` 256, warm-up, ``checkpoint_every``,
  ``data.num_workers``, ``published_rows``, ``eval_inaudible``, ``refusal_pool_size``,
  ``eval.items``/``limit``/``max_new_tokens``, latency clips. The phases keep ``epochs: 1``:
  their steps follow from the fixture's rows. The BPE keeps only its learned ids (a few hundred
  + 256 special + 515 sound, where Llama-3.1 has 128,000 BPE ids): no code depends on the ids
  themselves, and lm-eval's log-softmax over 128,771 logits per position cost ~20 s per
  multiple-choice run here (measured), half of this test's budget over a ``full`` run.
* devices: ``cpu`` everywhere; ``full``'s phases keep ``full_finetune_distributed``, with
  ``nproc_per_node: 2`` (FSDP2 over gloo), ``small``'s the single-device recipe.

Overridden though neither a size, a device nor a source, and why:

* ``data.backend: espeak`` and ``data.path: audio`` (``full``: WhisperSpeech, ``t2s``): every
  phase is published, so the backend only speaks the held-out sets (always through audio), and
  WhisperSpeech's T2S/S2A/Vocos models are hub downloads that need its GPU stack; its adapters
  have their own tests (``test_phase_data``).
* ``phase*.train.dtype: fp32`` and ``eval.mc.dtype: float32`` (``full``: bf16): the dtype is
  the device's; bf16 is what the GPUs compute in, float32 what a CPU computes natively.
* ``small``'s ``eval.mc.benchmark: tinyworld`` (the world's items; ``mmlu`` in both profiles):
  ``small`` inherits ``full``'s multiple-choice stage unchanged and the ``full`` run scores it on
  the local MMLU copy; lm-eval builds MMLU's 114 subtasks (letters and cloze) for every
  evaluation, ~15 s of fixed cost here, five times per run.

``phase*.train.fused_optimizer`` and ``activation_checkpointing`` stay as the profiles set them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soxr
from fixtures_hub import (
    llama31_tokenizer,
    mmlu_subjects,
    parquet_shards,
    published_chats,
    wav_bytes,
    write_audio_parquet,
    write_llama_checkpoint,
    write_mmlu_copy,
    write_phase1_languages,
    write_whisperspeech_quantizer,
)
from http_stub import Reply, chat, serve

from ichigo_lib import runner
from ichigo_lib.config import load_config
from ichigo_lib.evaluate.mc import FORMAT_WORDS
from ichigo_lib.runs import read_manifest
from ichigo_lib.speech.corpus import heldout_voices
from ichigo_lib.speech.tts import espeak_raw
from ichigo_lib.wordtok import build_word_tokenizer
from ichigo_lib.world import build_world

dry_run = pytest.mark.notebook  # the tests that read the two dry runs
ROOT = Path(__file__).resolve().parents[1]

LANGUAGES = ("english", "dutch", "french", "german", "italian", "polish", "portuguese", "spanish")
PHASE1_ROWS_PER_LANGUAGE = 20  # small keeps 0.1 of each: 2
PHASE2_ROWS = 160
PHASE3_ROWS = 60
SMALL_ROWS = {"phase2": 40, "phase3": 30}  # small's data.published_rows
# What the stub's refusal writer says (one per request, by the request's variant number).
REFUSALS = (
    "Sorry, I could not hear your audio. Please try again.",
    "I cannot hear anything in that recording, could you repeat it?",
    "The audio was not clear enough for me. Please say it again.",
    "I could not make out what you said. Can you repeat your question?",
    "That sounded like noise to me. Please repeat your question.",
    "I am unable to understand the recording. Could you say that again?",
)
HERMES = ["Name a green fruit.", "Describe the capital of Larlor.", "Say hello to Vazelro."]
ALPACA = ["Give me one colour.", "What is the capital of Vazelro?", "Count to three."]
UNRATED = "Describe the capital of Larlor."  # the judge's reply to this one has no rating
PHASE_NOTEBOOKS = [
    ("03_phase1_pretrain", "phase1"),
    ("04_phase2_instruct", "phase2"),
    ("05_phase3_refusal", "phase3"),
]
MMLU_ROWS = 1  # per subject: 57 items, both formulations
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about"


def _words(texts) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})


def _judge_or_refusal(i: int, request: dict) -> Reply:
    """The loopback endpoint: refusals for the writer (``Variant N.`` in its request), a rating
    for the judge (none for :data:`UNRATED`, so AudioBench's parse rule counts a failure)."""
    text = request["messages"][-1]["content"]
    variant = re.search(r"Variant (\d+)\.", text)
    if "audio message" in text and variant:
        return Reply(body=chat(REFUSALS[(int(variant.group(1)) - 1) % len(REFUSALS)]))
    if "[Model Answer]" in text:
        if f"[Question]\n{UNRATED}\n" in text:
            return Reply(body=chat("Explanation: I cannot decide on this one."))
        return Reply(body=chat("Explanation: it is close to the reference.\nRating: 3"))
    return Reply(400, {"error": f"unexpected request: {text[:80]!r}"})


@pytest.fixture(scope="module")
def stub():
    with serve(_judge_or_refusal) as server:
        yield server


def _sizes() -> dict:
    """What both dry runs set: sizes, devices and (per the module docstring) the rest."""
    train = {"max_seq_len": 256, "warmup_steps": 1, "device": "cpu", "dtype": "fp32"}
    return {
        "world": {
            "num_countries": 24,
            "mc_fewshot": 8,
            "mc_test_items": 24,
            "num_dialogues": 20,
            "sentences_per_language": 16,
        },
        "speech": {
            "device": "cpu",
            "encode_batch_size": 8,
            "corpus": {
                "voices_per_sentence": 1,
                "extra_english_questions": 8,
                "heldout_per_language": 1,
            },
        },
        "data": {
            "backend": "espeak",
            "path": "audio",
            "device": "cpu",
            "num_workers": 2,
            "rows_per_shard": 20,
            "flush_every": 5,
            "max_seq_len": 256,
            "eval_questions": 8,
            "eval_sentences_per_language": 1,
        },
        "phase1": {"train": train},
        "phase2": {"train": train},
        "phase3": {"train": train},
        "phase3_data": {"eval_inaudible": 8, "refusal_pool_size": len(REFUSALS)},
        "eval": {
            "mc": {"device": "cpu", "dtype": "float32", "limit": MMLU_ROWS},
            "judge": {"concurrency": 2, "max_retries": 1, "backoff_s": 0.0},
            "latency": {"clips": 2},
            "benchmarks": {"max_new_tokens": 6},
            "max_new_tokens": 6,
            "items": 4,
            "device": "cpu",
        },
    }


def _deep(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def write_hub(root: Path, url: str) -> dict:
    """Every hub reference of ``full``/``small`` as local files under ``root``, and the sources
    overrides that point at them (the judge and the refusal writer at ``url``)."""
    world = build_world(load_config("full", {"world": _sizes()["world"]}).world)
    fixture_texts = [*REFUSALS, *HERMES, *ALPACA, "the answer is", "A reply to:"]
    words = [*world.vocabulary(), *FORMAT_WORDS, *_words(fixture_texts)]
    # full: Llama-3.1-8B-Instruct's layout and tokenizer; small: the stand-in, Llama-3.2's ties.
    # The BPE learns MMLU's prompt words too (lm-eval's letter prompts stay short).
    mmlu_words = [MMLU_DESCRIPTION, *(s.replace("_", " ") for s in mmlu_subjects())]
    bpe = llama31_tokenizer([" ".join(words), *fixture_texts, *mmlu_words] * 4, bpe_ids=None)
    llama31 = write_llama_checkpoint(root / "Llama-3.1-8B-Instruct", bpe, "llama3.1")
    stand_in = build_word_tokenizer(words)
    llama32 = write_llama_checkpoint(root / "Llama-3.2-1B-Instruct", stand_in, "llama3.2")
    _, quantizer, whisper = write_whisperspeech_quantizer(root / "WhisperSpeech", n_text_ctx=16)
    phase1 = write_phase1_languages(
        root / "raw-speech-whispervq-v2", LANGUAGES, PHASE1_ROWS_PER_LANGUAGE
    )
    phase2 = parquet_shards(
        published_chats(PHASE2_ROWS, seed=2), root / "mixed-instruction-speech" / "data"
    ).parent
    phase3 = parquet_shards(
        published_chats(PHASE3_ROWS, seed=3, turns=2), root / "instruction-multiturn" / "data"
    ).parent
    voice = heldout_voices("en")[0]
    speech = {
        key: [espeak_raw(t, voice) for t in texts]
        for key, texts in (("openhermes", HERMES), ("alpaca", ALPACA))
    }
    sets = {}
    for key, texts in (("openhermes", HERMES), ("alpaca", ALPACA)):
        columns = {
            "context": [
                {"bytes": wav_bytes(s, rate), "path": f"{i}.wav"}
                for i, (s, rate) in enumerate(speech[key])
            ],
            "speech_instruction": texts,
            "answer": [f"A reply to: {t}" for t in texts],
        }
        path = root / key / "data" / "test-00000-of-00001.parquet"
        sets[key] = str(write_audio_parquet(path, columns, encoded=True).parents[1])
    librispeech = {
        "context": [
            {"array": soxr.resample(s, rate, 24_000).tolist(), "sampling_rate": 24_000}
            for s, rate in speech["openhermes"]
        ],
        "answer": [t.upper() for t in HERMES],
    }
    path = root / "librispeech_test_clean_v2" / "data" / "test-00000-of-00001.parquet"
    sets["librispeech"] = str(write_audio_parquet(path, librispeech, encoded=False).parents[1])
    mmlu = write_mmlu_copy(root / "mmlu", test_rows=MMLU_ROWS)
    sources = {
        "speech": {"quantizer": str(quantizer), "whisper": str(whisper)},
        "data": {
            "published_phase1": str(phase1),
            "published_phase2": str(phase2),
            "published_phase3": str(phase3),
        },
        "phase3_data": {"refusal_url": url, "refusal_model": "stub-writer"},
        "eval": {
            "mc": {"dataset": str(mmlu)},
            "judge": {"url": url, "model": "stub-judge"},
            "benchmarks": sets,
        },
    }
    return {"root": root, "llama31": llama31, "llama32": llama32, "sources": sources}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, stub):
    return write_hub(tmp_path_factory.mktemp("hub"), stub.url)


def full_overrides(hub: dict) -> dict:
    """``full`` on the fixtures: FSDP2 on 2 CPU processes, global batches of 8 (2 x 2 x 2)."""
    train = {"batch_size": 2, "gradient_accumulation_steps": 2, "nproc_per_node": 2}
    return _deep(
        _deep(_sizes(), hub["sources"]),
        {
            "base_model": {"hf_repo": str(hub["llama31"])},
            "phase1": {"train": train},
            "phase2": {"train": train, "checkpoint_every": 2},  # two periods of one pass
            "phase3": {"train": train},
        },
    )


def small_overrides(hub: dict) -> dict:
    """``small`` on the fixtures: one process, global batches of 2 by gradient accumulation."""
    train = {"batch_size": 1, "gradient_accumulation_steps": 2, "nproc_per_node": 1}
    return _deep(
        _deep(_sizes(), hub["sources"]),
        {
            "base_model": {"hf_repo": str(hub["llama32"])},
            "data": {"published_rows": dict(SMALL_ROWS)},
            # full's multiple choice on the world's items (module docstring)
            "eval": {"mc": {"benchmark": "tinyworld", "dataset": None, "limit": 8}},
            "phase1": {"train": train},
            "phase2": {"train": train},
            "phase3": {"train": train},
        },
    )


SMALL_SCRIPT = """
import json, sys
from ichigo_lib import runner
results = runner.run_all(sys.argv[1], sys.argv[2], overrides=json.loads(sys.argv[3]))
sys.exit(0 if all(r.status == "executed" for r in results) else 1)
"""


@pytest.fixture(scope="module")
def dry_runs(hub, tmp_path_factory):
    """``{profile: its run directory}``: ``small`` in a second process while ``full`` runs here,
    so the two runs share the two cores (each is mostly one busy thread at a time)."""
    small_dir = tmp_path_factory.mktemp("dry-small")
    log = small_dir / "run_all.log"
    argv = [sys.executable, "-c", SMALL_SCRIPT, "small", str(small_dir)]
    with open(log, "w") as out:
        small = subprocess.Popen(
            [*argv, json.dumps(small_overrides(hub))], cwd=ROOT, stdout=out, stderr=out
        )
    try:
        full_dir = tmp_path_factory.mktemp("dry-full")
        results = runner.run_all("full", full_dir, overrides=full_overrides(hub))
        assert [r.status for r in results] == ["executed"] * len(runner.toc_notebooks())
        small.wait(timeout=900)
    finally:
        if small.poll() is None:
            small.kill()
            small.wait()
    assert small.returncode == 0, f"small dry run failed; its log ends:\n{log.read_text()[-6000:]}"
    return {"full": full_dir / "full", "small": small_dir / "small"}


@pytest.fixture(scope="module")
def full_run(dry_runs):
    return dry_runs["full"]


@pytest.fixture(scope="module")
def small_run(dry_runs):
    return dry_runs["small"]


def _manifest(run: Path, name: str):
    return read_manifest(run / name / "manifest.json")


def _global_batch(run: Path, notebook: str, phase: str) -> int:
    t = _manifest(run, notebook).data["config"][phase]["train"]
    return t["batch_size"] * t["gradient_accumulation_steps"] * t["nproc_per_node"]


# -- full ------------------------------------------------------------------------------------------
@dry_run
def test_full_fetches_the_llama31_layout_and_scores_mmlu_letters_on_the_local_copy(hub, full_run):
    base = _manifest(full_run, "00_base_model")
    assert base.artifact("model") == hub["llama31"].resolve()
    assert base.data["config"]["base_model"]["source"] == "hf" and "train_steps" not in base.metrics
    m = base.metrics
    assert m["num_params"] > 0 and m["mc_items"] == 57 * MMLU_ROWS  # every subject, ours
    assert m["mc_accuracy"] == m["mc_accuracy_letter"]  # full reports letters, as the paper
    tokenizer = _manifest(full_run, "01_tokenizer")
    old = tokenizer.metrics["llm_old_vocab_size"]
    assert tokenizer.metrics["llm_vocab_size"] == old + 515  # as Llama-3.1-s's 128,256 + 515
    assert tokenizer.metrics["quantizer_train_steps"] == 0  # the published format, loaded
    assert tokenizer.artifact("quantizer").name == "whisper-vq-stoks-tiny.model"


@dry_run
def test_full_reads_every_published_phase_whole(hub, full_run):
    cards = _manifest(full_run, "02_synthetic_data").data["records"]["dataset_cards"]
    rows = {name: cards[name]["rows"] for name in ("phase1", "phase2", "phase3")}
    assert rows == {
        "phase1": len(LANGUAGES) * PHASE1_ROWS_PER_LANGUAGE,
        "phase2": PHASE2_ROWS,
        "phase3": PHASE3_ROWS,
    }
    assert set(cards["phase1"]["lang_fractions"]) == set(LANGUAGES)
    for name in rows:
        assert cards[name]["published"] == hub["sources"]["data"][f"published_{name}"]


@dry_run
@pytest.mark.parametrize("notebook, phase", PHASE_NOTEBOOKS)
def test_full_trains_each_phase_one_epoch_with_fsdp_on_two_processes(full_run, notebook, phase):
    run = _manifest(full_run, notebook)
    m, cfg = run.metrics, run.data["config"][phase]
    assert cfg["recipe"] == "full_finetune_distributed" and cfg["train"]["nproc_per_node"] == 2
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["num_steps"] is None
    batch = _global_batch(full_run, notebook, phase)
    # steps follow from the data: one pass of packs, the last partial batch left out
    assert m["train_steps"] == m["train_steps_planned"] == m["train_samples"] // batch >= 2
    assert m["train_samples_left_out"] == m["train_samples"] - m["train_steps"] * batch
    assert m["corpus_passes"] == 1 and np.isfinite(m["train_loss_final"])
    log = (full_run / notebook / "full_finetune_distributed.log").read_text()
    assert log.count("Running FullFinetuneRecipeDistributed with resolved config") == 2  # 2 ranks
    assert {"mc_accuracy_letter", "mc_accuracy_cloze"} <= set(m)  # what notebook 07 reuses


@dry_run
def test_full_phase2_checkpoints_in_two_periods_of_one_pass(full_run):
    m = _manifest(full_run, "04_phase2_instruct").metrics
    assert m["train_periods"] == 2 and m["train_steps"] % 2 == 0
    assert 0 <= m["mc_accuracy_transcription_token"] <= 1  # the v0.2 ablation trained too


@dry_run
def test_full_phase3_mixes_inaudible_rows_answered_by_the_endpoints_refusals(full_run):
    run = _manifest(full_run, "05_phase3_refusal")
    refusals = run.data["records"]["refusals"]
    assert refusals["source"] == "endpoint stub-writer" and refusals["from_pool"] == 0
    assert refusals["phrasings"] == len(REFUSALS) and refusals["failed_requests"] == 0
    rows = datasets.load_from_disk(str(run.artifact("dataset_phase3")))
    inaudible = [r for r in rows if r["kind"] == "inaudible"]
    assert len(inaudible) == run.metrics["count_inaudible_single_turn"] >= 1
    assert {r["conversations"][1]["content"] for r in inaudible} <= set(REFUSALS)
    assert run.metrics["count_speech_conversations_with_inaudible_turn"] >= 1
    assert run.metrics["count_eval_inaudible"] == 8


@dry_run
def test_full_evaluation_judges_the_papers_benchmarks_with_the_endpoint(full_run):
    run = _manifest(full_run, "07_evaluation")
    m = run.metrics
    assert m["judge_name"] == "llm:stub-judge" and m["judge_score_mean"] == 3.0
    # AudioBench's parse rule: the reply without a rating scores 0 and is counted
    assert m["audiobench_openhermes_judge_n"] == len(HERMES)
    assert m["audiobench_openhermes_judge_parse_failures"] == 1
    assert m["audiobench_openhermes_judge_score_mean"] == pytest.approx(2.0)
    assert m["audiobench_alpaca_judge_parse_failures"] == 0
    assert m["audiobench_alpaca_judge_score_mean"] == 3.0
    assert m["librispeech_wer"] >= 0 and m["benchmark_ttft_cascade_ms"] > 0
    assert m["ttft_early_fusion_ms"] > 0 and m["ttft_cascade_ms"] > 0
    report = json.loads(run.artifact("report").read_text())
    assert report["benchmarks"]["librispeech"]["items"] == len(HERMES)
    assert report["benchmarks"]["judge"] == "llm:stub-judge (audiobench rubric)"
    knowledge = report["knowledge"]
    assert knowledge["benchmark"] == "mmlu" and knowledge["headline"] == "letter"
    assert knowledge["source"] == {  # every model's MMLU read from its notebook's manifest
        "base": "00_base_model",
        "phase 1": "03_phase1_pretrain",
        "phase 2": "04_phase2_instruct",
        "phase 3": "05_phase3_refusal",
    }


# -- small -----------------------------------------------------------------------------------------
@dry_run
def test_small_samples_the_published_rows_it_asks_for(hub, small_run):
    base = _manifest(small_run, "00_base_model")
    assert base.artifact("model") == hub["llama32"].resolve()
    cards = _manifest(small_run, "02_synthetic_data").data["records"]["dataset_cards"]
    assert cards["phase2"]["rows"] == SMALL_ROWS["phase2"]
    assert cards["phase3"]["rows"] == SMALL_ROWS["phase3"]
    fraction = load_config("small").data.published_phase1_languages["english"]
    per_language = round(fraction * PHASE1_ROWS_PER_LANGUAGE)
    assert cards["phase1"]["rows"] == len(LANGUAGES) * per_language
    assert cards["phase1"]["lang_fractions"] == {lang: 1 / len(LANGUAGES) for lang in LANGUAGES}
    assert _manifest(small_run, "04_phase2_instruct").metrics["rows"] == SMALL_ROWS["phase2"]


@dry_run
@pytest.mark.parametrize("notebook, phase", PHASE_NOTEBOOKS)
def test_small_trains_on_one_device_with_gradient_accumulation(small_run, notebook, phase):
    run = _manifest(small_run, notebook)
    m, cfg = run.metrics, run.data["config"][phase]
    assert cfg["recipe"] == "full_finetune_single_device"
    assert cfg["train"]["gradient_accumulation_steps"] > 1 and cfg["train"]["epochs"] == 1
    batch = _global_batch(small_run, notebook, phase)
    assert m["train_steps"] == m["train_samples"] // batch >= 2
    assert (small_run / notebook / "full_finetune_single_device.log").exists()


@dry_run
def test_small_evaluation_reads_the_same_benchmarks(small_run):
    m = _manifest(small_run, "07_evaluation").metrics
    assert m["judge_name"] == "llm:stub-judge"
    assert m["audiobench_openhermes_judge_parse_failures"] == 1
    phase3 = _manifest(small_run, "05_phase3_refusal").metrics
    assert m["mc_accuracy_letter_phase3"] == phase3["mc_accuracy_letter"]  # read, not re-scored
    refusals = _manifest(small_run, "05_phase3_refusal").data["records"]["refusals"]
    assert refusals["source"] == "endpoint stub-writer"


# -- what the dry run found, pinned by fast tests ------------------------------------------------
@pytest.fixture(scope="module")
def llama31(tmp_path_factory):
    """A Llama-3.1-layout checkpoint (BPE, no pad token) with the 515 sound tokens."""
    from ichigo_lib.checkpoints import write_sound_init

    tmp = tmp_path_factory.mktemp("llama31")
    bpe = llama31_tokenizer(["the answer is " * 20, *REFUSALS], merges=200, bpe_ids=None)
    write_sound_init(write_llama_checkpoint(tmp / "base", bpe), tmp / "init")
    return tmp / "init"


def test_torchtune_rows_on_a_bpe_tokenizer_json_have_llama3_headers_and_counted_lengths(llama31):
    """notebooks 03-05 train through WordTokenizer on Llama-3.1's tokenizer.json: its header
    lacked Llama-3's two newlines, so rows disagreed with the chat format and with the token
    counts the schedule is derived from (04 under full: "36 samples, ... derived for 39")."""
    from torchtune.data import Message
    from transformers import AutoTokenizer

    from ichigo_lib import tokens as T
    from ichigo_lib.data.phases import token_counter
    from ichigo_lib.wordtok import WordTokenizer

    hf, tt = AutoTokenizer.from_pretrained(llama31), WordTokenizer(llama31)
    chat = [
        {"role": "user", "content": "Transcribe:\n" + T.audio_turn([5, 6, 7])},
        {"role": "assistant", "content": REFUSALS[0]},
    ]
    ids, _ = tt.tokenize_messages([Message(role=m["role"], content=m["content"]) for m in chat])
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in chat
    )
    assert ids == hf(text, add_special_tokens=False).input_ids + [tt.eos_id]
    assert len(ids) == token_counter(hf)({"conversations": chat})


def test_batched_replies_and_states_pad_a_tokenizer_without_a_pad_token(llama31):
    """Llama-3.1/3.2-Instruct publish no pad token: batched generation (04-07) and the batched
    forward passes of 06 padded with None."""
    from transformers import AutoTokenizer

    from ichigo_lib.evaluate import inaudible, replies

    assert AutoTokenizer.from_pretrained(llama31).pad_token is None
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": REFUSALS[1]}]]
    assert len(replies.generate_replies(llama31, prompts, max_new_tokens=2)) == 2
    states = inaudible.final_hidden_states(llama31, [np.arange(3), np.arange(9)])
    assert states.shape[0] == 2 and np.isfinite(states).all()
    assert replies.batch_tokenizer(llama31, "left").pad_token == "<|finetune_right_pad_id|>"


def test_kmeans_baseline_takes_fewer_frames_than_codes():
    """A published quantizer's notebook 01 fits the k-means baseline on the held-out clips
    alone: fewer pooled frames than its 512 means raised a shape error."""
    from ichigo_lib.speech.metrics import kmeans_tokenizer

    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(16_000)).astype(np.float32)  # 1 s: 25 frames
    codes = kmeans_tokenizer([clip])(clip)
    assert len(codes) == 25 and codes.max() < 25

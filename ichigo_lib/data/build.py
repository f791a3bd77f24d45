"""Notebook 02's work in one call: plan, speak through the pipeline, build and save the datasets.

Layout under ``out_dir``::

    speech/utterances/   pipeline output {index, tokens} (shards, failure/rejection logs)
    speech/dialogues/    pipeline output {index, conversations}
    datasets/<name>/     HF datasets (Arrow) of every phase and held-out set; a phase with a
                         published dataset (``data.published_<phase>``) takes it instead
    cards.json           one dataset card per dataset (see ``phases.dataset_card``)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ichigo_lib import tokens as T
from ichigo_lib.config import DataConfig, SpeechConfig
from ichigo_lib.data import phases
from ichigo_lib.data.hub import prepare_published
from ichigo_lib.data.pipeline import PipelineReport, merge_shards, run_pipeline
from ichigo_lib.data.synth import SynthSpec
from ichigo_lib.speech import audio as A
from ichigo_lib.world import World

SYNTH = "ichigo_lib.data.synth"


@dataclass
class PhaseData:
    """What :func:`build_phase_data` made: datasets on disk, cards, pipeline reports. A published
    phase's rows are its memory-mapped ``datasets.Dataset``, never a list."""

    plan: phases.SpeechPlan
    rows: dict[str, Any]  # name -> list of rows, or a datasets.Dataset (published)
    paths: dict[str, Path]
    cards: dict[str, dict[str, Any]]
    lengths: dict[str, Any]  # name -> token counts per row (a list or an array)
    reports: dict[str, PipelineReport]
    audio_seconds: float
    pipeline_seconds: float

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / max(self.pipeline_seconds, 1e-9)


def synth_spec(data: DataConfig, speech: SpeechConfig, quantizer: str | Path) -> SynthSpec:
    """The worker spec of a profile (quantizer from notebook 01's manifest)."""
    return SynthSpec(
        quantizer=str(quantizer),
        backend=data.backend,
        path=data.path,
        device=data.device,
        whisper=speech.whisper,
        whisper_root=speech.whisper_root,
        t2s_model=data.t2s_model,
        s2a_model=data.s2a_model,
    )


def _fingerprint(spec: SynthSpec, quantizer: Path, data: DataConfig) -> str:
    """Changes when anything that alters the pipeline's output changes (resume guard); the
    stand-in path reads no quantizer."""
    stand_in = data.path == "stand_in"
    digest = None if stand_in else hashlib.sha256(quantizer.read_bytes()).hexdigest()[:16]
    return json.dumps(
        {"spec": asdict(spec), "quantizer": digest, "seed": data.seed}, sort_keys=True
    )


def speak_plan(
    plan: phases.SpeechPlan,
    data: DataConfig,
    speech: SpeechConfig,
    quantizer: str | Path,
    out_dir: str | Path,
    shard_range: str | None = None,
    progress: bool = True,
    replace_stale: bool = False,
) -> dict[str, PipelineReport]:
    """Run the pipeline over the plan's utterances and conversations (resuming ``out_dir``;
    with ``replace_stale``, speech made for another plan or quantizer is deleted first).

    With ``shard_range`` (``"0:8"``) only those shards run; under ``torchrun`` each rank takes
    its shards of the plan round-robin. Independent jobs on several machines write into one
    shared ``out_dir`` and :func:`build_phase_data` then merges them by shard.
    """
    out_dir = Path(out_dir)
    spec = synth_spec(data, speech, quantizer)
    common = {
        "num_workers": data.num_workers,
        "rows_per_shard": data.rows_per_shard,
        "init": f"{SYNTH}:init_worker",
        "init_kwargs": asdict(spec),
        "validate": f"{SYNTH}:check_row_text",
        "retries": data.retries,
        "flush_every": data.flush_every,
        "fingerprint": _fingerprint(spec, Path(quantizer), data),
        "shard_range": shard_range,
        "progress": progress,
        "replace_stale": replace_stale,
    }
    jobs = (
        ("utterances", plan.utterances, "speak_row", "text"),
        ("dialogues", plan.dialogues, "speak_conversation", None),
    )
    return {  # a published phase 3 leaves no dialogue to speak: that pipeline does not run
        name: run_pipeline(
            rows, f"{SYNTH}:{process}", out_dir / "speech" / name, text_key=key, **common
        )
        for name, rows, process, key in jobs
        if rows
    }


def build_phase_data(
    world: World,
    data: DataConfig,
    speech: SpeechConfig,
    quantizer: str | Path,
    out_dir: str | Path,
    count_tokens,
    progress: bool = True,
) -> PhaseData:
    """Speak the plan through the sharded pipeline (reusing every shard already finished in
    ``out_dir``, by this or other jobs, for this plan and quantizer; speech made for another is
    replaced), then write the phase datasets and their cards.
    ``count_tokens(row)`` -> LLM tokens of a row (for over-long counts and length histograms)."""
    import datasets

    out_dir = Path(out_dir)
    plan = phases.speech_plan(world, data)
    start = time.perf_counter()
    reports = speak_plan(
        plan, data, speech, quantizer, out_dir, progress=progress, replace_stale=True
    )
    seconds = time.perf_counter() - start
    spoken_rows = merge_shards(out_dir / "speech" / "utterances")
    spoken = dict(zip(spoken_rows["index"], spoken_rows["tokens"], strict=True))
    spoken_dialogues = {}
    if plan.dialogues:
        dialogue_rows = merge_shards(out_dir / "speech" / "dialogues")
        spoken_dialogues = dict(
            zip(dialogue_rows["index"], dialogue_rows["conversations"], strict=True)
        )
    audio_tokens = sum(map(len, spoken.values())) + sum(
        _audio_tokens(chat) for chat in spoken_dialogues.values()
    )
    rows: dict[str, Any] = phases.build_phase_datasets(plan, spoken, spoken_dialogues, data)
    failed = _failed_by_dataset(plan, spoken, spoken_dialogues)
    paths, cards, all_lengths = {}, {}, {}
    for name, dataset_rows in rows.items():
        paths[name] = out_dir / "datasets" / name
        ref = getattr(data, f"published_{name}", None)
        if ref is not None:
            languages = data.published_phase1_languages if name == "phase1" else None
            published = prepare_published(
                name,
                ref,
                paths[name],
                count_tokens,
                data.max_seq_len,
                data.num_workers,
                languages,
                seed=data.seed,
                rows=(data.published_rows or {}).get(name),
            )
            rows[name], all_lengths[name] = published.dataset, published.lengths
            cards[name] = published.card
            continue
        datasets.Dataset.from_list(dataset_rows).save_to_disk(str(paths[name]))
        lengths = all_lengths[name] = [count_tokens(r) for r in dataset_rows]
        cards[name] = phases.dataset_card(
            name, dataset_rows, lengths, data.max_seq_len, failed.get(name, 0)
        )
    (out_dir / "cards.json").write_text(json.dumps(cards, indent=1))
    processed = sum(r.rows_processed for r in reports.values())
    audio_seconds = audio_tokens / A.TOKENS_PER_SECOND
    if processed == 0:  # everything was reused from an earlier run: no fresh rate to report
        seconds = float("nan")
    return PhaseData(plan, rows, paths, cards, all_lengths, reports, audio_seconds, seconds)


def _audio_tokens(chat: list[dict[str, str]]) -> int:
    return sum(
        len(T.string_to_codes(m["content"])) for m in chat if m["content"].startswith(T.SOUND_START)
    )


def _failed_by_dataset(plan, spoken, spoken_dialogues) -> dict[str, int]:
    target = {
        "phase1": "phase1",
        "instruction": "phase2",
        "transcription": "phase2",
        "eval_instruction": "eval_speech_qa",
        "eval_transcription": "eval_transcription",
        "eval_instruction_voice": "eval_speech_qa_causes",
        "eval_instruction_phrasing": "eval_speech_qa_causes",
    }
    failed: dict[str, int] = {}
    for u in plan.utterances:
        if u["index"] not in spoken:
            failed[target[u["use"]]] = failed.get(target[u["use"]], 0) + 1
    failed["phase3"] = sum(d["index"] not in spoken_dialogues for d in plan.dialogues)
    return failed


def speak_shards(
    profile: str,
    run_dir: str | Path = "runs",
    overrides: dict | None = None,
    shard_range: str | None = None,
) -> dict[str, PipelineReport]:
    """``ichigo data``: speak notebook 02's plan (or ``shard_range`` of it, or this torchrun
    rank's shards) into notebook 02's run directory, from the manifests of notebooks 00/01."""
    from ichigo_lib.config import load_config
    from ichigo_lib.runs import MANIFEST, read_manifest, repo_root

    cfg = load_config(profile, overrides)
    root = Path(run_dir) if Path(run_dir).is_absolute() else repo_root() / run_dir
    base = read_manifest(root / cfg.profile / "00_base_model" / MANIFEST)
    tokenizer_run = read_manifest(root / cfg.profile / "01_tokenizer" / MANIFEST)
    world = World.load(base.artifact("world"))
    plan = phases.speech_plan(world, cfg.data)
    out_dir = root / cfg.profile / "02_synthetic_data"
    quantizer = tokenizer_run.artifact("quantizer")
    return speak_plan(plan, cfg.data, cfg.speech, quantizer, out_dir, shard_range)

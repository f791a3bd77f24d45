"""Throughput of the speech pipeline: per stage (TTS, resample, encode) and 1 vs N workers.

``ichigo bench data`` prints both tables; notebook 02 shows the per-stage one. Figures are
measured, never asserted: they depend on the machine.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ichigo_lib.config import Config
from ichigo_lib.data.pipeline import merge_shards, run_pipeline
from ichigo_lib.data.synth import SpeechTokenizer, SynthSpec, voice_dict
from ichigo_lib.speech import audio as A
from ichigo_lib.speech import tts
from ichigo_lib.world import World, build_world


def bench_rows(world: World, count: int, speeds: tuple[int, int], seed: int = 0) -> list[dict]:
    """``count`` training sentences of every language, each with a random voice."""
    rng = random.Random(f"bench/{seed}")
    sentences = [s for s in world.sentences if s.split == "train"]
    picked = [sentences[rng.randrange(len(sentences))] for _ in range(count)]
    return [
        {
            "index": i,
            "text": s.text,
            "lang": s.lang,
            "voice": voice_dict(tts.random_voice(s.lang, rng, speeds)),
        }
        for i, s in enumerate(picked)
    ]


def stage_rates(spec: SynthSpec, rows: list[dict]) -> list[dict[str, Any]]:
    """Each stage timed on its own in this process, on one thread like a pipeline worker:
    seconds, rows/s, audio seconds/s."""
    import torch

    from ichigo_lib.data.synth import speak_row

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = SpeechTokenizer(spec)
        speak_row(rows[0], worker)  # warm-up: first-call costs are not throughput
        worker.times = type(worker.times)()
        for row in rows:
            speak_row(row, worker)
    finally:
        torch.set_num_threads(threads)
    t = worker.times
    stages = {"TTS": t.tts, "resample to 16 kHz": t.resample, "WhisperVQ encode": t.encode}
    stages["all stages"] = sum(stages.values())
    return [
        {
            "stage": name,
            "seconds": seconds,
            "rows_per_s": t.rows / seconds if seconds else float("inf"),
            "audio_s_per_s": t.audio_seconds / seconds if seconds else float("inf"),
        }
        for name, seconds in stages.items()
    ]


def pipeline_rates(
    spec: SynthSpec, rows: list[dict], workers: list[int], rows_per_shard: int
) -> list[dict[str, Any]]:
    """The whole sharded pipeline (worker start-up included) with each worker count; speed-up
    relative to the first."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in workers:
            start = time.perf_counter()
            run_pipeline(
                rows,
                "ichigo_lib.data.synth:speak_row",
                Path(tmp) / f"w{n}",
                num_workers=n,
                rows_per_shard=rows_per_shard,
                init="ichigo_lib.data.synth:init_worker",
                init_kwargs=asdict(spec),
                progress=False,
            )
            seconds = time.perf_counter() - start
            tokens = sum(map(len, merge_shards(Path(tmp) / f"w{n}")["tokens"]))
            out.append(
                {
                    "workers": n,
                    "seconds": seconds,
                    "rows_per_s": len(rows) / seconds,
                    "audio_s_per_s": tokens / A.TOKENS_PER_SECOND / seconds,
                }
            )
    for row in out:
        row["speedup"] = out[0]["seconds"] / row["seconds"]
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dicts with the same keys."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def bench_data(
    cfg: Config, quantizer: str | Path | None, rows: int, workers: list[int] | None
) -> str:
    """Both tables for a profile; ``quantizer`` None builds a random tiny one of the profile's
    architecture (same speed as a trained one)."""
    from ichigo_lib.data.build import synth_spec

    with tempfile.TemporaryDirectory() as tmp:
        if quantizer is None:
            from ichigo_lib.speech.train_vq import build_tiny_whispervq
            from ichigo_lib.speech.whispervq import CharCodec

            if cfg.speech.arch is None:
                raise ValueError(f"profile {cfg.profile} trains no quantizer: pass --quantizer")
            model = build_tiny_whispervq(cfg.speech.arch, CharCodec("abc"))
            quantizer = model.save(Path(tmp) / "random-tiny-vq.model")
        spec = synth_spec(cfg.data, cfg.speech, quantizer)
        world = build_world(cfg.world)
        data = bench_rows(world, rows, cfg.data.speeds)
        workers = workers or sorted({1, cfg.data.num_workers})
        stages = stage_rates(spec, data[: max(10, rows // 4)])
        pipes = pipeline_rates(spec, data, workers, max(1, rows // (4 * max(1, *workers))))
    return (
        f"speech pipeline benchmark | profile {cfg.profile} | backend {spec.backend} | "
        f"path {spec.path} | {rows} rows\n\nper stage, one process:\n{table(stages)}\n\n"
        f"whole pipeline (worker start-up included):\n{table(pipes)}\n"
    )

"""The evaluation of notebook 07 and ``ichigo eval``: one function per question, one report.

Inputs come only from the manifests of earlier notebooks (:class:`EvalInputs`). Each stage
returns a JSON-able section of the report:

* :func:`knowledge`: 5-shot multiple choice of base / phase 1 / phase 2 / phase 3, cloze and
  letter (lm-evaluation-harness);
* :func:`speech_instructions`: greedy answers to held-out spoken questions, rated 0-5 by a judge
  (AudioBench rubric), with the judge's name;
* :func:`transcription`: WER per language and per prompt, the eight prompts in turn;
* :func:`refusal`: precision/recall of refusing inaudible vs speech inputs, per phase;
* :func:`latency`: time to first token of early fusion and of a cascade, same clips, same run;
* :func:`benchmarks` (only when ``eval.benchmarks`` is set, as in ``full``): the paper's
  AudioBench spoken instructions, judged under AudioBench's rubric, LibriSpeech WER, and time
  to first token on those clips.

:func:`evaluate_all` runs them in order (the CLI); :func:`flat_metrics` turns a report into the
manifest's flat metrics. Tables and the paper's numbers beside ours are in
:mod:`ichigo_lib.evaluate.results`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichigo_lib import tokens as T
from ichigo_lib.config import Config, JudgeConfig
from ichigo_lib.data.prompts import TRANSCRIPTION_PROMPTS
from ichigo_lib.evaluate import benchmarks as B
from ichigo_lib.evaluate import judge as J
from ichigo_lib.evaluate import latency as L
from ichigo_lib.evaluate import mc, replies, speech_chat, wer
from ichigo_lib.evaluate.refusal import refusal_scores
from ichigo_lib.runs import MANIFEST, Manifest, MissingUpstreamError, read_manifest

PHASES = ("base", "phase 1", "phase 2", "phase 3")
SPEECH_PHASES = ("phase 1", "phase 2", "phase 3")
UPSTREAM = {
    "base": "00_base_model",
    "tokenizer": "01_tokenizer",
    "data": "02_synthetic_data",
    "phase 1": "03_phase1_pretrain",
    "phase 2": "04_phase2_instruct",
    "phase 3": "05_phase3_refusal",
}
Upstream = Callable[[str], Manifest]


def manifest_reader(run_dir: str | Path, profile: str) -> Upstream:
    """``name -> Manifest`` for the finished runs under ``run_dir/profile`` (what the CLI
    uses where a notebook has ``run.upstream``)."""

    def read(name: str) -> Manifest:
        path = Path(run_dir) / profile / name / MANIFEST
        if not path.exists():
            raise MissingUpstreamError(
                f"{path} not found: run `ichigo run {name} --profile {profile}` first"
            )
        return read_manifest(path)

    return read


@dataclass(frozen=True)
class EvalInputs:
    """Everything the evaluation reads, resolved from the upstream manifests."""

    models: dict[str, Path]  # PHASES -> HF checkpoint directory
    world: Path
    quantizer: Path
    speech_qa: Path
    transcription: Path
    inaudible: Path
    manifests: dict[str, Manifest]

    @classmethod
    def from_manifests(cls, upstream: Upstream) -> EvalInputs:
        m = {key: upstream(name) for key, name in UPSTREAM.items()}
        return cls(
            models={phase: m[phase].artifact("model") for phase in PHASES},
            world=m["base"].artifact("world"),
            quantizer=m["tokenizer"].artifact("quantizer"),
            speech_qa=m["data"].artifact("dataset_eval_speech_qa"),
            transcription=m["data"].artifact("dataset_eval_transcription"),
            inaudible=m["phase 3"].artifact("dataset_eval_inaudible"),
            manifests=m,
        )


def load_rows(path: Path, limit: int | None, required: Sequence[str]) -> list[dict[str, Any]]:
    """The first ``limit`` rows (all when None) of a dataset on disk that has ``required``."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise KeyError(f"{path}: dataset lacks columns {missing}; it has {ds.column_names}")
    if len(ds) == 0:
        raise ValueError(f"{path}: dataset is empty")
    n = len(ds) if limit is None else min(limit, len(ds))
    return ds.select(range(n)).to_list()


_REPLIES: dict[str, list[str]] = {}  # greedy replies are deterministic: ask each thing once


def _generate(
    model_dir: Path, prompts: list, cfg: Config, max_new_tokens: int | None = None
) -> list[str]:
    """Greedy replies (``max_new_tokens``, default ``eval.max_new_tokens``), memoised per
    (checkpoint, prompts, length) for this process (the refusal stage asks the same spoken
    questions the judged stage already asked)."""
    max_new_tokens = max_new_tokens or cfg.eval.max_new_tokens
    key = json.dumps([str(model_dir), max_new_tokens, prompts], sort_keys=True)
    if key not in _REPLIES:
        _REPLIES[key] = replies.generate_replies(
            model_dir,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=cfg.eval.batch_size,
            device=cfg.eval.device,
        )
    return _REPLIES[key]


# -- 1. knowledge -----------------------------------------------------------------------------
def knowledge(
    inputs: EvalInputs, cfg: Config, task_dir: str | Path, reuse: bool = True
) -> dict[str, Any]:
    """Cloze and letter accuracy of each model on the same items and shots.

    A model whose notebook already logged both formulations (notebook 00 does) is taken from
    its manifest when ``reuse`` (the same lm-eval call on the same config: the runner re-runs a
    notebook whose config changed); the others are scored here.
    """
    from ichigo_lib.world import World

    task, scores, source = None, {}, {}
    both = ("mc_accuracy_cloze", "mc_accuracy_letter")
    for phase in PHASES:
        logged = inputs.manifests[phase].metrics
        if reuse and all(key in logged for key in both):
            scores[phase] = {"cloze": logged[both[0]], "letter": logged[both[1]]}
            source[phase] = UPSTREAM[phase]
            continue
        if task is None:  # written once, only when some model is scored here
            task = mc.prepare_tasks(cfg.eval.mc, World.load(inputs.world), task_dir)
        result = mc.evaluate_mc(inputs.models[phase], cfg.eval.mc, task)
        scores[phase] = {"cloze": result.cloze, "letter": result.letter, "items": result.num_items}
        source[phase] = "evaluated here"
    return {
        "benchmark": cfg.eval.mc.benchmark,
        "num_fewshot": cfg.eval.mc.num_fewshot,
        "headline": cfg.eval.mc.headline,
        "scores": scores,
        "source": source,
    }


# -- 2. judged answers to spoken instructions --------------------------------------------------
def make_judge(
    jcfg: JudgeConfig,
    cache_dir: str | Path | None,
    url: str | None = None,
    model: str | None = None,
) -> J.Judge:
    """The judge a profile asks for; ``url``/``model`` (CLI flags) override the profile, and an
    endpoint judge falls back to $ICHIGO_JUDGE_URL/_MODEL."""
    if jcfg.kind == "reference" and not url:
        return J.ReferenceMatchJudge()
    from ichigo_lib.llm_client import ChatClient, endpoint_from

    endpoint = endpoint_from(
        url or jcfg.url,
        model or jcfg.model,
        api_key_env=jcfg.api_key_env,
        timeout_s=jcfg.timeout_s,
        max_retries=jcfg.max_retries,
        max_concurrency=jcfg.concurrency,
        backoff_s=jcfg.backoff_s,
    )
    return J.LLMJudge(ChatClient(endpoint, cache_dir if jcfg.cache else None))


def speech_instructions(
    inputs: EvalInputs,
    cfg: Config,
    judge: J.Judge,
    phases: Sequence[str] = ("phase 2", "phase 3"),
    samples: int = 10,
) -> dict[str, Any]:
    """Each phase's greedy answers to the held-out spoken questions, rated by ``judge``."""
    rows = load_rows(inputs.speech_qa, cfg.eval.items, ("conversations", "question"))
    prompts = speech_chat.user_turns(rows)
    references = [r["conversations"][1]["content"] for r in rows]
    questions = [r["question"] for r in rows]
    out: dict[str, Any] = {"judge": judge.name, "items": len(rows), "phases": {}}
    for phase in phases:
        said = _generate(inputs.models[phase], prompts, cfg)
        results = judge.score(questions, said, references)
        summary = J.summarise(results)
        ratings = [r.rating for r in results]
        out["phases"][phase] = {
            **summary,
            "rating_counts": {str(k): ratings.count(k) for k in range(J.MAX_RATING + 1)},
            "failed_items": [
                {"item": i, "reason": r.failure, "detail": r.raw}
                for i, r in enumerate(results)
                if r.failure is not None
            ],
            "exact_match": replies.exact_match(references, said),
            "samples": [
                {"question": q, "reference": ref, "reply": s, "rating": r.rating, "judge": r.raw}
                for q, ref, s, r in list(zip(questions, references, said, results, strict=True))[
                    :samples
                ]
            ],
        }
    return out


# -- 3. transcription --------------------------------------------------------------------------
def with_prompt(content: str, prompt: str, row: int = 0) -> str:
    """A transcription user turn with its prompt replaced by ``prompt`` (the audio kept)."""
    at = content.find(T.SOUND_START)
    if at < 0:
        raise ValueError(f"transcription row {row}: no {T.SOUND_START} in the user turn")
    return f"{prompt}\n{content[at:]}"


def transcription(
    inputs: EvalInputs, cfg: Config, phases: Sequence[str] = ("phase 2", "phase 3")
) -> dict[str, Any]:
    """WER of each phase's transcripts: row ``i`` is asked with prompt ``i % 8``; corpus WER
    overall, per language and per prompt, on ``wer.normalise``d text."""
    rows = load_rows(inputs.transcription, cfg.eval.items, ("conversations", "lang"))
    prompt_of = [TRANSCRIPTION_PROMPTS[i % len(TRANSCRIPTION_PROMPTS)] for i in range(len(rows))]
    chats = [
        [{"role": "user", "content": with_prompt(r["conversations"][0]["content"], p, i)}]
        for i, (r, p) in enumerate(zip(rows, prompt_of, strict=True))
    ]
    refs = [r["conversations"][1]["content"] for r in rows]
    langs = [r["lang"] for r in rows]
    out: dict[str, Any] = {"items": len(rows), "phases": {}}
    for phase in phases:
        hyps = _generate(inputs.models[phase], chats, cfg)
        out["phases"][phase] = {
            "wer": wer.wer(refs, hyps),
            "by_language": wer.wer_by_group(refs, hyps, langs),
            "by_prompt": wer.wer_by_group(refs, hyps, prompt_of),
            "samples": [
                {"lang": g, "prompt": p, "reference": r, "transcript": h}
                for g, p, r, h in list(zip(langs, prompt_of, refs, hyps, strict=True))[:8]
            ],
        }
    return out


# -- 4. refusal --------------------------------------------------------------------------------
def refusal(
    inputs: EvalInputs,
    cfg: Config,
    phases: Sequence[str] = SPEECH_PHASES,
    is_refusal: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Each phase's replies to as many held-out inaudible inputs as spoken questions."""
    speech = load_rows(inputs.speech_qa, cfg.eval.items, ("conversations",))
    inaudible = load_rows(inputs.inaudible, cfg.eval.items, ("conversations",))
    n = min(len(speech), len(inaudible))
    speech_prompts = speech_chat.user_turns(speech[:n])
    inaudible_prompts = speech_chat.user_turns(inaudible[:n])
    out: dict[str, Any] = {"items_per_kind": n, "phases": {}}
    for phase in phases:
        heard = _generate(inputs.models[phase], inaudible_prompts, cfg)
        said = _generate(inputs.models[phase], speech_prompts, cfg)
        out["phases"][phase] = {
            **refusal_scores(heard, said, is_refusal),
            "samples": {"inaudible": heard[:3], "speech": said[:3]},
        }
    return out


# -- 5. latency --------------------------------------------------------------------------------
def latency_clips(rows: Sequence[dict[str, Any]], count: int, num_workers: int = 2) -> list:
    """``count`` held-out questions spoken anew by espeak-ng in the held-out voices: the audio
    both systems hear. Returns ``[(text, wav)]``."""
    from ichigo_lib.speech import tts
    from ichigo_lib.speech.corpus import heldout_voices

    texts = [r["question"] for r in rows[:count]]
    if len(texts) < 2:
        raise ValueError(f"latency needs at least 2 clips, the held-out set has {len(texts)}")
    voices = [heldout_voices("en")[i % 2] for i in range(len(texts))]
    return list(zip(texts, tts.synthesize_many(texts, voices, num_workers), strict=True))


def latency(
    early: speech_chat.EarlyFusion,
    cascade: speech_chat.Cascade,
    clips: Sequence[tuple[str, Any]],
    warmup: int = 1,
    repeats: int = 1,
    examples: int = 5,
) -> dict[str, Any]:
    """Time to first token of both systems on the same clips, warm-up calls dropped.

    The systems alternate per clip (early fusion, then the cascade on the same clip), so drift
    in machine load hits both alike.
    """
    wavs = [wav for _, wav in clips]
    fns = {
        "early_fusion": speech_chat.first_token(early),
        "cascade": speech_chat.first_token(cascade),
    }
    for i in range(warmup):  # first runs (lazy init, allocator, caches): timed by nobody
        for fn in fns.values():
            fn(wavs[i % len(wavs)])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for wav in wavs:
            for name, fn in fns.items():
                times[name] += L.time_calls(fn, [wav], warmup=0).times
    stats = {name: L.LatencyStats(tuple(t)) for name, t in times.items()}
    shown = []
    for text, wav in clips[:examples]:
        cascade_reply = cascade.reply(wav)
        shown.append(
            {
                "text": text,
                "early_fusion_reply": early.reply(wav),
                "asr_transcript": cascade.last_transcript,
                "cascade_reply": cascade_reply,
            }
        )
    return {
        "clips": len(wavs),
        "warmup_dropped": warmup,
        "repeats": repeats,
        **{
            name: {"mean_ms": 1e3 * s.mean, "std_ms": 1e3 * s.std, "n": s.n, "system": fn_name}
            for (name, s), fn_name in zip(stats.items(), (early.name, cascade.name), strict=True)
        },
        "ratio_vs_cascade": L.ratio(stats["early_fusion"], stats["cascade"]),
        "examples": shown,
    }


def latency_systems(inputs: EvalInputs, cfg: Config):
    """Early fusion (quantizer -> phase-3 LLM) and the cascade (the quantizer's own ASR -> the
    base text LLM), loaded once."""
    from ichigo_lib.speech.whispervq import load_whispervq

    vq = load_whispervq(
        inputs.quantizer, cfg.speech.whisper, cfg.speech.whisper_root, device=cfg.eval.device
    )
    n = cfg.eval.max_new_tokens
    early = speech_chat.EarlyFusion(
        speech_chat.quantizer_encoder(vq),
        speech_chat.ChatModel(inputs.models["phase 3"], cfg.eval.device),
        n,
    )
    cascade = speech_chat.Cascade(
        speech_chat.quantizer_asr(vq, "en"),
        speech_chat.ChatModel(inputs.models["base"], cfg.eval.device),
        n,
    )
    return vq, early, cascade


# -- 6. the paper's benchmarks -----------------------------------------------------------------
def benchmarks(inputs: EvalInputs, cfg: Config, judge: J.Judge) -> dict[str, Any]:
    """Phase 3 on the sets of ``eval.benchmarks``: AudioBench's spoken instructions rated by
    ``judge`` under ``eval.benchmarks.rubric``, LibriSpeech WER, and time to first token of
    early fusion against the cascade on the first set's clips."""
    b = cfg.eval.benchmarks
    if b is None:
        raise ValueError(f"profile {cfg.profile} sets no eval.benchmarks")
    judge = judge.with_rubric(J.RUBRICS[b.rubric])
    vq, early, cascade = latency_systems(inputs, cfg)

    def encode(clips):
        return vq.encode(clips, batch_size=cfg.speech.encode_batch_size)

    def generate(chats):
        return _generate(inputs.models["phase 3"], chats, cfg, b.max_new_tokens)

    out: dict[str, Any] = {"judge": judge.name, "rubric": b.rubric, "split": b.split}
    out["audiobench"], clips = {}, []
    for key, name in B.AUDIOBENCH.items():
        if getattr(b, key):
            spoken = B.load_spoken_set(name, getattr(b, key), b.split, b.limit, instructions=True)
            out["audiobench"][key] = B.speech_instructions(spoken, encode, generate, judge)
            clips = clips or list(zip(spoken.instructions, spoken.clips, strict=True))
    if b.librispeech:
        spoken = B.load_spoken_set(B.LIBRISPEECH, b.librispeech, b.split, b.limit)
        prompt = TRANSCRIPTION_PROMPTS[b.asr_prompt]
        out["librispeech"] = B.transcription(spoken, encode, generate, prompt)
        clips = clips or list(zip(spoken.references, spoken.clips, strict=True))
    lat = cfg.eval.latency
    out["latency"] = latency(early, cascade, clips[: lat.clips], lat.warmup, lat.repeats)
    return out


# -- the whole report --------------------------------------------------------------------------
def evaluate_all(
    inputs: EvalInputs,
    cfg: Config,
    judge: J.Judge,
    work_dir: str | Path,
    is_refusal: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Every stage in order (what ``ichigo eval`` runs); ``timings`` in seconds per stage."""
    work_dir = Path(work_dir)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"profile": cfg.profile, "judge": judge.name}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        return result

    report["knowledge"] = timed("knowledge", lambda: knowledge(inputs, cfg, work_dir / "mc_tasks"))
    report["speech_instructions"] = timed(
        "speech_instructions", lambda: speech_instructions(inputs, cfg, judge)
    )
    report["transcription"] = timed("transcription", lambda: transcription(inputs, cfg))
    report["refusal"] = timed("refusal", lambda: refusal(inputs, cfg, is_refusal=is_refusal))

    def _latency():
        rows = load_rows(inputs.speech_qa, None, ("question",))
        clips = latency_clips(rows, cfg.eval.latency.clips, cfg.data.num_workers)
        _, early, cascade = latency_systems(inputs, cfg)
        return latency(early, cascade, clips, cfg.eval.latency.warmup, cfg.eval.latency.repeats)

    report["latency"] = timed("latency", _latency)
    if cfg.eval.benchmarks is not None:
        report["benchmarks"] = timed("benchmarks", lambda: benchmarks(inputs, cfg, judge))
    report["timings"] = timings
    return report


def flat_metrics(report: dict[str, Any]) -> dict[str, float | int | str]:
    """The manifest's flat metrics of a report (None values, e.g. undefined precision, left out)."""
    out: dict[str, Any] = {"judge_name": report["judge"]}
    k = report["knowledge"]
    for phase, s in k["scores"].items():
        key = phase.replace(" ", "")
        out[f"mc_accuracy_{key}"] = s[k["headline"]]
        out[f"mc_accuracy_cloze_{key}"] = s["cloze"]
        out[f"mc_accuracy_letter_{key}"] = s["letter"]
    for phase, s in report["speech_instructions"]["phases"].items():
        suffix = "" if phase == "phase 3" else "_" + phase.replace(" ", "")
        out[f"judge_score_mean{suffix}"] = s["judge_score_mean"]
        out[f"judge_parse_failures{suffix}"] = s["judge_parse_failures"]
        out[f"judge_failures{suffix}"] = s["judge_failures"]
        out[f"speech_qa_exact_match{suffix}"] = s["exact_match"]
    for phase, s in report["transcription"]["phases"].items():
        suffix = "" if phase == "phase 3" else "_" + phase.replace(" ", "")
        out[f"wer{suffix}"] = s["wer"]
        if phase == "phase 3":
            out |= {f"wer_{lang}": v for lang, v in s["by_language"].items()}
    for phase, s in report["refusal"]["phases"].items():
        key = phase.replace(" ", "")
        for name in ("precision", "recall", "f1", "speech_false_refusal_rate"):
            out[f"refusal_{name}_{key}"] = s[name]
    lat = report["latency"]
    out |= {
        "ttft_early_fusion_ms": lat["early_fusion"]["mean_ms"],
        "ttft_early_fusion_std_ms": lat["early_fusion"]["std_ms"],
        "ttft_cascade_ms": lat["cascade"]["mean_ms"],
        "ttft_cascade_std_ms": lat["cascade"]["std_ms"],
        "ttft_ratio_vs_cascade": lat["ratio_vs_cascade"],
        "latency_clips": lat["clips"],
    }
    bench = report.get("benchmarks")
    if bench is not None:
        for key, s in bench["audiobench"].items():
            for name in ("judge_score_mean", "judge_parse_failures", "judge_failures", "judge_n"):
                out[f"audiobench_{key}_{name}"] = s[name]
        if "librispeech" in bench:
            out["librispeech_wer"] = bench["librispeech"]["wer"]
        blat = bench["latency"]
        out |= {
            "benchmark_ttft_early_fusion_ms": blat["early_fusion"]["mean_ms"],
            "benchmark_ttft_cascade_ms": blat["cascade"]["mean_ms"],
            "benchmark_ttft_ratio_vs_cascade": blat["ratio_vs_cascade"],
        }
    return {key: value for key, value in out.items() if value is not None}


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """The report as indented JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path

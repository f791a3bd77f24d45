"""``ichigo`` command line: run notebooks under a profile, build the book, benchmark.

The library's expected errors (:class:`~ichigo_lib.errors.IchigoError`: config, audio, endpoint,
missing upstream run, hub data), raised here or inside an executed notebook, end the command
with one line naming the culprit and exit status 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ichigo_lib import runner
from ichigo_lib.errors import IchigoError


def _overrides(pairs: list[str]) -> dict:
    from ichigo_lib.config import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ConfigError(f"--set {pair}: the value is not valid YAML ({problem})") from err
    return out


def _expected_error_names() -> set[str]:
    """Class names of every :class:`IchigoError` subclass (as a notebook's kernel reports them)."""
    import ichigo_lib.checkpoints  # noqa: F401  (imported so their error classes are known)
    import ichigo_lib.data.hub  # noqa: F401
    import ichigo_lib.data.pipeline  # noqa: F401
    import ichigo_lib.speech.tts  # noqa: F401
    import ichigo_lib.speech.whispervq  # noqa: F401
    import ichigo_lib.train.launch  # noqa: F401
    import ichigo_lib.train.resume  # noqa: F401

    names, todo = set(), [IchigoError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def error_line(err: BaseException) -> str | None:
    """The one-line message for an expected error, or None for a bug (keep its traceback)."""
    if isinstance(err, IchigoError):
        return f"{type(err).__name__}: {err}"
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError) and err.ename in _expected_error_names():
        where = getattr(err, "__notes__", ["notebook"])[0]  # the runner names it
        return f"{err.ename} in {where}, cell [{err.exec_count}]: {err.evalue}"
    return None


def main(argv: list[str] | None = None) -> int:
    """``ichigo``: returns the exit status; expected errors print one line and give 1."""
    try:
        return _main(argv)
    except Exception as err:
        line = error_line(err)
        if line is None:
            raise
        print(f"ichigo: error: {line}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="ichigo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="execute notebooks (all of _toc.yml by default) with papermill"
    )
    run.add_argument("notebooks", nargs="*", help="names such as 00_base_model")
    book = sub.add_parser("book", help="run every notebook, then render the book to _build/html")
    book.add_argument("--no-execute", action="store_true", help="only render existing runs")
    for p in (run, book):
        p.add_argument(
            "--profile", default="tiny", help="smoke | tiny | small | full (default tiny)"
        )
        p.add_argument("--run-dir", default="runs")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="config override, e.g. --set base_model.train.num_steps=50",
        )
        p.add_argument("--force", action="store_true", help="re-execute even if unchanged")
    bench = sub.add_parser("bench", help="measure throughput and print figures and ratios")
    bench.add_argument(
        "what",
        choices=["data", "train"],
        help="data: the text -> speech -> tokens pipeline; train: tokens/s and MFU of a step",
    )
    bench.add_argument("--profile", default="tiny")
    bench.add_argument("--rows", type=int, default=200, help="rows to push through (default 200)")
    bench.add_argument("--workers", type=int, nargs="*", help="worker counts (default 1 and N)")
    bench.add_argument("--quantizer", help="WhisperVQ file (default: random, profile's arch)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument(
        "--arch",
        default="profile",
        help="train: profile (the profile's base_model.arch), llama-1b or llama-8b",
    )
    bench.add_argument(
        "--vocab", type=int, help="train: vocabulary (default 128,771; 2,048 for a profile's arch)"
    )
    bench.add_argument("--seq-len", type=int, default=4096)
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--steps", type=int, default=10, help="train: timed steps")
    bench.add_argument("--warmup", type=int, default=3, help="train: untimed steps first")
    bench.add_argument("--device", help="train: cuda when available, else cpu")
    bench.add_argument("--dtype", choices=["bf16", "fp32"], help="train: bf16 on cuda, else fp32")
    bench.add_argument("--compile", action="store_true", help="train: torch.compile the layers")
    bench.add_argument(
        "--no-activation-checkpointing", action="store_true", help="train: keep activations"
    )
    bench.add_argument("--peak-tflops", type=float, help="train: the device's peak, for MFU")
    bench.add_argument("--out", help="train: also write the result as JSON here")
    data = sub.add_parser(
        "data",
        help="speak notebook 02's plan into its run directory: all of it, a --shard-range, or "
        "under torchrun this rank's shards (then run notebook 02 to merge)",
    )
    data.add_argument("--profile", default="tiny")
    data.add_argument("--run-dir", default="runs")
    data.add_argument("--shard-range", help='shard ids "start:stop" for this job, e.g. 0:16')
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ev = sub.add_parser(
        "eval",
        help="run notebook 07's evaluation headless on the finished runs of a profile and "
        "write a JSON report",
    )
    ev.add_argument("--profile", default="tiny")
    ev.add_argument("--run-dir", default="runs")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--judge-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ev.add_argument("--judge-model", help="judge model name at that endpoint")
    ev.add_argument(
        "--out", help="report path (default <run-dir>/<profile>/eval_report/report.json)"
    )
    ask = sub.add_parser(
        "ask",
        help="answer spoken questions (audio files) with a finished run's model: the file's "
        "sound tokens and the greedy reply",
    )
    ask.add_argument("audio", nargs="+", help="wav/flac/ogg/mp3 files")
    ask.add_argument("--profile", default="tiny")
    ask.add_argument("--run-dir", default="runs")
    ask.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ask.add_argument("--phase", default="3", choices=["1", "2", "3"], help="which phase's model")
    args = parser.parse_args(argv)
    overrides = _overrides(args.set)
    if args.command == "eval":
        return _evaluate(args, overrides)
    if args.command == "ask":
        return _ask(args, overrides)
    if args.command == "data":
        from ichigo_lib.data.build import speak_shards

        reports = speak_shards(args.profile, args.run_dir, overrides, args.shard_range)
        for name, report in reports.items():
            print(
                f"{name}: {report.rows_out} rows out, {report.rows_failed} failed, "
                f"{report.shards_done} shards done ({report.shards_reused} reused)"
            )
        return 0
    if args.command == "bench":
        from ichigo_lib.config import load_config

        cfg = load_config(args.profile, overrides)
        if args.what == "train":
            return _bench_train(args, cfg)
        from ichigo_lib.data.bench import bench_data

        print(bench_data(cfg, args.quantizer, args.rows, args.workers))
        return 0
    if args.command == "run":
        runner.run_all(args.profile, args.run_dir, args.notebooks or None, overrides, args.force)
    else:
        if not args.no_execute:
            runner.run_all(args.profile, args.run_dir, None, overrides, args.force)
        runner.build_book(args.profile, args.run_dir)
    return 0


def _bench_train(args: argparse.Namespace, cfg) -> int:
    """``ichigo bench train``: tokens/s and MFU of one training step (``train.bench``)."""
    import json

    import torch

    from ichigo_lib.train import bench as B

    if args.arch == "profile":
        if cfg.base_model.arch is None:
            raise SystemExit(
                f"profile {cfg.profile} loads its base model ({cfg.base_model.source}) and has no "
                f"base_model.arch; use --arch {' or '.join(B.ARCHS)}"
            )
        arch, vocab = cfg.base_model.arch, args.vocab or 2048
    elif args.arch in B.ARCHS:
        arch, vocab = B.ARCHS[args.arch], args.vocab or B.SOUND_VOCAB
    else:
        raise SystemExit(f"--arch must be profile or one of {sorted(B.ARCHS)}, got {args.arch!r}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    spec = B.TrainBench(
        arch=arch,
        vocab_size=vocab,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup_steps=args.warmup,
        device=device,
        dtype=args.dtype or ("bf16" if device.startswith("cuda") else "fp32"),
        activation_checkpointing=not args.no_activation_checkpointing,
        compile=args.compile,
        row_lengths=(min(64, args.seq_len), min(1024, args.seq_len)),
        peak_tflops=args.peak_tflops,
    )
    result = B.bench_train(spec)
    print(f"ichigo bench train | arch {args.arch}")
    print(B.format_result(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def _evaluate(args: argparse.Namespace, overrides: dict) -> int:
    """``ichigo eval``: the same library calls as notebook 07, without a notebook."""
    import json

    from ichigo_lib.config import load_config
    from ichigo_lib.evaluate import report as R
    from ichigo_lib.runs import _quiet_library_progress_bars

    cfg = load_config(args.profile, overrides)
    run_dir = _run_root(args.run_dir)
    work = run_dir / cfg.profile / "eval_report"
    out = Path(args.out) if args.out else work / "report.json"
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    _quiet_library_progress_bars()
    inputs = R.EvalInputs.from_manifests(R.manifest_reader(run_dir, cfg.profile))
    judge = R.make_judge(cfg.eval.judge, work / "judge_cache", args.judge_url, args.judge_model)
    print(f"ichigo eval | profile {cfg.profile} | judge {judge.name} | report -> {out}")
    report = R.evaluate_all(inputs, cfg, judge, work)
    report["metrics"] = R.flat_metrics(report)
    R.write_report(report, out)
    print(json.dumps(report["metrics"], indent=2, sort_keys=True))
    print(f"report: {out}")
    return 0


def _run_root(run_dir: str) -> Path:
    """``--run-dir``, relative to the repository root unless absolute (as ``ichigo run``)."""
    from ichigo_lib.runs import repo_root

    path = Path(run_dir)
    return path if path.is_absolute() else repo_root() / path


def _ask(args: argparse.Namespace, overrides: dict) -> int:
    """``ichigo ask``: each audio file through the quantizer of 01 and a phase's model."""
    from ichigo_lib import tokens as T
    from ichigo_lib.config import load_config
    from ichigo_lib.evaluate import report as R
    from ichigo_lib.evaluate import speech_chat
    from ichigo_lib.speech.audio import load_audio
    from ichigo_lib.speech.whispervq import load_whispervq

    cfg = load_config(args.profile, overrides)
    run_dir = _run_root(args.run_dir)
    wavs = [load_audio(path) for path in args.audio]  # every file readable before models load
    inputs = R.EvalInputs.from_manifests(R.manifest_reader(run_dir, cfg.profile))
    vq = load_whispervq(
        inputs.quantizer, cfg.speech.whisper, cfg.speech.whisper_root, device=cfg.eval.device
    )
    early = speech_chat.EarlyFusion(
        speech_chat.quantizer_encoder(vq),
        speech_chat.ChatModel(inputs.models[f"phase {args.phase}"], cfg.eval.device),
        cfg.eval.max_new_tokens,
    )
    for path, wav in zip(args.audio, wavs, strict=True):
        messages = early.messages(wav)
        codes = T.string_to_codes(messages[0]["content"])
        reply = early.llm.reply(messages, early.max_new_tokens)
        print(f"{path}: {len(codes)} sound tokens -> {reply!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

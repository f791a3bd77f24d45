"""Rows/s and peak memory of preparing a published chat dataset for training, by row count.

    .venv/bin/python benchmarks/published_rows.py --rows 200000           # and a 20K baseline
    .venv/bin/python benchmarks/published_rows.py --rows 200000 --baseline 0 --num-proc 4

Writes a fixture in the schema of ``homebrewltd/mixed-instruction-speech-whispervq-v3-full``
(parquet shards, column ``conversations``: 70 % a spoken instruction of 50-500 sound tokens, 20 %
a transcription prompt before one, 10 % a text question, each answered in 20-200 words), then
times the two stages the ``full`` profile runs on it, each in a fresh process:

- ``prepare``: notebook 02, ``data.hub.prepare_published`` (parquet -> Arrow cache, every row
  checked, rewritten and counted in ``datasets.map`` workers, ``save_to_disk``);
- ``rows``: notebooks 03-05, ``train.phases.write_phase_rows`` (tokens counted in workers, the
  rows that fit streamed to the JSON lines torchtune reads).

Peak RSS is the largest process's (``os.wait4``: the stage or one of its workers; this process
imports only the standard library, since a child's peak starts from its parent's at ``fork``)
and the largest sum over the stage's process tree (sampled every 0.2 s; shared pages count once
per process); in brackets the anonymous part (sampled ``RssAnon``): resident memory less file
pages, i.e. less the pages of the memory-mapped Arrow files a process has read, which are page
cache the kernel drops under pressure. The tokenizer is the book's word-level one with the 515
sound tokens (Llama-3.1's is not reachable offline); the files live in a temporary directory,
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = "the a of to and in is it that for on with as was at by this be are from or".split()
PROMPTS = ("Transcribe the following audio clip", "Convert the spoken words to text")
SHARD_ROWS = 10_000


def chat(rng) -> list[dict[str, str]]:
    """One published row's conversation: the 70/20/10 mix of spoken, transcription, text."""
    from ichigo_lib import tokens as T

    kind = rng.random()
    turn = T.audio_turn(rng.integers(0, 512, int(rng.integers(50, 501))))
    if kind < 0.7:
        user = turn
    elif kind < 0.9:
        user = f"{PROMPTS[int(rng.integers(len(PROMPTS)))]}\n{turn}"
    else:
        user = " ".join(rng.choice(WORDS, int(rng.integers(5, 40))))
    answer = " ".join(rng.choice(WORDS, int(rng.integers(20, 201))))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def write_fixture(rows: int, out_dir: Path, seed: int = 0) -> None:
    """``rows`` published rows in parquet shards of at most ``SHARD_ROWS`` rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for shard, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        table = pa.table(
            {"index": range(start, start + n), "conversations": [chat(rng) for _ in range(n)]}
        )
        pq.write_table(table, out_dir / f"train-{shard:05d}.parquet")


def write_tokenizer(out_dir: Path) -> None:
    from ichigo_lib import tokens as T
    from ichigo_lib.wordtok import build_word_tokenizer

    tokenizer = build_word_tokenizer([*WORDS, "Transcribe", "Convert", *" ".join(PROMPTS).split()])
    T.extend_hf_tokenizer(tokenizer)
    tokenizer.save_pretrained(out_dir)


def run_stage(args: argparse.Namespace) -> None:
    """One stage, in this (fresh) process; prints what it made as JSON."""
    if args.stage == "fixture":
        write_tokenizer(Path(args.tokenizer))
        return write_fixture(args.rows, Path(args.out))
    from transformers import AutoTokenizer

    from ichigo_lib.data import hub, phases
    from ichigo_lib.train import phases as train_phases

    count = phases.token_counter(AutoTokenizer.from_pretrained(args.tokenizer))
    if args.stage == "prepare":
        done = hub.prepare_published("phase2", args.src, args.out, count, 4096, args.num_proc)
        result = {"rows": done.card["rows"], "over_long": done.card["over_long_rows"]}
    else:
        done = train_phases.write_phase_rows(args.src, args.out, count, 4096, args.num_proc)
        result = {"rows": done.rows + done.over_long, "over_long": done.over_long}
    print(json.dumps(result))


def _tree_memory(root: int) -> dict[str, int]:
    """KiB that ``root`` and its descendants hold now (from /proc): resident (``VmRSS``:
    memory-mapped Arrow pages included) and anonymous (``RssAnon``), summed and the largest."""
    parents, memory = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        kib = {k: int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "RssAnon")}
        parents[int(status.parent.name)], memory[int(status.parent.name)] = int(fields["PPid"]), kib
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree, grew = tree | more, bool(more)
    held = [memory[p] for p in tree if p in memory]
    return {
        "VmRSS": sum(m["VmRSS"] for m in held),
        "RssAnon": sum(m["RssAnon"] for m in held),
        "RssAnonMax": max((m["RssAnon"] for m in held), default=0),
    }


def measure(stage: str, src: Path, out: Path, tokenizer: Path, num_proc: int, env) -> dict:
    """Wall time, rows/s and peak memory of one stage in a fresh process."""
    cmd = [sys.executable, __file__, "--stage", stage, "--src", str(src), "--out", str(out)]
    cmd += ["--tokenizer", str(tokenizer), "--num-proc", str(num_proc)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    peak, done = {"VmRSS": 0, "RssAnon": 0, "RssAnonMax": 0}, threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for key, kib in _tree_memory(proc.pid).items():
                peak[key] = max(peak[key], kib)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed: rerun `{' '.join(cmd)}` to see why")
    result = json.loads(output.decode().strip().splitlines()[-1])
    return result | {
        "stage": stage,
        "seconds": seconds,
        "rows_per_s": result["rows"] / seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "peak_tree_rss_mb": peak["VmRSS"] / 1024,
        "peak_tree_anon_mb": peak["RssAnon"] / 1024,
        "peak_anon_mb": peak["RssAnonMax"] / 1024,
    }


def bench(rows: list[int], num_proc: int, root: Path) -> list[dict]:
    env = dict(os.environ, HF_DATASETS_CACHE=str(root / "hf-cache"), TOKENIZERS_PARALLELISM="false")
    results = []
    for n in rows:
        fixture = root / f"published-{n}"
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--stage", "fixture", "--rows", str(n)]
        subprocess.run(
            [*cmd, "--out", str(fixture), "--tokenizer", str(root / "tokenizer")], check=True
        )
        print(f"{n:,} rows written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        prepared, jsonl = root / f"phase2-{n}", root / f"phase2-{n}.jsonl"
        for stage, src, out in (("prepare", fixture, prepared), ("rows", prepared, jsonl)):
            result = measure(stage, src, out, root / "tokenizer", num_proc, env)
            results.append({"table_rows": n, "num_proc": num_proc, **result})
            print(json.dumps(results[-1]), file=sys.stderr)
        for path in (fixture, prepared, jsonl, root / "hf-cache"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| rows | stage | seconds | rows/s | peak RSS (anonymous), largest process | peak RSS "
        "(anonymous), all processes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['table_rows']:,} | {r['stage']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} MB ({r['peak_anon_mb']:,.0f} MB) "
            f"| {r['peak_tree_rss_mb']:,.0f} MB ({r['peak_tree_anon_mb']:,.0f} MB) |"
        )
    sizes = sorted({r["table_rows"] for r in results})
    for stage in ("prepare", "rows"):
        by = {r["table_rows"]: r for r in results if r["stage"] == stage}
        if len(sizes) > 1:
            small, large = by[sizes[0]], by[sizes[-1]]
            ratio = {k: large[k] / small[k] for k in small if k.startswith("peak_")}
            # the rate past start-up (imports, worker pools), from the difference of the runs
            rate = (sizes[-1] - sizes[0]) / (large["seconds"] - small["seconds"])
            minutes = (large["seconds"] + (1_890_000 - sizes[-1]) / rate) / 60
            lines.append(
                f"{stage}, {sizes[-1] / sizes[0]:.0f}x the rows: largest process peak RSS "
                f"{ratio['peak_rss_mb']:.2f}x, anonymous {ratio['peak_anon_mb']:.2f}x; all "
                f"processes {ratio['peak_tree_rss_mb']:.2f}x, anonymous "
                f"{ratio['peak_tree_anon_mb']:.2f}x; {rate:,.0f} rows/s past start-up: 1.89M "
                f"rows in about {minutes:.0f} min"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--baseline", type=int, default=20_000, help="also this many (0: not)")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--stage", choices=["fixture", "prepare", "rows"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return run_stage(args)
    root = Path(tempfile.mkdtemp(prefix="published-rows-", dir=args.dir))
    try:
        sizes = sorted({n for n in (args.baseline, args.rows) if n})
        print(table(bench(sizes, args.num_proc, root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

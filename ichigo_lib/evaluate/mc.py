"""Multiple-choice knowledge, 5-shot, through lm-evaluation-harness on an HF checkpoint.

Two formulations of the same items:

* ``letter``: MMLU's own; the options are listed as A–D and the model is scored on the
  log-likelihood of " A".." D".
* ``cloze``: each option's text is scored as the continuation of the question,
  length-normalised (``acc_norm``), as OLMES does for small models. A ~1M-parameter model
  that knows the facts still picks letters at chance, so ``tiny`` leads with cloze.

Benchmarks are registered by name: ``tinyworld`` (local tasks written from the tiny world's
held-out items) and ``mmlu`` (lm-eval's own ``mmlu`` and ``mmlu_continuation`` groups: letters
as the paper reports, and the cloze form beside them). lm-eval's groups read ``cais/mmlu`` from
the hub; ``eval.mc.dataset`` points them at another hub id or a local copy of that repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichigo_lib.config import MCConfig
from ichigo_lib.world import MCItem, World

LETTERS = ("A", "B", "C", "D")
# Words the prompt formats use, which a word-level tokenizer must know.
FORMAT_WORDS = (*LETTERS, "Answer", ".", ":")


@dataclass(frozen=True)
class Benchmark:
    """lm-eval task names for both formulations; ``dataset``: the default dataset of lm-eval's
    built-in tasks, None for local tasks written here."""

    letter_task: str
    cloze_task: str
    cloze_metric: str
    dataset: str | None = None

    @property
    def local(self) -> bool:
        return self.dataset is None


BENCHMARKS = {
    "tinyworld": Benchmark("tinyworld_mc_letter", "tinyworld_mc_cloze", "acc_norm"),
    # lm-eval's mmlu_continuation group aggregates only acc (its subtasks also report acc_norm)
    "mmlu": Benchmark("mmlu", "mmlu_continuation", "acc", dataset="cais/mmlu"),
}

_LETTER_PROMPT = (
    "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
    "D. {{choices[3]}}\nAnswer:"
)


def write_local_tasks(items: list[MCItem], task_dir: str | Path) -> Path:
    """Write the tiny world's MC items as two lm-eval tasks (letter and cloze) in ``task_dir``."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    for split in ("fewshot", "test"):
        rows = [
            {"question": i.question, "choices": list(i.choices), "label": i.label}
            for i in items
            if i.split == split
        ]
        if not rows:
            raise ValueError(f"no multiple-choice items in split '{split}'")
        with open(task_dir / f"mc_{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {s: str(task_dir / f"mc_{s}.jsonl") for s in ("fewshot", "test")}
        },
        "test_split": "test",
        "fewshot_split": "fewshot",
        "output_type": "multiple_choice",
        "doc_to_target": "label",
        "target_delimiter": " ",
    }
    bench = BENCHMARKS["tinyworld"]
    tasks = {
        bench.letter_task: {
            "doc_to_text": _LETTER_PROMPT,
            "doc_to_choice": list(LETTERS),
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
        bench.cloze_task: {
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "metric_list": [
                {"metric": m, "aggregation": "mean", "higher_is_better": True}
                for m in ("acc", "acc_norm")
            ],
        },
    }
    for name, spec in tasks.items():
        (task_dir / f"{name}.yaml").write_text(json.dumps({"task": name, **common, **spec}))
    return task_dir


def write_dataset_groups(bench: Benchmark, dataset: str, task_dir: str | Path) -> Path:
    """Groups in ``task_dir`` that run lm-eval's own groups of ``bench`` on ``dataset`` (a hub
    id, or a local copy of the hub repository), every subtask unchanged but its dataset.

    HF datasets caches a local repository's configs under its directory's name and the config
    name alone, so any earlier copy called ``mmlu`` (or this one before an edit) would be read
    from the cache: a local copy is cached under ``task_dir``, keyed by its files."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    local = Path(dataset).exists()
    source = str(Path(dataset).resolve()) if local else dataset
    for task in (bench.letter_task, bench.cloze_task):
        entry: dict[str, Any] = {"group": task, "dataset_path": source}
        if local:
            cache = task_dir / "datasets_cache" / _files_digest(Path(source))
            entry["dataset_kwargs"] = {"cache_dir": str(cache)}
        spec = {"group": _on_dataset(task), "task": [entry]}
        (task_dir / f"{_on_dataset(task)}.yaml").write_text(json.dumps(spec))
    return task_dir


def _files_digest(root: Path) -> str:
    """Changes when any file under ``root`` is added, removed or rewritten (path, size, mtime)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _on_dataset(task: str) -> str:
    return f"{task}_on_dataset"


def prepare_tasks(cfg: MCConfig, world: World, task_dir: str | Path) -> Path:
    """The ``include_path`` lm-eval needs for ``cfg.benchmark``: tasks written from the world's
    items for local benchmarks, groups reading ``cfg.dataset`` for lm-eval's built-in ones."""
    bench = BENCHMARKS[cfg.benchmark]
    if bench.local:
        return write_local_tasks(list(world.mc), task_dir)
    return write_dataset_groups(bench, cfg.dataset or bench.dataset, task_dir)


@dataclass(frozen=True)
class MCResult:
    """Accuracies of one model under both formulations, plus the scored items."""

    cloze: float
    letter: float
    num_items: int
    samples: list[dict[str, Any]]
    log: str = ""

    def metrics(self, headline: str) -> dict[str, float]:
        """Flat metrics: ``mc_accuracy`` is the headline formulation's accuracy."""
        return {
            "mc_accuracy": self.cloze if headline == "cloze" else self.letter,
            "mc_accuracy_cloze": self.cloze,
            "mc_accuracy_letter": self.letter,
            "mc_items": self.num_items,
        }


def evaluate_mc(model_dir: str | Path, cfg: MCConfig, task_dir: str | Path) -> MCResult:
    """Score an HF checkpoint on ``cfg.benchmark`` with ``cfg.num_fewshot`` shots, both ways;
    ``task_dir`` is what :func:`prepare_tasks` wrote."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    bench = BENCHMARKS[cfg.benchmark]
    tasks = [bench.cloze_task, bench.letter_task]
    manager = TaskManager(include_path=str(task_dir))
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    log = io.StringIO()  # lm-eval's per-request progress bars; kept in the result, not printed
    with contextlib.redirect_stderr(log):
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "dtype": cfg.dtype},
            tasks=tasks if bench.local else [_on_dataset(t) for t in tasks],
            num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size,
            device=cfg.device,
            limit=cfg.limit,
            apply_chat_template=cfg.apply_chat_template,
            fewshot_as_multiturn=cfg.apply_chat_template,
            task_manager=manager,
            log_samples=bench.local,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
    return _result(out, bench, log.getvalue())


def _result(out: dict, bench: Benchmark, log: str) -> MCResult:
    results = out["results"]
    samples = [
        {
            "question": s["doc"]["question"],
            "choices": s["doc"]["choices"],
            "label": s["doc"]["label"],
            "pred": int(max(range(len(s["filtered_resps"])), key=_norm_score(s))),
        }
        for s in out.get("samples", {}).get(bench.cloze_task, [])
    ]
    return MCResult(
        cloze=float(results[bench.cloze_task][f"{bench.cloze_metric},none"]),
        letter=float(results[bench.letter_task]["acc,none"]),
        # both formulations score the same items, so lm-eval's per-task counts hold each twice
        num_items=len(samples) or sum(n["effective"] for n in out["n-samples"].values()) // 2,
        samples=samples,
        log=log,
    )


def _norm_score(sample: dict[str, Any]):
    """Length-normalised log-likelihood of option ``i`` (what ``acc_norm`` ranks by)."""
    choices = sample["doc"]["choices"]

    def score(i: int) -> float:
        return sample["filtered_resps"][i][0] / len(choices[i])

    return score

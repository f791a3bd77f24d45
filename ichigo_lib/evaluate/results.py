"""The results chapter's tables: this run's evaluation report beside the paper's numbers.

Everything here is read from a manifest (notebook 07's, whose ``records.report`` is the report
of :mod:`ichigo_lib.evaluate.report`); the only typed numbers are the paper's, in ``PAPER``
(``reference/recipe-facts.md``). Every table names the profile, and the judge table its judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ichigo_lib.runs import Manifest, read_manifest

PHASES = ("base", "phase 1", "phase 2", "phase 3")

# Ichigo v0.3 (arXiv 2410.15316 and the write-up), for comparison only.
PAPER = {
    "mmlu": {"base": 0.69, "phase 1": 0.42, "phase 2": 0.63, "phase 3": 0.6379},
    "judge": "GPT-4 (AudioBench)",
    "judge_score": {"OpenHermes-Audio": 3.64, "ALPACA-Audio": 3.68},
    "asr_wer": 0.22,  # v0.4, LibriSpeech test-clean
    "ttft_ms": {"early_fusion": 111.52, "early_fusion_std": 7.73, "cascade": 453.18},
}
PAPER["ttft_ratio"] = PAPER["ttft_ms"]["early_fusion"] / PAPER["ttft_ms"]["cascade"]


def report_of(manifest: Manifest) -> dict[str, Any]:
    """The evaluation report a notebook-07 manifest carries."""
    report = manifest.data.get("records", {}).get("report")
    if report is None:
        raise KeyError(f"{manifest.path}: no records.report; is this notebook 07's manifest?")
    return report


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def knowledge_table(report: dict[str, Any]) -> pd.DataFrame:
    k = report["knowledge"]
    rows = {
        phase: {
            f"cloze ({k['benchmark']})": s["cloze"],
            f"letter ({k['benchmark']})": s["letter"],
            "paper (MMLU, letter)": PAPER["mmlu"].get(phase),
        }
        for phase, s in k["scores"].items()
    }
    df = pd.DataFrame(rows).T.round(3)
    df.index.name = f"{k['num_fewshot']}-shot MC, profile {report['profile']}"
    return df


def judge_table(report: dict[str, Any]) -> pd.DataFrame:
    s = report["speech_instructions"]
    rows = {
        f"{phase} (this run)": {
            "judge": s["judge"],
            "mean rating (0-5)": _fmt(v["judge_score_mean"], 2),
            "exact match": _fmt(v["exact_match"]),
            "items": v["judge_n"],
            "unparsed": v["judge_parse_failures"],
            "judge failed": v["judge_failures"],
        }
        for phase, v in s["phases"].items()
    }
    for bench, score in PAPER["judge_score"].items():
        rows[f"paper, phase 3 ({bench})"] = {
            "judge": PAPER["judge"],
            "mean rating (0-5)": f"{score:.2f}",
            "exact match": "",
            "items": "",
            "unparsed": "",
            "judge failed": "",
        }
    df = pd.DataFrame(rows).T
    df.index.name = f"held-out spoken instructions, profile {report['profile']}"
    return df


def wer_table(report: dict[str, Any]) -> pd.DataFrame:
    t = report["transcription"]["phases"]
    langs = sorted({lang for v in t.values() for lang in v["by_language"]})
    rows = {
        phase: {"all": v["wer"], **{lang: v["by_language"].get(lang) for lang in langs}}
        for phase, v in t.items()
    }
    rows["paper (v0.4, LibriSpeech en)"] = {"all": PAPER["asr_wer"]}
    df = pd.DataFrame(rows).T.round(3)
    df = df.astype(object).where(df.notna(), "")  # the paper has no per-language column
    df.index.name = f"WER, profile {report['profile']}"
    return df


def refusal_table(report: dict[str, Any]) -> pd.DataFrame:
    r = report["refusal"]
    rows = {
        phase: {
            "precision": _fmt(v["precision"]),
            "recall": _fmt(v["recall"]),
            "F1": _fmt(v["f1"]),
            "false refusals on speech": _fmt(v["speech_false_refusal_rate"]),
        }
        for phase, v in r["phases"].items()
    }
    df = pd.DataFrame(rows).T
    df.index.name = f"refusing {r['items_per_kind']} inaudible vs {r['items_per_kind']} spoken"
    return df


def latency_table(report: dict[str, Any]) -> pd.DataFrame:
    lat, paper = report["latency"], PAPER["ttft_ms"]
    rows = {
        f"this run ({report['profile']}, {lat['clips']} clips)": {
            "early fusion (ms)": f"{lat['early_fusion']['mean_ms']:.2f} ± "
            f"{lat['early_fusion']['std_ms']:.2f}",
            "cascade (ms)": f"{lat['cascade']['mean_ms']:.2f} ± {lat['cascade']['std_ms']:.2f}",
            "ratio": f"{lat['ratio_vs_cascade']:.3f}",
        },
        "paper (8B, GPU)": {
            "early fusion (ms)": f"{paper['early_fusion']:.2f} ± {paper['early_fusion_std']:.2f}",
            "cascade (ms)": f"{paper['cascade']:.2f}",
            "ratio": f"{PAPER['ttft_ratio']:.3f}",
        },
    }
    df = pd.DataFrame(rows).T
    df.index.name = "time to first token, first run dropped"
    return df


def benchmarks_table(report: dict[str, Any]) -> pd.DataFrame:
    """The paper's benchmarks (phase 3) beside its figures, the judged rows naming their judge;
    one row saying so when the profile ran none."""
    b = report.get("benchmarks")
    if b is None:
        df = pd.DataFrame(
            {"value": {"not run": f"profile {report['profile']} sets no eval.benchmarks"}}
        )
        df.index.name = "the paper's benchmarks"
        return df
    rows: dict[str, dict[str, Any]] = {}
    for s in b["audiobench"].values():
        rows[f"{s['name']} (this run)"] = {
            "metric": "mean rating (0-5)",
            "value": _fmt(s["judge_score_mean"], 2),
            "judge": b["judge"],
            "items": s["judge_n"],
            "unparsed": s["judge_parse_failures"],
            "judge failed": s["judge_failures"],
        }
        paper = PAPER["judge_score"].get(s["name"])
        if paper is not None:
            rows[f"{s['name']} (paper, phase 3)"] = {
                "metric": "mean rating (0-5)",
                "value": f"{paper:.2f}",
                "judge": PAPER["judge"],
            }
    if "librispeech" in b:
        s = b["librispeech"]
        rows[f"{s['name']} (this run)"] = {
            "metric": "WER",
            "value": _fmt(s["wer"]),
            "items": s["items"],
        }
        rows[f"{s['name']} (paper, v0.4)"] = {"metric": "WER", "value": _fmt(PAPER["asr_wer"])}
    lat, paper_ms = b["latency"], PAPER["ttft_ms"]
    rows[f"time to first token (this run, {lat['clips']} clips)"] = {
        "metric": "early fusion / cascade (ms)",
        "value": f"{lat['early_fusion']['mean_ms']:.2f} / {lat['cascade']['mean_ms']:.2f}",
        "items": lat["clips"],
    }
    rows["time to first token (paper, 8B, GPU)"] = {
        "metric": "early fusion / cascade (ms)",
        "value": f"{paper_ms['early_fusion']:.2f} / {paper_ms['cascade']:.2f}",
    }
    df = pd.DataFrame(rows).T.fillna("")
    df.index.name = f"the paper's benchmarks, phase 3, profile {report['profile']}"
    return df


def tables(report: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every results table, keyed as the results chapter glues them."""
    return {
        "knowledge_table": knowledge_table(report),
        "judge_table": judge_table(report),
        "wer_table": wer_table(report),
        "refusal_table": refusal_table(report),
        "latency_table": latency_table(report),
        "benchmarks_table": benchmarks_table(report),
    }


def headline_values(manifest: Manifest) -> dict[str, Any]:
    """The scalars the results chapter quotes in its prose, from notebook 07's manifest."""
    m, report = manifest.metrics, report_of(manifest)
    return {
        "profile": manifest.data["profile"],
        "revision": manifest.data["git"]["revision"][:10],
        "finished": manifest.data["finished"][:10],
        "judge_name": m["judge_name"],
        "judge_items": report["speech_instructions"]["phases"]["phase 3"]["judge_n"],
        "judge_score_mean": _fmt(m.get("judge_score_mean"), 2),  # None: no items
        "judge_unparsed": m.get("judge_parse_failures", 0),
        "judge_failures": m.get("judge_failures", 0),
        "wer": m["wer"],
        "mc_benchmark": report["knowledge"]["benchmark"],
        "mc_headline": report["knowledge"]["headline"],
        **{f"mc_{p.replace(' ', '')}": m[f"mc_accuracy_{p.replace(' ', '')}"] for p in PHASES},
        "refusal_precision": _fmt(m.get("refusal_precision_phase3")),  # None: never refused
        "refusal_recall": m["refusal_recall_phase3"],
        "ttft_early_ms": m["ttft_early_fusion_ms"],
        "ttft_early_std_ms": m["ttft_early_fusion_std_ms"],
        "ttft_cascade_ms": m["ttft_cascade_ms"],
        "ttft_cascade_std_ms": m["ttft_cascade_std_ms"],
        "ttft_ratio": m["ttft_ratio_vs_cascade"],
        "latency_clips": m["latency_clips"],
        "paper_ttft_ratio": PAPER["ttft_ratio"],
    }


def png_html(path: str | Path):
    """A saved figure as an HTML ``<img>`` with the PNG inline (gluable across pages)."""
    import base64

    from IPython.display import HTML

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return HTML(f'<img src="data:image/png;base64,{data}" style="max-width:100%"/>')


def tables_from_manifest(path: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of the evaluation whose manifest is at ``path``."""
    return tables(report_of(read_manifest(Path(path))))

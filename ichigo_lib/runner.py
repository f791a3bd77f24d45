"""Execute the book's notebooks with papermill and render them with Jupyter Book 1.x.

``run_notebook`` executes one notebook under a profile into ``runs/<profile>/<name>/``; a
notebook whose source, profile config, upstream manifests and library code are unchanged since
its last successful run is reused (its manifest is kept) instead of re-executed.
``build_book`` stages the prose and the *executed* copies and renders them without executing.
While a notebook executes, :mod:`ichigo_lib.progress` prints its stages, elapsed time and an
estimate of what remains; ``run_all`` ends with a table of every notebook's status, wall time
and headline metric (``HEADLINES``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ichigo_lib.config import load_config
from ichigo_lib.progress import StageWatcher, duration, format_table
from ichigo_lib.runs import MANIFEST, PROGRESS, read_manifest, repo_root, sha256_path, shown

STAMP = ".executed.json"
# The metric of each notebook's manifest that the summary table of ``run_all`` shows.
HEADLINES = {
    "00_base_model": "mc_accuracy",
    "01_tokenizer": "bottleneck_wer",
    "02_synthetic_data": "audio_seconds",
    "03_phase1_pretrain": "mc_ratio_to_base",
    "04_phase2_instruct": "speech_qa_accuracy",
    "05_phase3_refusal": "inaudible_refusal_rate",
    "06_inaudible_space": "probe_accuracy_phase3",
    "07_evaluation": "judge_score_mean",
}


@dataclass(frozen=True)
class NotebookRun:
    name: str
    status: str  # "executed" | "reused"
    seconds: float
    output: Path


def toc_entries(root: Path | None = None) -> list[str]:
    """Every file of ``_toc.yml`` in reading order (``book/intro``, ``notebooks/00_...``)."""
    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("chapters", "sections", "parts"):
                for child in node.get(key, []):
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return entries


def toc_notebooks(root: Path | None = None) -> list[str]:
    """Names of the notebooks listed in ``_toc.yml``, in order (``00_base_model``, ...)."""
    return [Path(e).name for e in toc_entries(root) if e.startswith("notebooks/")]


def _fingerprint(root: Path, name: str, profile: str, overrides: dict, run_dir: Path) -> str:
    """What a run depends on: notebook, resolved config, upstream manifests, library code."""
    digest = hashlib.sha256()
    digest.update((root / "notebooks" / f"{name}.ipynb").read_bytes())
    config = load_config(profile, overrides).to_dict()
    digest.update(json.dumps({"config": config, "overrides": overrides}, sort_keys=True).encode())
    digest.update(_library_hash(root / "ichigo_lib").encode())
    for upstream in toc_notebooks(root):
        if upstream == name:
            break
        manifest = run_dir / profile / upstream / MANIFEST
        digest.update(sha256_path(manifest).encode() if manifest.exists() else b"missing")
    return digest.hexdigest()


def _library_hash(lib: Path) -> str:
    """Hash of the library's sources (not its ``__pycache__``)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in lib.rglob("*") if p.suffix in (".py", ".yaml")):
        digest.update(path.relative_to(lib).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_notebook(
    name: str,
    profile: str = "tiny",
    run_dir: str | Path = "runs",
    overrides: dict | None = None,
    force: bool = False,
    later: float | None = 0.0,
) -> NotebookRun:
    """Execute ``notebooks/<name>.ipynb`` with papermill unless its last run is still valid.

    While it runs, its stages and an estimate of the time left are printed; ``later`` is the
    previous wall time of the notebooks to run after it (``None``: unknown).
    """
    import papermill
    from traitlets.config import Config

    root = repo_root()
    run_dir = root / run_dir
    overrides = overrides or {}
    source = root / "notebooks" / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    out_dir = run_dir / profile / name
    output = out_dir / f"{name}.ipynb"
    fingerprint = _fingerprint(root, name, profile, overrides, run_dir)
    stamp = out_dir / STAMP
    label = f"[{profile}] {name}"
    if not force and _still_valid(out_dir, name, fingerprint):
        print(f"{label}: unchanged, reusing {shown(out_dir / MANIFEST, root)}", flush=True)
        return NotebookRun(name, "reused", 0.0, output)
    previous = previous_run(out_dir / MANIFEST)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (stamp, out_dir / MANIFEST, out_dir / PROGRESS):
        stale.unlink(missing_ok=True)
    last = duration(previous["wall_time_s"] if previous else None)
    print(f"{label}: executing -> {shown(output, root)} (last run {last})", flush=True)
    t0 = time.perf_counter()
    # The kernel talks over a private unix socket (IPC), not unencrypted localhost TCP.
    with (
        tempfile.TemporaryDirectory(prefix="ichigo-kernel-") as sockets,
        StageWatcher(label, out_dir / PROGRESS, previous, later),
    ):
        try:
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters={
                    "profile": profile,
                    "run_dir": shown(run_dir, root),
                    "overrides": overrides,
                },
                kernel_name="python3",
                cwd=str(root / "notebooks"),
                progress_bar=False,
                log_output=False,
                config=Config(KernelManager={"transport": "ipc", "ip": f"{sockets}/kernel"}),
            )
        except papermill.PapermillExecutionError as err:
            err.add_note(f"{name} (executed copy: {shown(output, root)})")
            raise
    (out_dir / PROGRESS).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    manifest = out_dir / MANIFEST
    read_manifest(manifest)  # the notebook must have finished its run
    stamp.write_text(
        json.dumps({"fingerprint": fingerprint, "manifest_sha256": sha256_path(manifest)}) + "\n"
    )
    print(f"{label}: done in {duration(seconds)}", flush=True)
    return NotebookRun(name, "executed", seconds, output)


def previous_run(manifest: Path) -> dict | None:
    """A finished manifest's data (``wall_time_s``, ``timings``, ``metrics``), else ``None``."""
    try:
        data = json.loads(Path(manifest).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("status") == "finished" else None


def _still_valid(out_dir: Path, name: str, fingerprint: str) -> bool:
    """Whether the run in ``out_dir`` finished under ``fingerprint``, its manifest untouched."""
    stamp, manifest, output = out_dir / STAMP, out_dir / MANIFEST, out_dir / f"{name}.ipynb"
    if not (stamp.exists() and manifest.exists() and output.exists()):
        return False
    recorded = json.loads(stamp.read_text())
    return recorded == {"fingerprint": fingerprint, "manifest_sha256": sha256_path(manifest)}


def run_all(
    profile: str = "tiny",
    run_dir: str | Path = "runs",
    names: list[str] | None = None,
    overrides: dict | None = None,
    force: bool = False,
) -> list[NotebookRun]:
    """Run the notebooks of ``_toc.yml`` (or ``names``) in book order, then print a summary
    table (:func:`summary_table`)."""
    root = repo_root()
    order = toc_notebooks(root)
    names = names or order
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise ValueError(f"not notebooks of _toc.yml: {unknown}; known: {order}")
    todo = [n for n in order if n in names]
    expected = _expected_seconds(root, todo, profile, Path(run_dir), overrides or {}, force)
    results = [
        run_notebook(n, profile, run_dir, overrides, force, later=_total(expected[i + 1 :]))
        for i, n in enumerate(todo)
    ]
    print(f"\n{summary_table(results)}", flush=True)
    return results


def _expected_seconds(
    root: Path, todo: list[str], profile: str, run_dir: Path, overrides: dict, force: bool
) -> list[float | None]:
    """Each notebook's expected wall time: 0 if it will be reused, else its previous run's
    (``None`` if it has none). From the first notebook that must execute on, every later one
    executes too (its upstream manifests change)."""
    expected, executing = [], force
    for name in todo:
        out_dir = root / run_dir / profile / name
        if not executing:
            fingerprint = _fingerprint(root, name, profile, overrides, root / run_dir)
            executing = not _still_valid(out_dir, name, fingerprint)
        previous = previous_run(out_dir / MANIFEST)
        expected.append((previous["wall_time_s"] if previous else None) if executing else 0.0)
    return expected


def _total(seconds: list[float | None]) -> float | None:
    return None if None in seconds else sum(seconds)


def summary_table(results: list[NotebookRun]) -> str:
    """One row per notebook: status, wall time of this run, headline metric (``HEADLINES``)."""
    rows = [
        [r.name, r.status, duration(r.seconds) if r.status == "executed" else "-", _headline(r)]
        for r in results
    ]
    executed = [r.seconds for r in results if r.status == "executed"]
    reused = len(results) - len(executed)
    total = f"{len(executed)} executed in {duration(sum(executed))}, {reused} reused"
    header = ["notebook", "status", "wall time", "headline"]
    return f"{format_table(header, rows, align='<<><')}\n{total}"


def _headline(run: NotebookRun) -> str:
    metrics = (previous_run(run.output.parent / MANIFEST) or {}).get("metrics", {})
    key = HEADLINES.get(run.name)
    if key not in metrics:
        return ""
    value = metrics[key]
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def build_book(
    profile: str = "tiny", run_dir: str | Path = "runs", path_output: str | Path | None = None
) -> Path:
    """Render the book to ``<path_output>/_build/html`` (default: the repository root) from the
    executed notebooks of ``profile``.

    The prose and the executed copies are staged under ``runs/<profile>/_book`` and Jupyter
    Book builds them with execution off and warnings as errors. In the staged copies the cell
    papermill injected (tagged ``injected-parameters``) is also tagged ``remove-cell`` and
    papermill's record of the input and output paths is made repository-relative: the book
    (and its downloadable ``.ipynb``) hides both, ``runs/<profile>/<name>/<name>.ipynb`` keeps them.
    """
    root = repo_root()
    stage = root / run_dir / profile / "_book"
    for entry in toc_entries(root):
        if entry.startswith("notebooks/"):
            name = Path(entry).name
            src = root / run_dir / profile / name / f"{name}.ipynb"
            if not src.exists():
                raise FileNotFoundError(
                    f"{src} missing: run `ichigo run {name} --profile {profile}`"
                )
            _write_if_changed(stage / f"{entry}.ipynb", _for_book(src, root))
        else:
            src = next((root / entry).parent.glob(Path(entry).name + ".*"))
            _write_if_changed(stage / src.relative_to(root), src.read_bytes())
    for extra in ("_config.yml", "_toc.yml", "book/references.bib", "book/_static"):
        src = root / extra
        if src.is_dir():
            shutil.copytree(src, stage / extra, dirs_exist_ok=True)
        elif src.exists():
            _write_if_changed(stage / extra, src.read_bytes())
    cmd = [
        str(Path(sys.executable).with_name("jupyter-book")),
        "build",
        str(stage),
        "--path-output",
        str(path_output or root),
        "--warningiserror",
        "--keep-going",
    ]
    subprocess.run(cmd, check=True)
    html = Path(path_output or root) / "_build" / "html"
    print(f"book: {shown(html / 'index.html', root)}")
    return html


def _for_book(executed: Path, root: Path) -> bytes:
    """The executed notebook with its injected parameters cell tagged ``remove-cell`` and the
    paths papermill recorded shown as :func:`ichigo_lib.runs.shown` does."""
    nb = json.loads(executed.read_text())
    record = nb["metadata"].get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in record:
            record[key] = shown(record[key], root)
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()


def _write_if_changed(dst: Path, data: bytes) -> None:
    """Stage ``data`` at ``dst`` unless it already holds it: an unchanged page keeps its mtime,
    so Sphinx's incremental build skips it; a changed one is newer than the last build."""
    if dst.exists() and dst.read_bytes() == data:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)

"""Execute the book's notebooks with papermill and render them with Jupyter Book 1.x.

``run_notebook`` executes one notebook under a profile into ``runs/<profile>/<name>/``; a
notebook whose source, profile config, upstream manifests and library code are unchanged since
its last successful run is reused (its manifest is kept) instead of re-executed.
``build_book`` stages the prose and the *executed* copies and renders them without executing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ichigo_lib.config import load_config
from ichigo_lib.runs import MANIFEST, read_manifest, repo_root, sha256_path

STAMP = ".executed.json"


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
) -> NotebookRun:
    """Execute ``notebooks/<name>.ipynb`` with papermill unless its last run is still valid."""
    import papermill

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
    if not force and _still_valid(stamp, fingerprint, out_dir / MANIFEST, output):
        print(f"[{profile}] {name}: unchanged, reusing {out_dir / MANIFEST}")
        return NotebookRun(name, "reused", 0.0, output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    print(f"[{profile}] {name}: executing -> {output}")
    t0 = time.perf_counter()
    papermill.execute_notebook(
        str(source),
        str(output),
        parameters={"profile": profile, "run_dir": _shown(run_dir, root), "overrides": overrides},
        kernel_name="python3",
        cwd=str(root / "notebooks"),
        progress_bar=False,
        log_output=False,
    )
    seconds = time.perf_counter() - t0
    manifest = out_dir / MANIFEST
    read_manifest(manifest)  # the notebook must have finished its run
    stamp.write_text(
        json.dumps({"fingerprint": fingerprint, "manifest_sha256": sha256_path(manifest)}) + "\n"
    )
    print(f"[{profile}] {name}: done in {seconds:.1f} s")
    return NotebookRun(name, "executed", seconds, output)


def _shown(path: Path, root: Path) -> str:
    """``path`` as the executed notebook shows it: repository-relative when it can be."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _still_valid(stamp: Path, fingerprint: str, manifest: Path, output: Path) -> bool:
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
    """Run the notebooks of ``_toc.yml`` (or ``names``) in book order."""
    order = toc_notebooks()
    names = names or order
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise ValueError(f"not notebooks of _toc.yml: {unknown}; known: {order}")
    return [run_notebook(n, profile, run_dir, overrides, force) for n in order if n in names]


def build_book(
    profile: str = "tiny", run_dir: str | Path = "runs", path_output: str | Path | None = None
) -> Path:
    """Render the book to ``<path_output>/_build/html`` (default: the repository root) from the
    executed notebooks of ``profile``.

    The prose and the executed copies are staged under ``runs/<profile>/_book`` and Jupyter
    Book builds them with execution off and warnings as errors.
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
            dst = stage / f"{entry}.ipynb"
        else:
            src = next((root / entry).parent.glob(Path(entry).name + ".*"))
            dst = stage / src.relative_to(root)
        _copy_if_changed(src, dst)
    for extra in ("_config.yml", "_toc.yml", "book/references.bib", "book/_static"):
        src = root / extra
        if src.is_dir():
            shutil.copytree(src, stage / extra, dirs_exist_ok=True)
        elif src.exists():
            _copy_if_changed(src, stage / extra)
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
    print(f"book: {html / 'index.html'}")
    return html


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy keeping mtimes, so Sphinx's incremental build skips unchanged pages."""
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)

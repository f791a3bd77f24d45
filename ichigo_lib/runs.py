"""Run directories and manifests: ``runs/<profile>/<NN_name>/manifest.json``.

Every notebook opens a :class:`Run`, times its stages, registers the inputs it read and the
artifacts it wrote, logs flat metrics and finishes by writing its manifest. Downstream
notebooks find their inputs only through :meth:`Run.upstream`, never by guessing paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ichigo_lib.config import Config, load_config
from ichigo_lib.errors import IchigoError

MANIFEST = "manifest.json"
PROGRESS = ".progress.json"  # the stage running now, for ``ichigo run``'s progress lines
TRACKED_PACKAGES = (
    "torch",
    "torchtune",
    "torchao",
    "transformers",
    "tokenizers",
    "datasets",
    "lm_eval",
    "numpy",
    "papermill",
)


class MissingUpstreamError(IchigoError, FileNotFoundError):
    """A notebook needs the manifest of an earlier notebook that has not run."""


def repo_root(start: Path | None = None) -> Path:
    """The project root: the nearest ancestor of ``start`` (cwd) holding ``_toc.yml`` and
    ``ichigo_lib/``; else the checkout this library was installed from (``pip install -e``), so
    ``ichigo`` works from any directory; else ``start`` itself."""
    here = (start or Path.cwd()).resolve()
    checkout = Path(__file__).resolve().parents[1]
    for candidate in (here, *here.parents, checkout):
        if (candidate / "_toc.yml").exists() and (candidate / "ichigo_lib").is_dir():
            return candidate
    return here


def shown(path: str | Path, root: Path | None = None) -> str:
    """``path`` as outputs print it: relative to the repository root when it lies under it, so
    executed notebooks and the book carry no machine's absolute paths."""
    path, root = Path(path).resolve(), (root or repo_root())
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a directory's relative file names and contents."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(child.relative_to(path).as_posix().encode() + b"\0")
            digest.update(sha256_path(child).encode())
        return digest.hexdigest()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", False
    return {"revision": rev or "unknown", "dirty": dirty}


@dataclass(frozen=True)
class Manifest:
    """A finished run, as read back from its ``manifest.json``."""

    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.data["metrics"]

    @property
    def sha256(self) -> str:
        return sha256_path(self.path)

    def artifact(self, key: str) -> Path:
        """Absolute path of an artifact the run registered (paths are stored run-relative)."""
        artifacts = self.data["artifacts"]
        if key not in artifacts:
            raise KeyError(f"{self.path}: no artifact '{key}'; it has {sorted(artifacts)}")
        return (self.path.parent / artifacts[key]).resolve()


def read_manifest(path: Path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt manifest ({err}); re-run its notebook") from err
    if data.get("status") != "finished":
        raise MissingUpstreamError(f"{path}: the run did not finish; re-run its notebook")
    return Manifest(path, data)


@dataclass
class Run:
    """One notebook's run under one profile."""

    name: str
    config: Config
    root: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _open_stages: list[tuple[str, float]] = field(default_factory=list, init=False, repr=False)

    @property
    def profile(self) -> str:
        return self.config.profile

    @property
    def profile_dir(self) -> Path:
        return self.root / self.profile

    @property
    def dir(self) -> Path:
        return self.profile_dir / self.name

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time a stage; its wall time goes into the manifest's ``timings``.

        While it runs, ``<run dir>/.progress.json`` names it (see :meth:`progress`).
        """
        t0 = time.perf_counter()
        self._open_stages.append((name, time.time()))
        self._write_progress()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)
            self._open_stages.pop()
            self._write_progress()

    def progress(self) -> dict[str, Any]:
        """What ``.progress.json`` holds: the innermost open stage (or ``None``), since when,
        when the run started (epoch seconds) and the timings of the stages finished so far."""
        stage, since = self._open_stages[-1] if self._open_stages else (None, time.time())
        timings = dict(self.timings)
        return {"stage": stage, "since": since, "run_started": self.started, "timings": timings}

    def _write_progress(self) -> None:
        _write_atomic(self.dir / PROGRESS, json.dumps(self.progress()))

    def upstream(self, name: str) -> Manifest:
        """The finished manifest of an earlier notebook, recorded as an input of this run."""
        path = self.profile_dir / name / MANIFEST
        if not path.exists():
            raise MissingUpstreamError(
                f"{path} not found: run notebooks/{name}.ipynb first under profile "
                f"'{self.profile}' (ichigo run {name} --profile {self.profile})"
            )
        manifest = read_manifest(path)
        self.inputs[f"manifest:{name}"] = {"path": str(path), "sha256": manifest.sha256}
        return manifest

    def add_input(self, key: str, path: Path) -> Path:
        """Record a file or directory this run read, with its hash."""
        path = Path(path).resolve()
        self.inputs[key] = {"path": str(path), "sha256": sha256_path(path)}
        return path

    def add_artifact(self, key: str, path: Path) -> Path:
        """Register a file or directory this run produced (must exist)."""
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"artifact '{key}' does not exist: {path}")
        self.artifacts[key] = os.path.relpath(path, self.dir)
        return path

    def log_metrics(self, **metrics: Any) -> None:
        """Add flat scalar metrics (numbers, strings, booleans)."""
        for key, value in metrics.items():
            if hasattr(value, "item"):  # numpy / torch scalars
                value = value.item()
            if not isinstance(value, int | float | str | bool) or value is None:
                raise TypeError(f"metric '{key}' must be a scalar, got {type(value).__name__}")
            self.metrics[key] = value

    def add_record(self, key: str, value: Any) -> None:
        """Add a structured (JSON-serialisable) record, e.g. dataset cards."""
        self.records[key] = json.loads(json.dumps(value))

    def finish(self) -> Path:
        """Write ``manifest.json`` atomically and return its path."""
        manifest = {
            "name": self.name,
            "profile": self.profile,
            "status": "finished",
            "started": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "wall_time_s": round(time.time() - self.started, 3),
            "config": self.config.to_dict(),
            "overrides": self.overrides,
            "inputs": self.inputs,
            "artifacts": self.artifacts,
            "timings": self.timings,
            "metrics": self.metrics,
            "records": self.records,
            "versions": package_versions(),
            "git": git_revision(repo_root()),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        }
        path = self.dir / MANIFEST
        _write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return path


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader never sees a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def start_run(
    name: str,
    profile: str = "tiny",
    run_dir: str | Path = "runs",
    overrides: dict | str | None = None,
) -> Run:
    """Open the run of notebook ``name``: resolve the config, create the run directory.

    A previous manifest is removed first, so a run killed midway never leaves a manifest
    that downstream notebooks would trust.
    """
    config = load_config(profile, overrides)
    root = Path(run_dir)
    if not root.is_absolute():
        root = repo_root() / root
    run = Run(name=name, config=config, root=root, overrides=_plain(overrides))
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / MANIFEST).unlink(missing_ok=True)
    (run.dir / PROGRESS).unlink(missing_ok=True)
    if config.num_threads:
        import torch

        torch.set_num_threads(config.num_threads)
    _quiet_library_progress_bars()
    print(f"run {name} | profile {run.profile} | artifacts in {shown(run.dir)}", file=sys.stderr)
    return run


def _quiet_library_progress_bars() -> None:
    """The book's stages show their own progress; HF libraries' bars would only clutter."""
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _plain(overrides: dict | str | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, str):
        import yaml

        return yaml.safe_load(overrides) or {}
    return dict(overrides)

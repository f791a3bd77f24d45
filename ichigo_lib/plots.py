"""Figures: one helper per kind, each returning the figure and saving it under the run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: str | Path | None):
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def loss_curve(rows: list[dict[str, float]], title: str, path: str | Path | None = None):
    """Training loss per step (and a smoothed line) from torchtune's metric log."""
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    window = max(1, len(loss) // 25)
    totals = np.cumsum([0.0, *loss])
    starts = np.maximum(np.arange(1, len(loss) + 1) - window, 0)
    smooth = (totals[1:] - totals[starts]) / (np.arange(1, len(loss) + 1) - starts)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot(steps, loss, alpha=0.35, lw=1, label="per step")
    ax.plot(steps, smooth, lw=2, label=f"mean of {window} steps")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def mc_bars(
    scores: dict[str, dict[str, float]],
    title: str,
    chance: float = 0.25,
    path: str | Path | None = None,
):
    """Grouped bars: accuracy per model (outer keys) and formulation (inner keys)."""
    models = list(scores)
    forms = sorted({f for s in scores.values() for f in s})
    width = 0.8 / len(forms)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for j, form in enumerate(forms):
        xs = [i + (j - (len(forms) - 1) / 2) * width for i in range(len(models))]
        vals = [scores[m].get(form, float("nan")) for m in models]
        bars = ax.bar(xs, vals, width, label=form)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(range(len(models)), models)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def waveform_and_mel(samples: np.ndarray, mel, title: str, path: str | Path | None = None):
    """A clip's waveform above its 80-bin log-mel (100 frames per second)."""
    seconds = len(samples) / 16_000
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4), sharex=True, height_ratios=(1, 2))
    top.plot(np.arange(len(samples)) / 16_000, samples, lw=0.5)
    top.set(ylabel="amplitude", title=title)
    image = bottom.imshow(
        np.asarray(mel), aspect="auto", origin="lower", extent=(0, seconds, 0, mel.shape[0])
    )
    bottom.set(xlabel="seconds", ylabel="mel bin")
    fig.colorbar(image, ax=[top, bottom], label="log-mel (Whisper scale)", pad=0.01)
    return _save(fig, path)


def code_usage(codes: list[np.ndarray], num_codes: int, title: str, path: str | Path | None = None):
    """How often each code occurs, codes sorted from most to least used (log scale)."""
    counts = np.sort(np.bincount(np.concatenate(codes), minlength=num_codes))[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.bar(np.arange(num_codes), counts, width=1.0)
    ax.set_yscale("log")
    used = int((counts > 0).sum())
    ax.set(xlabel=f"code rank ({used} of {num_codes} used)", ylabel="occurrences", title=title)
    return _save(fig, path)


def vq_training(history: list[dict], quantizer_start: int, path: str | Path | None = None):
    """Tiny WhisperVQ training: transcription (decoder, CTC) and commitment losses, and active
    codes, per step."""
    steps = [h["step"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    curves = (("decoder_ce", "decoder (per char)"), ("ctc", "CTC"), ("commit", "commitment"))
    for key, label in curves:
        if key in history[0]:
            left.plot(steps, [h[key] for h in history], lw=1, label=label)
    left.axvline(quantizer_start, color="grey", ls="--", lw=1, label="quantizer on")
    left.set(xlabel="step", ylabel="loss (nats)", yscale="log", title="losses")
    left.legend(fontsize=8)
    right.plot(steps, [h["codes_active"] for h in history], lw=1.5)
    right.set(xlabel="step", ylabel="codes with EMA count > 1", title="active codes", ylim=(0, 530))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def pipeline_diagram(stages: list[tuple[str, str]], title: str, path: str | Path | None = None):
    """Boxes left to right joined by arrows; ``stages`` are (name, detail) pairs."""
    fig, ax = plt.subplots(figsize=(1.9 * len(stages), 1.5))
    for i, (name, detail) in enumerate(stages):
        ax.text(
            i * 2 + 0.8,
            0.5,
            f"{name}\n{detail}",
            ha="center",
            va="center",
            fontsize=8.5,
            bbox={"boxstyle": "round,pad=0.4", "fc": "#eef3fb", "ec": "#4a6fa5"},
        )
        if i:
            ax.annotate(
                "", (i * 2 + 0.05, 0.5), (i * 2 - 0.45, 0.5), arrowprops={"arrowstyle": "->"}
            )
    ax.set(xlim=(-0.3, 2 * len(stages) - 0.4), ylim=(0, 1), title=title)
    ax.axis("off")
    return _save(fig, path)


def length_histograms(
    lengths: dict[str, list[int]], max_seq_len: int, path: str | Path | None = None
):
    """One histogram of row lengths (LLM tokens) per dataset, with the max_seq_len line."""
    fig, axes = plt.subplots(1, len(lengths), figsize=(3.2 * len(lengths), 2.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], lengths.items(), strict=True):
        ax.hist(values, bins=30, color="#4a6fa5")
        ax.axvline(max_seq_len, color="#c0392b", ls="--", lw=1, label=f"max_seq_len {max_seq_len}")
        ax.set(title=name, xlabel="tokens per row")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rows")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def mix_pies(mixes: dict[str, dict[str, float]], path: str | Path | None = None):
    """A pie per mix (e.g. phase-2 kinds, phase-3 turn counts)."""
    fig, axes = plt.subplots(1, len(mixes), figsize=(3.4 * len(mixes), 3.2), squeeze=False)
    for ax, (title, fractions) in zip(axes[0], mixes.items(), strict=True):
        ax.pie(
            list(fractions.values()),
            labels=list(fractions),
            autopct="%.1f%%",
            startangle=90,
            textprops={"fontsize": 8},
        )
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def knowledge_over_steps(
    steps: list[int], accuracy: list[float], base: float, title: str, path: str | Path | None = None
):
    """Multiple-choice accuracy at each checkpoint of a phase, against the base model's."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, accuracy, "o-", lw=2, label="this run")
    ax.axhline(base, color="grey", ls="--", lw=1, label=f"base model {base:.2f}")
    ax.axhline(0.25, color="#c0392b", ls=":", lw=1, label="chance (4 options)")
    ax.set(xlabel="optimizer step", ylabel="5-shot MC accuracy", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def phase_comparison(
    ours: dict[str, float], paper: dict[str, float], title: str, path: str | Path | None = None
):
    """Accuracy per model (base, after each phase), this run beside the paper's, each relative
    to its own base model (the tiny world and MMLU are different tests)."""
    names = list(ours)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, scores, label in ((axes[0], ours, "this run"), (axes[1], paper, "paper (MMLU)")):
        values = [scores.get(n, np.nan) for n in names]
        bars = ax.bar(x, values, color="#4a6fa5")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set(xticks=x, xticklabels=names, ylim=(0, 1), title=label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("5-shot MC accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


class LiveLoss:
    """A loss plot redrawn in place while a ``tune run`` trains (pass as ``on_progress``); the
    final figure is saved to ``path``."""

    def __init__(self, title: str, path: str | Path | None = None):
        self.title, self.path = title, path
        self._handle = None

    def __call__(self, rows: list[dict[str, float]], final: bool = False) -> None:
        from IPython.display import display

        if not rows:
            return
        fig = loss_curve(rows, self.title, self.path if final else None)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)


def knowledge_formulations(
    scores: dict[str, dict[str, float]],
    paper: dict[str, float],
    title: str,
    path: str | Path | None = None,
):
    """MC accuracy per model: this run's cloze and letter bars beside the paper's MMLU."""
    names = list(scores)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    series = [
        ("cloze (this run)", [scores[n]["cloze"] for n in names], "#4a6fa5"),
        ("letter (this run)", [scores[n]["letter"] for n in names], "#9bb7d4"),
        ("paper (MMLU)", [paper.get(n, np.nan) for n in names], "#d08c60"),
    ]
    width = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        bars = ax.bar(x + (i - 1) * width, values, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.05), ylabel="5-shot MC accuracy", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=3, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def latency_bars(
    ours: dict[str, tuple[float, float]],
    paper: dict[str, tuple[float, float]],
    title: str,
    path: str | Path | None = None,
):
    """Time to first token (mean ± std, ms) of early fusion and the cascade: this run, paper."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, values, label in ((axes[0], ours, "this run"), (axes[1], paper, "paper (8B, GPU)")):
        names = list(values)
        means = [values[n][0] for n in names]
        bars = ax.bar(names, means, yerr=[values[n][1] for n in names], capsize=4, color="#4a6fa5")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set(title=label, ylabel="ms")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def length_match(real: list[int], generated: list[int], title: str, path: str | Path | None = None):
    """Overlaid length histograms (codes per user turn): real speech against generated input."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bins = np.histogram_bin_edges(np.concatenate([real, generated]), bins=30)
    ax.hist(real, bins=bins, density=True, alpha=0.55, label=f"speech ({len(real)})")
    ax.hist(generated, bins=bins, density=True, alpha=0.55, label=f"inaudible ({len(generated)})")
    ax.set(xlabel="sound tokens per user turn", ylabel="density", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_histograms(
    losses: dict[str, dict[str, list[float]]], title: str, path: str | Path | None = None
):
    """One panel per model (outer keys): histograms of mean per-token loss per input kind."""
    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.2), squeeze=False)
    every = np.concatenate(
        [np.asarray(v, float) for kinds in losses.values() for v in kinds.values()]
    )
    bins = np.histogram_bin_edges(every, bins=40)
    for ax, (model, kinds) in zip(axes[0], losses.items(), strict=True):
        for kind, values in kinds.items():
            ax.hist(values, bins=bins, alpha=0.55, label=f"{kind} (mean {np.mean(values):.2f})")
        ax.axvline(np.log(513), color="grey", ls="--", lw=1, label="uniform: ln 513")
        ax.set(title=model, xlabel="mean loss per sound token (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("sequences")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def projection_scatter(
    panels: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
    title: str,
    path: str | Path | None = None,
):
    """One 2-D scatter per model: ``(coords, labels, subtitle)``, coloured by label."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (model, (coords, labels, note)) in zip(axes[0], panels.items(), strict=True):
        labels = np.asarray(labels)
        for name in sorted(set(labels.tolist())):
            pts = coords[labels == name]
            ax.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.6, label=name)
        ax.set(title=f"{model}\n{note}", xlabel="PC 1", ylabel="PC 2")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def sweep_curves(
    x: list[float],
    curves: dict[str, list[float]],
    xlabel: str,
    title: str,
    logx: bool = False,
    path: str | Path | None = None,
):
    """Rates (0..1) against a swept quantity, one line per curve."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for name, ys in curves.items():
        ax.plot(x, ys, "o-", lw=2, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel="rate", ylim=(-0.03, 1.03), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def listening_ladder(
    rungs: dict[str, dict[str, float]], title: str, path: str | Path | None = None
):
    """The listening ladder: one group of bars per rung (tokens -> fit -> hears -> answers), one
    bar per model or variant (``rungs[rung][model]``), all rates in 0-1."""
    names = list(rungs)
    models = list(dict.fromkeys(m for values in rungs.values() for m in values))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names)), 3.4))
    for i, model in enumerate(models):
        values = [rungs[n].get(model, np.nan) for n in names]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.05), ylabel="rate", title=title)
    ax.grid(alpha=0.3, axis="y")
    if len(models) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)

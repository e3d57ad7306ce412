"""Figures: training curves, scores per type, the confusion of types. They draw what they are
given (matplotlib's Agg canvas, no display, no global pyplot state) and are written under a
temporary name first, so a run being watched never shows a half-written PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.files import AtomicFile
from annotator.records import MISSED, SPURIOUS, percent

TRAINING_FIGSIZE = (10.0, 8.0)  # inches at DPI: training.png is 1000 x 800 pixels


DPI = 100


def _percent_ticks():
    """Scores are fractions (0-1) in the data; their axes read 0%-100%."""
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1, decimals=0)


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    """Write the PNG under a temporary name beside `path`, then rename it into place."""
    with AtomicFile(path) as target:
        figure.savefig(target.tmp, format="png", dpi=DPI)
    return target.path


def plot_training(metrics: dict[str, Any], output: str | Path, run_name: str) -> Path:
    """training.png: train loss, dev P/R/F1 and learning rate per epoch, best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    epochs = [e for e in metrics["epochs"] if isinstance(e, dict) and "epoch" in e]
    if not epochs:
        raise AnnotatorError(f"{output}: no epoch has finished yet; nothing to plot")

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(e["epoch"], e[key]) for e in epochs if isinstance(e.get(key), (int, float))]
        return [p[0] for p in points], [float(p[1]) for p in points]

    best = metrics.get("best_epoch") or 0
    best_f1 = metrics.get("best_dev_f1")
    figure = _figure(TRAINING_FIGSIZE)
    loss_ax, f1_ax, lr_ax = figure.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]}
    )
    x, y = series("train_loss")
    loss_ax.plot(x, y, marker="o", color="#1f77b4", label="training loss")
    loss_ax.set_ylabel("training loss")
    for key, style in (("dev_precision", ":"), ("dev_recall", "--")):
        x, y = series(key)
        f1_ax.plot(x, y, linestyle=style, color="#999999", label=key.replace("dev_", "dev "))
    x, y = series("dev_f1")
    f1_ax.plot(x, y, marker="o", color="#2ca02c", linewidth=2, label="dev micro-F1")
    f1_ax.set_ylabel("dev score (%)")
    f1_ax.set_ylim(0, 1.02)
    f1_ax.yaxis.set_major_formatter(_percent_ticks())
    f1_ax.legend(loc="lower right", fontsize=9)
    x, y = series("learning_rate")
    lr_ax.step(x, y, where="mid", marker="o", color="#d62728")
    if y and min(y) > 0:
        lr_ax.set_yscale("log")
        levels = sorted(set(y))
        lr_ax.set_yticks(
            levels if len(levels) <= 8 else levels[:: len(levels) // 8 + 1], labels=None
        )
        lr_ax.yaxis.set_major_formatter("{x:g}")
        lr_ax.yaxis.set_minor_formatter("")
        lr_ax.set_ylim(min(y) / 1.6, max(y) * 1.6)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best:
        for ax in (loss_ax, f1_ax, lr_ax):
            ax.axvline(best, color="#2ca02c", linestyle="--", alpha=0.6)
        if isinstance(best_f1, (int, float)):
            f1_ax.plot([best], [best_f1], marker="*", markersize=16, color="#2ca02c")
            last = max(e["epoch"] for e in epochs)
            near_end = best > (last + min(e["epoch"] for e in epochs)) / 2
            f1_ax.annotate(
                f"best {percent(best_f1)} (epoch {best})",
                (best, best_f1),
                textcoords="offset points",
                xytext=(-12 if near_end else 12, -22 if best_f1 > 0.85 else 12),
                ha="right" if near_end else "left",
                fontsize=10,
            )
    for ax in (loss_ax, f1_ax, lr_ax):
        ax.grid(alpha=0.3)
    state = {True: "finished", False: "stopped"}.get(metrics.get("finished"), "running")
    figure.suptitle(
        f"{run_name} \u2014 {len(epochs)} epochs ({state})"
        + (
            f", best dev F1 {percent(best_f1)} at epoch {best}"
            if best and isinstance(best_f1, (int, float))
            else ""
        )
    )
    figure.tight_layout()
    return _save(figure, output)


def plot_scores(result, path: Path) -> Path:
    """P/R/F1 per type (and micro average) as grouped bars, support under each type."""
    import numpy as np

    rows = [*result.per_type.items(), ("micro avg", result.micro)]
    figure = _figure((max(7.0, 1.3 * len(rows) + 3), 5.5))
    ax = figure.subplots()
    x = np.arange(len(rows))
    width = 0.26
    for offset, (name, color) in enumerate(
        (("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))
    ):
        values = [getattr(s, name) for _, s in rows]
        bars = ax.bar(x + (offset - 1) * width, values, width, label=name, color=color)
        for bar, value in zip(bars, values):
            ax.annotate(
                percent(value, 1),
                (bar.get_x() + bar.get_width() / 2, value),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=8,
            )
    ax.set_xticks(x, [f"{label}\n(support {s.support})" for label, s in rows])
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.yaxis.set_major_formatter(_percent_ticks())
    ax.set_ylabel("score (%)")
    ax.legend(loc="upper center", ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        f"Span-level scores per type (micro-F1 {percent(result.micro.f1)}, "
        f"macro-F1 {percent(result.macro.f1)})"
    )
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion(
    rows: list[str], columns: list[str], counts: list[list[int | None]], path: Path
) -> Path:
    """Gold type (rows) against predicted type (columns), counts in the cells."""
    import matplotlib
    import numpy as np

    data = np.array([[c if c is not None else 0 for c in row] for row in counts], dtype=float)
    size = max(6.0, 0.75 * len(columns) + 3)
    figure = _figure((size + 1, size * 0.85))
    ax = figure.subplots()
    shown = np.ma.masked_where(
        np.array([[c is None for c in row] for row in counts]), np.log1p(data)
    )
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")
    ax.imshow(shown, cmap=cmap, aspect="auto")
    ceiling = np.log1p(data.max()) if data.size else 1
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value is None:
                continue
            dark = np.log1p(value) > 0.6 * ceiling
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=11,
                color="white" if dark else "#222",
                fontweight="bold" if i == j else None,
            )
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted type")
    ax.set_ylabel("gold type")
    ax.set_title("Span-level confusion (exact token spans)")
    figure.text(
        0.01,
        0.01,
        f"'{MISSED}': gold span with no prediction at exactly its tokens; "
        f"'{SPURIOUS}': prediction with no gold span there.\nA boundary error counts "
        "once in each.",
        fontsize=8,
        color="#555",
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(figure, path)


def plot_reliability(stats: dict[str, Any], output: str | Path, title: str = "") -> Path:
    """The reliability diagram of `annotator.tagging.calibration.reliability`'s statistics:
    share correct against mean score per bin, the diagonal being perfect calibration; bar
    labels give the spans per bin."""
    bins = [b for b in stats["bins"] if b["count"]]
    figure = _figure((5.5, 5.0))
    axis = figure.subplots()
    axis.plot(
        [0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect calibration"
    )
    bars = axis.bar(
        [b["low"] for b in bins],
        [b["share_correct"] for b in bins],
        width=0.1,
        align="edge",
        color="#4c78a8",
        edgecolor="white",
        label="share correct",
    )
    axis.plot(
        [b["mean_score"] for b in bins],
        [b["share_correct"] for b in bins],
        "o",
        color="#f58518",
        label="mean score of the bin",
    )
    axis.bar_label(bars, labels=[str(b["count"]) for b in bins], fontsize=7, padding=2)
    axis.set(
        xlim=(0, 1),
        ylim=(0, 1.08),
        xlabel="span score",
        ylabel="share of spans right",
        title=f"{title}  ECE {stats['ece']:.3f}".strip(),
    )
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _save(figure, Path(output))

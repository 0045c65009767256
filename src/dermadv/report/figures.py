"""The report's figures: matplotlib (Agg, no pyplot state), labelled axes with units, one colour per class."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, PercentFormatter

from dermadv.data.classes import CLASS_COLOURS
from dermadv.defences.results import CardResult
from dermadv.errors import DataError
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.evaluation.attack_run import fooled, read_predictions
from dermadv.evaluation.metrics import ClassificationReport
from dermadv.paper import FOOLING_RATIO_EVERY_CLASS
from dermadv.report.data import READ_ERRORS, FigureFile, ReportData
from dermadv.runs import read_run_manifest

log = logging.getLogger(__name__)

_STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 150,
}
#: Lines that are not classes (methods, splits, losses) avoid the class colours: black, greys, earth tones.
_LINE_COLOURS = ("#000000", "#7F7F7F", "#8C510A", "#5E3C99", "#1B7837", "#B2182B")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_NEUTRAL = "#4D4D4D"


def class_colour(cls: str) -> str:
    return CLASS_COLOURS.get(cls, "#999999")


@contextmanager
def _style() -> Iterator[None]:
    with rc_context(_STYLE):  # type: ignore[arg-type]  # matplotlib types the keys as a Literal
        yield


def save(fig: Figure, path: Path) -> tuple[int, int]:
    """Write a PNG; returns its size in CSS pixels (its physical size at 96 pixels per inch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    scale = 96 / float(_STYLE["savefig.dpi"])
    return round(width * scale), round(height * scale)


def _epoch_axis(ax: Axes, epochs: np.ndarray) -> None:
    ax.set_xlabel("epoch")
    if 0 < epochs.size <= 12:
        ax.xaxis.set_major_locator(FixedLocator([float(e) for e in epochs]))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs.size:
        ax.set_xlim(float(epochs.min()) - 0.5, float(epochs.max()) + 0.5)


def _percent_axis(ax: Axes, label: str) -> None:
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.set_ylabel(label)


def class_counts_figure(counts: pd.DataFrame) -> Figure:
    """Images per class in each split, as grouped bars."""
    table = counts.drop(index="total", errors="ignore").drop(columns="total", errors="ignore")
    fig = Figure(figsize=(7.0, 2.8))
    ax = fig.subplots()
    splits = list(table.columns)
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(table.index))
    hatches = ("", "//", "..", "xx")
    for j, split in enumerate(splits):
        ax.bar(
            x + (j - (len(splits) - 1) / 2) * width,
            table[split].to_numpy(),
            width,
            color=[class_colour(c) for c in table.index],
            edgecolor="black",
            linewidth=0.5,
            hatch=hatches[j % len(hatches)],
            label=split,
        )
    ax.set_xticks(x, list(table.index))
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", hatch=hatches[j % len(hatches)], label=s)
            for j, s in enumerate(splits)
        ],
        title="split",
    )
    return fig


def training_curves_figure(history: pd.DataFrame) -> Figure:
    """Loss and validation accuracy against epoch."""
    fig = Figure(figsize=(7.5, 2.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = history["epoch"].to_numpy()
    for k, (col, label) in enumerate((("train_loss", "training"), ("val_loss", "validation"))):
        if col in history.columns:
            ax_loss.plot(epochs, history[col], marker=_MARKERS[k], color=_LINE_COLOURS[k], label=label)
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    for k, (col, label) in enumerate((("val_acc", "accuracy"), ("val_balanced_acc", "balanced accuracy"))):
        if col in history.columns:
            ax_acc.plot(epochs, 100 * history[col], marker=_MARKERS[k], color=_LINE_COLOURS[k], label=label)
    _percent_axis(ax_acc, "validation split (%)")
    ax_acc.set_title("validation accuracy")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, epochs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig


def confusion_figure(
    matrix: np.ndarray | Sequence[Sequence[float]],
    classes: Sequence[str],
    *,
    prediction: str,
    target: str | None = None,
) -> Figure:
    """Counts and row-normalised shares (rows: true class); the target's column is outlined."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = Figure(figsize=(9.0, 4.0))
    axes = fig.subplots(1, 2)
    for ax, values, title, fmt in (
        (axes[0], counts, "counts", "{:.0f}"),
        (axes[1], 100 * shares, "row-normalised (% of each true class)", "{:.0f}"),
    ):
        top = values.max() if values.size and values.max() > 0 else 1.0
        ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        ax.grid(False)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(
                    j,
                    i,
                    fmt.format(values[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if values[i, j] > 0.6 * top else "black",
                )
        ax.set_xticks(range(len(classes)), list(classes), rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), list(classes))
        ax.set_xlabel(f"predicted class ({prediction})")
        ax.set_ylabel("true class")
        ax.set_title(title)
        if target is not None and target in classes:
            j = list(classes).index(target)
            ax.add_patch(Rectangle((j - 0.5, -0.5), 1, len(classes), fill=False, edgecolor="black", linestyle="--"))
        for tick, cls in zip(ax.get_yticklabels(), classes, strict=False):
            tick.set_color("black")
            tick.set_bbox({"facecolor": class_colour(cls), "alpha": 0.35, "edgecolor": "none", "pad": 1})
    return fig


def per_class_rates_figure(metrics: ClassificationReport, classes: Sequence[str]) -> Figure:
    """Sensitivity (solid) and specificity (hatched) per class, one vs rest; ``n/a`` where undefined."""
    fig = Figure(figsize=(7.0, 2.8))
    ax = fig.subplots()
    x = np.arange(len(classes))
    for offset, rates, hatch in ((-0.2, metrics.sensitivity, ""), (0.2, metrics.specificity, "///")):
        values = [rates.get(c, math.nan) for c in classes]
        heights = [0.0 if math.isnan(v) else 100 * v for v in values]
        ax.bar(
            x + offset,
            heights,
            0.38,
            color=[class_colour(c) for c in classes],
            edgecolor="black",
            linewidth=0.5,
            hatch=hatch,
        )
        for xi, v in zip(x + offset, values, strict=True):
            if math.isnan(v):
                ax.text(xi, 2, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    _percent_axis(ax, "test split (%)")
    ax.set_xticks(x, list(classes))
    ax.set_xlabel("class")
    ax.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", label="sensitivity"),
            Patch(facecolor="white", edgecolor="black", hatch="///", label="specificity"),
        ],
        loc="lower right",
        framealpha=0.9,
    )
    return fig


def roc_figure(predictions: pd.DataFrame, classes: Sequence[str], auc: Mapping[str, float]) -> Figure | None:
    """One-vs-rest ROC curve per class from ``predictions.csv`` (``prob_<class>`` columns)."""
    from sklearn.metrics import roc_curve

    columns = [f"prob_{c}" for c in classes]
    if any(c not in predictions.columns for c in columns):
        return None
    labels = predictions["label"].astype(str).to_numpy()
    fig = Figure(figsize=(4.8, 4.4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="#999999", label="chance")
    drawn = 0
    for cls, col in zip(classes, columns, strict=True):
        positives = labels == cls
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, predictions[col].to_numpy(dtype=float))
        value = auc.get(cls, math.nan)
        label = f"{cls}, AUC {value:.3f}" if value and not math.isnan(value) else cls
        ax.plot(fpr, tpr, color=class_colour(cls), linewidth=1.6, label=label)
        drawn += 1
    if not drawn:
        return None
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right")
    return fig


def fooling_figure(metrics: AttackMetrics, classes: Sequence[str]) -> Figure:
    """Fooling ratio per true class with its 95% interval; the paper reported :data:`~dermadv.paper.FOOLING_RATIO_EVERY_CLASS`."""
    target = metrics.target
    shown = [c for c in classes if c in metrics.per_class and metrics.per_class[c].n]
    fig = Figure(figsize=(7.0, 3.0))
    ax = fig.subplots()
    x = np.arange(len(shown))
    est, low, high = (
        np.nan_to_num([100 * getattr(metrics.fooling_ratio[c], k) for c in shown]) for k in ("estimate", "low", "high")
    )
    bars = ax.bar(
        x,
        est,
        0.65,
        color=[class_colour(c) for c in shown],
        edgecolor="black",
        linewidth=0.5,
        yerr=np.vstack([np.clip(est - low, 0, None), np.clip(high - est, 0, None)]),
        capsize=4,
        error_kw={"elinewidth": 1, "ecolor": "black"},
    )
    for bar, cls in zip(bars, shown, strict=True):
        if cls == target:
            bar.set_hatch("///")
    if target is not None:
        ax.axhline(100, linestyle="--", color=_NEUTRAL, linewidth=1)
        ax.text(len(shown) - 0.5, 103, f"paper: {FOOLING_RATIO_EVERY_CLASS}", ha="right", va="bottom", fontsize=7)
        label = f"predicted {target} after the attack (%)"
    else:
        label = "misclassified after the attack (%)"
    _percent_axis(ax, label)
    ax.set_ylim(0, 115)
    ax.set_xticks(x, [f"{c}\nn = {metrics.per_class[c].n}" for c in shown])
    ax.set_xlabel(f"true class{f' (hatched: the target {target}, share still {target})' if target in shown else ''}")
    return fig


def sizes_figure(per_image: pd.DataFrame, eps_255: float | None) -> Figure | None:
    """Distributions of L∞, L2, PSNR and SSIM over the adversarial images."""
    panels = [
        ("linf_255", "L∞ (8-bit steps, 1/255)", True),
        ("l2", "L2 of adv − clean ([0, 1] scale)", False),
        ("psnr", "PSNR (dB)", False),
        ("ssim", "SSIM (1 = identical)", False),
    ]
    panels = [p for p in panels if p[0] in per_image.columns]
    if not panels:
        return None
    fig = Figure(figsize=(7.5, 5.2))
    grid = fig.subplots(2, 2).ravel()
    for ax in grid[len(panels) :]:
        ax.set_visible(False)
    for ax, (col, label, integer) in zip(grid, panels, strict=False):
        values = pd.to_numeric(per_image[col], errors="coerce").to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if integer and finite.size:
            bins: Any = np.arange(np.floor(finite.min()) - 0.5, np.ceil(finite.max()) + 1.5)
        else:
            bins = 20
        if finite.size:
            ax.hist(finite, bins=bins, color=_NEUTRAL, edgecolor="white", linewidth=0.5)
            ax.axvline(float(np.median(finite)), color="black", linestyle="-", linewidth=1, label="median")
        if col == "linf_255" and eps_255:
            ax.axvline(eps_255, color=_LINE_COLOURS[5], linestyle="--", linewidth=1.2, label=f"ε = {eps_255:g}/255")
        if integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            top = max(float(finite.max()) if finite.size else 0.0, eps_255 or 0.0)
            ax.set_xlim(-0.5, top + 1.5)
        skipped = values.size - finite.size
        ax.set_xlabel(label + (f"\n{skipped} identical image(s) left out" if col == "psnr" and skipped else ""))
        ax.set_ylabel("images")
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def generator_curves_figure(history: pd.DataFrame, target: str | None) -> Figure | None:
    """The generator's margin loss and share of fit images predicted as the target, per epoch."""
    cols = [c for c in ("loss_adv", "train_target_rate") if c in history.columns]
    if not cols:
        return None
    fig = Figure(figsize=(7.5, 2.6))
    axes = np.atleast_1d(fig.subplots(1, len(cols)))
    epochs = history["epoch"].to_numpy()
    for ax, col in zip(axes, cols, strict=True):
        if col == "loss_adv":
            ax.plot(epochs, history[col], marker="o", color=_LINE_COLOURS[0])
            ax.set_ylabel("C&W margin loss (logits)")
            ax.set_title("adversarial loss")
        else:
            ax.plot(epochs, 100 * history[col], marker="s", color=_LINE_COLOURS[1])
            _percent_axis(ax, f"fit images predicted {target or 'target'} (%)")
            ax.set_title("success on the fit images")
        _epoch_axis(ax, epochs)
    return fig


def _line_labels(table: pd.DataFrame) -> pd.Series:
    if "protocol" not in table.columns:
        return table["method"].astype(str)
    several = table.groupby("method")["protocol"].nunique()
    return table.apply(
        lambda r: f"{r['method']} ({r['protocol']})" if several.get(r["method"], 1) > 1 else str(r["method"]), axis=1
    )


def robustness_figure(table: pd.DataFrame) -> Figure:
    """Accuracy, worst-class fooling ratio and PSNR against the budget, one line per attack (and protocol)."""
    table = table.assign(_line=_line_labels(table)).sort_values("eps_255")
    panels = [("accuracy_adv", "accuracy on adversarial images (%)", True)]
    if "worst_class_fooling" in table.columns:
        panels.append(("worst_class_fooling", "worst-class fooling ratio (%)", True))
    if "psnr_mean" in table.columns:
        panels.append(("psnr_mean", "mean PSNR (dB)", False))
    fig = Figure(figsize=(2.8 * len(panels), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    eps = np.sort(table["eps_255"].dropna().unique())
    log_x = eps.size >= 3 and eps.min() > 0 and eps.max() / eps.min() >= 4
    for ax, (col, label, percent) in zip(axes, panels, strict=True):
        for k, (name, rows) in enumerate(table.groupby("_line", sort=True)):
            y = pd.to_numeric(rows[col], errors="coerce") * (100 if percent else 1)
            ax.plot(
                rows["eps_255"],
                y,
                marker=_MARKERS[k % len(_MARKERS)],
                color=_LINE_COLOURS[k % len(_LINE_COLOURS)],
                linestyle=("-", "--", "-.", ":")[k % 4],
                label=str(name),
            )
        if col == "accuracy_adv" and "accuracy_clean" in table.columns:
            clean = pd.to_numeric(table["accuracy_clean"], errors="coerce").mean()
            if np.isfinite(clean):
                ax.axhline(100 * clean, color="#999999", linestyle=":", label="clean images")
        if percent:
            _percent_axis(ax, label)
        else:
            ax.set_ylabel(label)
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_locator(FixedLocator([float(v) for v in eps]))
        ax.set_xticklabels([f"{v:g}" for v in eps])
        ax.set_xlabel("L∞ budget ε (1/255)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), frameon=False)
    return fig


def card_figure(result: CardResult) -> Figure:
    """Per defence, the share of each class moved to the target against the budget, with the 50% and 99% lines."""
    cards = result.cards
    fig = Figure(figsize=(3.2 * len(cards) + 0.6, 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(cards), sharey=True))
    for ax, defended in zip(axes, cards, strict=True):
        card = defended.card
        eps = [255 * e for e in card.eps]
        for row in card.classes:
            ax.plot(eps, [100 * f for f in row.fooling], marker="o", color=class_colour(row.label), label=row.label)
        for level in (50, 99):
            ax.axhline(level, color=_NEUTRAL, linestyle=":", linewidth=0.8)
        if len(eps) >= 3 and min(eps) > 0 and max(eps) / min(eps) >= 4:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_locator(FixedLocator(eps))
        ax.set_xticklabels([f"{v:g}" for v in eps])
        ax.set_xlabel("L∞ budget ε (1/255)")
        ax.set_title(defended.defence + (" (adaptive attack)" if defended.adaptive else ""))
        _percent_axis(ax, f"images moved to {card.target} (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(7, len(labels)), frameon=False)
    return fig


#: the query budgets of the "fooled within q queries" table
QUERY_MARKS = (10, 100, 1000)
#: the figure's file name in an audit folder
QUERIES_FIGURE = "success_vs_queries.png"


@dataclass(frozen=True)
class QueryCurve:
    """One true class under a query-based attack: the queries each image spent and whether it was fooled."""

    label: str
    queries: np.ndarray  # per image
    fooled: np.ndarray  # bool per image: predicted as the target (targeted) or not as its label (untargeted)

    @property
    def n(self) -> int:
        return int(self.fooled.size)

    def fooled_within(self, q: float) -> float:
        """The share of the class's images fooled with at most ``q`` queries."""
        return float(np.mean(self.fooled & (self.queries <= q))) if self.n else float("nan")

    @property
    def median_queries(self) -> float | None:
        """The median queries among the fooled images; None when none was fooled."""
        spent = self.queries[self.fooled]
        return float(np.median(spent)) if spent.size else None


@dataclass(frozen=True)
class QueryCurves:
    """Success against queries per true class (the target class left out), with the per-image budget."""

    curves: tuple[QueryCurve, ...]
    target: str | None
    budget: int

    def table(self, marks: Sequence[int] = QUERY_MARKS) -> dict[str, Any]:
        """Per class, the share fooled within each of ``marks`` queries (None beyond the budget) and the median
        queries among successes; plain values, as ``audit.md`` renders them."""
        rows = [
            {
                "label": c.label,
                "n": c.n,
                "fooled": c.fooled_within(self.budget),
                "within": {q: (c.fooled_within(q) if q <= self.budget else None) for q in marks},
                "median_queries": c.median_queries,
            }
            for c in self.curves
        ]
        return {"target": self.target, "budget": self.budget, "marks": list(marks), "classes": rows}


def query_curves(
    predictions: pd.DataFrame,
    *,
    target: str | None,
    budget: int | None = None,
    classes: Sequence[str] | None = None,
) -> QueryCurves:
    """Success against queries from the rows of an attack's ``predictions.csv`` (``label``, ``adv_pred``,
    ``queries``); ``budget`` defaults to the most queries any image spent."""
    missing = [c for c in ("label", "adv_pred", "queries") if c not in predictions.columns]
    if missing:
        raise DataError(
            f"predictions lack the column(s) {', '.join(missing)}; success against queries needs the per-image "
            "queries of a query-based attack (e.g. `dermadv attack run --method square`)"
        )
    queries = pd.to_numeric(predictions["queries"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(queries).all() or (queries < 0).any():
        raise DataError("the queries column holds missing or negative values; rerun the attack")
    labels = predictions["label"].astype(str).to_numpy()
    success = fooled(predictions, target)
    top = int(queries.max()) if queries.size else 1
    if budget is None:
        budget = max(1, top)
    elif budget < top:
        raise DataError(f"an image spent {top} queries, more than the budget {budget}; pass the attack's budget")
    order = [c for c in (classes or sorted(set(labels))) if c != target]
    curves = tuple(
        QueryCurve(c, queries[labels == c].astype(np.int64), success[labels == c]) for c in order if (labels == c).any()
    )
    return QueryCurves(curves, target, int(budget))


def _attack_budget(attack_dir: Path, attack: AttackInfo) -> int | None:
    """The per-image query budget: the run's ``--queries``, else the attack's repr (``Square(…, queries=1000, …)``)."""
    manifest = read_run_manifest(attack_dir)
    queries = manifest.config.get("queries") if manifest is not None else None
    if isinstance(queries, int) and queries > 0:
        return queries
    found = re.search(r"\bqueries=(\d+)", attack.params or "")
    return int(found.group(1)) if found else None


def read_query_curves(attack_dir: Path, *, target: str | None = None, budget: int | None = None) -> QueryCurves:
    """:func:`query_curves` of an attack output folder, with its target, classes and budget from its files."""
    attack_dir = Path(attack_dir)
    attack = AttackInfo.read(attack_dir)
    predictions = read_predictions(attack_dir)
    if budget is None:
        budget = _attack_budget(attack_dir, attack)
        spent = pd.to_numeric(predictions["queries"], errors="coerce") if "queries" in predictions else None
        if budget is not None and spent is not None and spent.max() > budget:
            log.warning("%s: an image spent more than the budget %d read from its run; using the most spent",
                        attack_dir, budget)  # fmt: skip
            budget = None
    return query_curves(
        predictions,
        target=target if target is not None else attack.target,
        budget=budget,
        classes=attack.classes,
    )


def success_vs_queries_figure(result: QueryCurves) -> Figure:
    """Per true class, the share of images fooled within q queries, a step curve over a log q axis (1 to the
    budget); the legend gives each class's median queries among its successes."""
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.subplots()
    budget = max(2, result.budget)  # a log axis needs some width
    for curve in result.curves:
        spent, counts = np.unique(curve.queries[curve.fooled], return_counts=True)
        share = np.cumsum(counts) / max(1, curve.n)
        x = np.concatenate([[1], spent, [budget]]).astype(float)
        y = 100 * np.concatenate([[0.0], share, [share[-1] if share.size else 0.0]])
        median = curve.median_queries
        label = f"{curve.label} (n = {curve.n}): " + (
            f"{share[-1]:.0%} fooled, median {median:g} quer{'y' if median == 1 else 'ies'}"
            if median is not None
            else "none fooled"
        )
        ax.step(x, y, where="post", color=class_colour(curve.label), linewidth=1.6, label=label)
    for q in QUERY_MARKS:
        if q < budget:
            ax.axvline(q, color="#999999", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(1, budget)
    ax.set_xlabel(f"queries per image (log scale; budget {result.budget})")
    _percent_axis(
        ax, f"images predicted {result.target} (%)" if result.target is not None else "images misclassified (%)"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="true class", frameon=False)
    return fig


def success_vs_queries(
    source: Path | str | pd.DataFrame,
    out_path: Path | str,
    *,
    target: str | None = None,
    budget: int | None = None,
) -> QueryCurves:
    """Draw :func:`success_vs_queries_figure` into ``out_path`` (PNG) from an attack output folder or the rows
    of its ``predictions.csv`` (then ``target`` None means untargeted); returns the curves drawn."""
    if isinstance(source, pd.DataFrame):
        result = query_curves(source, target=target, budget=budget)
    else:
        result = read_query_curves(Path(source), target=target, budget=budget)
    with _style():
        save(success_vs_queries_figure(result), Path(out_path))
    return result


def _figures_to_draw(data: ReportData) -> Iterator[tuple[str, Any]]:
    """(name, thunk) for each figure the data allow; thunks return a Figure or None."""
    classes = data.classes
    if data.data is not None and data.data.split_counts is not None:
        counts = data.data.split_counts
        yield "class_counts", lambda: class_counts_figure(counts)
    clf = data.classifier
    if clf is not None:
        if clf.history is not None:
            history = clf.history
            yield "training_curves", lambda: training_curves_figure(history)
        if clf.metrics is not None:
            metrics = clf.metrics
            mclasses = metrics.classes or classes
            yield "confusion", lambda: confusion_figure(metrics.confusion, mclasses, prediction="clean")
            yield "per_class_rates", lambda: per_class_rates_figure(metrics, mclasses)
            if clf.predictions is not None:
                predictions = clf.predictions
                yield "roc", lambda: roc_figure(predictions, mclasses, metrics.auc)
    attack = data.attack
    if attack is not None:
        if attack.generator_history is not None:
            ghistory, gtarget = attack.generator_history, attack.attack.target
            yield "generator_curves", lambda: generator_curves_figure(ghistory, gtarget)
        if attack.metrics is not None:
            am = attack.metrics
            aclasses = am.classes or classes
            yield (
                "attack_confusion",
                lambda: confusion_figure(am.confusion_adv, aclasses, prediction="adversarial", target=am.target),
            )
            yield "fooling", lambda: fooling_figure(am, aclasses)
        if attack.per_image is not None:
            per_image, eps_255 = attack.per_image, attack.eps_255
            yield "sizes", lambda: sizes_figure(per_image, eps_255)
        if attack.attack.attack_queries is not None:  # per-image queries were counted
            attack_dir = data.run_dir / attack.folder
            yield "success_vs_queries", lambda: success_vs_queries_figure(read_query_curves(attack_dir))
    if data.sweep is not None:
        sweep = data.sweep.table
        yield "robustness", lambda: robustness_figure(sweep)
    if data.defences is not None and data.defences.card is not None and data.defences.card.cards:
        cards = data.defences.card
        yield "robustness_card", lambda: card_figure(cards)


def write_figures(data: ReportData, out_dir: Path) -> tuple[dict[str, FigureFile], list[str]]:
    """Draw every figure the data allow into ``out_dir``; returns ``{name: href}`` and notes on failures."""
    written: dict[str, FigureFile] = {}
    notes: list[str] = []
    with _style():
        for name, draw in _figures_to_draw(data):
            try:
                fig = draw()
                if fig is None:
                    continue
                width, height = save(fig, out_dir / f"{name}.png")
                written[name] = FigureFile(f"{out_dir.name}/{name}.png", width, height)
            except (*READ_ERRORS, ArithmeticError, DataError) as exc:
                log.warning("figure %s left out: %s", name, exc)
                notes.append(f"figure {name} left out: {type(exc).__name__}: {exc}")
    return written, notes

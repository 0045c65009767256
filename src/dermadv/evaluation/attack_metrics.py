"""The paper's measures for one attacked set, typed: :class:`AttackMetrics` and its table of :class:`Measure` rows.

The table (:meth:`AttackMetrics.measures`) is the one that ``evaluate-attack``, ``reproduce``'s paper table and
the report all print; its JSON form (:meth:`AttackMetrics.as_dict`) is ``attack_metrics.json``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from dermadv.data.classes import CLASSES
from dermadv.evaluation.imperceptibility import PerturbationSizes, summarise_sizes
from dermadv.evaluation.stats import (
    DEFAULT_CI,
    CIMethod,
    Interval,
    McNemarResult,
    format_value,
    mcnemar_test,
    proportion_ci,
)

_SIZE_KEYS = ("linf_255_max", "l2_mean", "l0_mean", "psnr_mean", "ssim_mean")


@dataclass(frozen=True)
class Measure:
    """One row of a results table: its name (a key of ``summary.json``), words, value and definition.

    ``value`` is an :class:`Interval` for a share, else a number (or text); ``pointer`` names the keys where
    ``attack_metrics.json`` holds it.
    """

    name: str
    label: str
    value: Interval | float | int | str | None
    definition: str = ""
    pointer: tuple[str, ...] = ()
    fmt: str = "g"  # how a plain number prints; "p" for a P value

    def __post_init__(self) -> None:
        if not self.pointer:  # most measures sit at their name: "fooling_ratio.mel" -> ["fooling_ratio"]["mel"]
            object.__setattr__(self, "pointer", tuple(self.name.split(".")))

    @property
    def text(self) -> str:
        return format_value(self.value, self.fmt)


@dataclass(frozen=True)
class ClassResult:
    """The measures of one true class; sizes only where perturbations were measured."""

    n: int
    accuracy_clean: Interval
    accuracy_adv: Interval
    fooling_ratio: Interval
    linf_255_max: int | None = None
    l2_mean: float | None = None
    l0_mean: float | None = None
    psnr_mean: float | None = None
    ssim_mean: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassResult:
        values: dict[str, Any] = {k: d.get(k) for k in _SIZE_KEYS}
        values |= {k: Interval.from_dict(d[k]) for k in ("accuracy_clean", "accuracy_adv", "fooling_ratio")}
        return cls(n=int(d["n"]), **values)


def definitions(target: str | None, ci_method: str) -> dict[str, str]:
    """Every measure in words (the ``definitions`` block of ``attack_metrics.json``)."""
    if target is None:
        fooling = (
            "untargeted attack (no target): per true class, the share of that class's adversarial images "
            "whose prediction differs from the true class"
        )
        targeted = "not applicable: the attack has no target class"
    else:
        fooling = (
            f"per true class, the share of that class's adversarial images predicted as the target class "
            f"{target!r} (for the target class itself: the share still predicted as {target!r})"
        )
        targeted = (
            f"among images correctly classified when clean and whose true class is not {target!r}: "
            f"the share of adversarial images predicted as {target!r}"
        )
    return {
        "scoring": "all predictions are made on the saved 8-bit PNGs (images/clean, images/adv)",
        "intervals": f"95% {ci_method} intervals for proportions",
        "accuracy_clean": "share of clean images predicted as their true class",
        "accuracy_adv": "share of adversarial images predicted as their true class",
        "mcnemar": (
            "McNemar (1947) test of paired per-image correctness, clean vs adversarial; table rows: clean "
            "correct / wrong, columns: adversarial correct / wrong; 'exact' is the two-sided binomial test on the "
            "discordant pairs, 'chi2' the chi-square with continuity correction (Edwards 1948); "
            "with no discordant pairs the chi-square is undefined and reported as statistic null, P = 1"
        ),
        "fooling_ratio": fooling,
        "fooling_ratio_all": "the fooling ratio over all images, whatever their true class",
        "worst_class_fooling_ratio": "the smallest per-class fooling ratio among classes with at least one image",
        "targeted_success": targeted,
        "untargeted_success": "among images correctly classified when clean: the share misclassified after the attack",
        "flip_rate": "share of images whose adversarial prediction differs from their clean prediction",
        "confusion_adv": "counts; rows: true class, columns: prediction on the adversarial image",
        "confusion_clean": "counts; rows: true class, columns: prediction on the clean image",
        "inmem_agreement": (
            "images whose prediction on the saved 8-bit adversarial PNG differs from the prediction on the "
            "in-memory (floating-point) adversarial image"
        ),
        "linf_255": "max absolute change of any pixel channel, in 8-bit steps (1/255)",
        "l2": "Euclidean norm of adv - clean over all H×W×3 values on the [0, 1] scale",
        "l0": "number of pixel positions where at least one channel changed",
        "psnr": "10·log10(255² / MSE) in dB; infinite for identical images, which summaries leave out (n_identical)",
        "ssim": "structural similarity (Wang et al. 2004), scikit-image, 7×7 window, averaged over channels",
        "n_over_budget": "images whose L∞ exceeds eps by more than half an 8-bit step (rounding)",
    }


@dataclass(frozen=True)
class AttackMetrics:
    """Accuracy clean and adversarial, McNemar, fooling ratios, perturbation sizes; see :func:`definitions`."""

    n: int
    classes: tuple[str, ...]
    target: str | None
    ci_method: str
    accuracy_clean: Interval
    accuracy_adv: Interval
    mcnemar: McNemarResult  # exact binomial
    mcnemar_chi2: McNemarResult | None  # None without discordant pairs (statistic undefined, P = 1)
    fooling_ratio: dict[str, Interval]
    fooling_ratio_all: Interval
    worst_class: str | None  # the class with the smallest fooling ratio among those with images
    targeted_success: Interval | None
    untargeted_success: Interval
    flip_rate: Interval
    confusion_adv: list[list[int]]
    confusion_clean: list[list[int]]
    per_class: dict[str, ClassResult]
    inmem_n_differ: int | None = None
    imperceptibility: dict[str, dict[str, Any]] | None = None  # summaries of linf_255, l2, l0, psnr, ssim
    eps_255: float | None = None
    n_over_budget: int | None = None
    attack: dict[str, Any] = field(default_factory=dict)  # the folder's attack.json

    @property
    def worst_class_fooling_ratio(self) -> Interval | None:
        return self.fooling_ratio[self.worst_class] if self.worst_class is not None else None

    def size(self, measure: str, statistic: str) -> Any:
        """A summary of the perturbation sizes, e.g. ``size("psnr", "mean")``; ``None`` when not measured."""
        return (self.imperceptibility or {}).get(measure, {}).get(statistic)

    def measures(self) -> list[Measure]:
        """The paper's table for this run, in the order every view prints it."""
        d = definitions(self.target, self.ci_method)
        aim = f"→ {self.target}" if self.target else "misclassified"
        table = self.mcnemar.table
        rows = [
            Measure("accuracy_clean", "accuracy, clean images", self.accuracy_clean, d["accuracy_clean"]),
            Measure("accuracy_adv", "accuracy, adversarial images", self.accuracy_adv, d["accuracy_adv"]),
            Measure(
                "mcnemar_p",
                "McNemar test, exact",
                self.mcnemar.p_value,
                d["mcnemar"],
                ("mcnemar", "exact", "p_value"),
                "p",
            ),
            Measure(
                "mcnemar_chi2_p",
                "McNemar test, chi-square with continuity correction",
                self.mcnemar_chi2.p_value if self.mcnemar_chi2 else 1.0,
                d["mcnemar"],
                ("mcnemar", "chi2", "p_value"),
                "p",
            ),
            Measure(
                "mcnemar_discordant",
                "discordant pairs: right → wrong / wrong → right (clean → adversarial)",
                f"{table[0][1]} / {table[1][0]}",
                d["mcnemar"],
                ("mcnemar", "table"),
            ),
        ]
        for c, share in self.fooling_ratio.items():
            if self.per_class[c].n:
                rows.append(Measure(f"fooling_ratio.{c}", f"fooling ratio, {c} ({aim})", share, d["fooling_ratio"]))
        rows.append(
            Measure(
                "fooling_ratio_all",
                f"fooling ratio, all images ({aim})",
                self.fooling_ratio_all,
                d["fooling_ratio_all"],
            )
        )
        if self.worst_class is not None:
            label = f"worst-class fooling ratio ({self.worst_class})"
            pointer = ("fooling_ratio", self.worst_class)
            rows.append(
                Measure(
                    "worst_class_fooling_ratio",
                    label,
                    self.worst_class_fooling_ratio,
                    d["worst_class_fooling_ratio"],
                    pointer,
                )
            )
        if self.targeted_success is not None:
            label = f"targeted success (right when clean, not {self.target})"
            rows.append(Measure("targeted_success", label, self.targeted_success, d["targeted_success"]))
        rows += [
            Measure(
                "untargeted_success",
                "untargeted success (right when clean → wrong)",
                self.untargeted_success,
                d["untargeted_success"],
            ),
            Measure("flip_rate", "flip rate (adversarial ≠ clean prediction)", self.flip_rate, d["flip_rate"]),
        ]
        if self.inmem_n_differ is not None:
            label = "saved PNG vs in-memory prediction differ (images)"
            rows.append(
                Measure(
                    "inmem_n_differ", label, self.inmem_n_differ, d["inmem_agreement"], ("inmem_agreement", "n_differ")
                )
            )
        if self.imperceptibility is not None:
            identical = self.size("psnr", "n_identical")
            for name, label, measure, statistic, fmt in (
                ("linf_255_median", "L∞ (8-bit steps), median", "linf_255", "median", "g"),
                ("linf_255_max", "L∞ (8-bit steps), largest", "linf_255", "max", "g"),
                ("l2_mean", "L2 ([0, 1] scale), mean", "l2", "mean", ".3f"),
                ("l0_mean", "L0 (pixels changed), mean", "l0", "mean", ".0f"),
                (
                    "psnr_mean",
                    "PSNR (dB), mean" + (f", {identical} identical images left out" if identical else ""),
                    "psnr",
                    "mean",
                    ".1f",
                ),
                ("psnr_min", "PSNR (dB), lowest", "psnr", "min", ".1f"),
                ("ssim_mean", "SSIM, mean", "ssim", "mean", ".4f"),
                ("ssim_min", "SSIM, lowest", "ssim", "min", ".4f"),
            ):
                value = self.size(measure, statistic)
                rows.append(Measure(name, label, value, d[measure], ("imperceptibility", measure, statistic), fmt))
        if self.n_over_budget is not None:
            label = "images over the budget (beyond 8-bit rounding)"
            rows.append(Measure("n_over_budget", label, self.n_over_budget, d["n_over_budget"]))
        return rows

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``attack_metrics.json``."""
        sized = self.imperceptibility is not None
        chi2 = self.mcnemar_chi2
        out: dict[str, Any] = {"attack": self.attack} if self.attack else {}
        out |= {
            "n": self.n,
            "classes": list(self.classes),
            "target": self.target,
            "targeted": self.target is not None,
            "ci_method": self.ci_method,
            "accuracy_clean": self.accuracy_clean.as_dict(),
            "accuracy_adv": self.accuracy_adv.as_dict(),
            "mcnemar": {
                "table": self.mcnemar.table,
                "table_rows": ["clean correct", "clean wrong"],
                "table_columns": ["adv correct", "adv wrong"],
                "exact": {"statistic": self.mcnemar.statistic, "p_value": self.mcnemar.p_value},
                "chi2": {"statistic": chi2.statistic if chi2 else None, "p_value": chi2.p_value if chi2 else 1.0},
            },
            "fooling_ratio": {c: iv.as_dict() for c, iv in self.fooling_ratio.items()},
            "fooling_ratio_all": self.fooling_ratio_all.as_dict(),
            "worst_class_fooling_ratio": (
                {"class": self.worst_class, **self.fooling_ratio[self.worst_class].as_dict()}
                if self.worst_class is not None
                else None
            ),
            "targeted_success": self.targeted_success.as_dict() if self.targeted_success else None,
            "untargeted_success": self.untargeted_success.as_dict(),
            "flip_rate": self.flip_rate.as_dict(),
            "confusion_adv": self.confusion_adv,
            "confusion_clean": self.confusion_clean,
            "per_class": {
                c: {k: v for k, v in asdict(r).items() if sized or k not in _SIZE_KEYS}
                for c, r in self.per_class.items()
            },
            "inmem_agreement": (
                {
                    "n_differ": self.inmem_n_differ,
                    "share_differ": self.inmem_n_differ / self.n if self.n else float("nan"),
                }
                if self.inmem_n_differ is not None
                else None
            ),
        }
        if sized:
            out |= {
                "imperceptibility": self.imperceptibility,
                "eps_255": self.eps_255,
                "n_over_budget": self.n_over_budget,
            }
        out["definitions"] = definitions(self.target, self.ci_method)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackMetrics:
        """Read the JSON form back (``KeyError``/``TypeError`` on a file that is not one)."""
        mc = d["mcnemar"]
        exact, chi2 = mc["exact"], mc["chi2"]
        optional = {k: d.get(k) for k in ("imperceptibility", "eps_255", "n_over_budget")}
        worst = d.get("worst_class_fooling_ratio")
        return cls(
            n=int(d["n"]),
            classes=tuple(d["classes"]),
            target=d["target"],
            ci_method=str(d["ci_method"]),
            accuracy_clean=Interval.from_dict(d["accuracy_clean"]),
            accuracy_adv=Interval.from_dict(d["accuracy_adv"]),
            mcnemar=McNemarResult(exact["statistic"], exact["p_value"], True, mc["table"]),
            mcnemar_chi2=(
                McNemarResult(chi2["statistic"], chi2["p_value"], False, mc["table"])
                if chi2["statistic"] is not None
                else None
            ),
            fooling_ratio={c: Interval.from_dict(iv) for c, iv in d["fooling_ratio"].items()},
            fooling_ratio_all=Interval.from_dict(d["fooling_ratio_all"]),
            worst_class=worst["class"] if worst else None,
            targeted_success=Interval.from_dict(d["targeted_success"]) if d.get("targeted_success") else None,
            untargeted_success=Interval.from_dict(d["untargeted_success"]),
            flip_rate=Interval.from_dict(d["flip_rate"]),
            confusion_adv=d["confusion_adv"],
            confusion_clean=d["confusion_clean"],
            per_class={c: ClassResult.from_dict(r) for c, r in d["per_class"].items()},
            inmem_n_differ=(d.get("inmem_agreement") or {}).get("n_differ"),
            attack=d.get("attack") or {},
            **optional,
        )


def _eps_255(eps: Any) -> float | None:
    if eps is None:
        return None
    try:
        return float(Fraction(str(eps))) * 255.0 if isinstance(eps, str) else float(eps) * 255.0
    except (ValueError, ZeroDivisionError):
        return None


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def attack_metrics(
    labels: np.ndarray,
    clean_preds: np.ndarray,
    adv_preds: np.ndarray,
    *,
    classes: Sequence[str] = CLASSES,
    target: str | None,
    sizes: PerturbationSizes | None = None,
    inmem_adv_preds: np.ndarray | None = None,
    eps: float | str | None = None,
    ci_method: CIMethod = DEFAULT_CI,
) -> AttackMetrics:
    """The paper's measures for one attacked set, from class indices.

    Args:
        labels, clean_preds, adv_preds: true class and predictions on the clean and adversarial images (indices).
        target: the target dx code, or ``None`` for an untargeted attack.
        sizes: per-image perturbation sizes (:func:`measure_perturbations`), if measured.
        inmem_adv_preds: predictions on the in-memory adversarial images, to compare with the saved ones.
        eps: the attack's L∞ budget on the [0, 1] scale, to count images over budget.
    """
    classes = tuple(classes)
    labels, clean_preds, adv_preds = (np.asarray(a, dtype=np.int64) for a in (labels, clean_preds, adv_preds))
    n = int(labels.shape[0])
    target_index = classes.index(target) if target is not None else None
    correct_clean = clean_preds == labels
    correct_adv = adv_preds == labels
    fooled = adv_preds == target_index if target_index is not None else adv_preds != labels

    def ci(k: int | np.integer, m: int | np.integer) -> Interval:
        return proportion_ci(int(k), int(m), method=ci_method)

    per_class: dict[str, ClassResult] = {}
    for i, c in enumerate(classes):
        mask = labels == i
        m = int(mask.sum())
        shares = (ci(correct_clean[mask].sum(), m), ci(correct_adv[mask].sum(), m), ci(fooled[mask].sum(), m))
        if sizes is None:
            per_class[c] = ClassResult(m, *shares)
            continue
        per_class[c] = ClassResult(
            m,
            *shares,
            linf_255_max=int(sizes.linf_255[mask].max()) if m else None,
            l2_mean=_mean_finite(sizes.l2[mask]),
            l0_mean=_mean_finite(sizes.l0[mask].astype(np.float64)),
            psnr_mean=_mean_finite(sizes.psnr[mask]),
            ssim_mean=_mean_finite(sizes.ssim[mask]),
        )
    present = [c for c in classes if per_class[c].n > 0]
    worst = min(present, key=lambda c: per_class[c].fooling_ratio.estimate) if present else None
    targeted = None
    if target_index is not None:
        eligible = correct_clean & (labels != target_index)
        targeted = ci((adv_preds[eligible] == target_index).sum(), eligible.sum())
    confusion_adv = np.zeros((len(classes), len(classes)), dtype=np.int64)
    confusion_clean = np.zeros_like(confusion_adv)
    np.add.at(confusion_adv, (labels, adv_preds), 1)
    np.add.at(confusion_clean, (labels, clean_preds), 1)
    exact = mcnemar_test(correct_clean, correct_adv, exact=True)
    chi2 = None
    if exact.table[0][1] + exact.table[1][0]:  # the chi-square is undefined without discordant pairs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            chi2 = mcnemar_test(correct_clean, correct_adv, exact=False)
    budget = _eps_255(eps)
    return AttackMetrics(
        n=n,
        classes=classes,
        target=target,
        ci_method=ci_method,
        accuracy_clean=ci(correct_clean.sum(), n),
        accuracy_adv=ci(correct_adv.sum(), n),
        mcnemar=exact,
        mcnemar_chi2=chi2,
        fooling_ratio={c: per_class[c].fooling_ratio for c in classes},
        fooling_ratio_all=ci(fooled.sum(), n),
        worst_class=worst,
        targeted_success=targeted,
        untargeted_success=ci((~correct_adv[correct_clean]).sum(), correct_clean.sum()),
        flip_rate=ci((adv_preds != clean_preds).sum(), n),
        confusion_adv=confusion_adv.tolist(),
        confusion_clean=confusion_clean.tolist(),
        per_class=per_class,
        inmem_n_differ=(
            int((np.asarray(inmem_adv_preds, dtype=np.int64) != adv_preds).sum())
            if inmem_adv_preds is not None
            else None
        ),
        imperceptibility=summarise_sizes(sizes) if sizes is not None else None,
        eps_255=budget if sizes is not None else None,
        n_over_budget=int((sizes.linf_255 > budget + 0.5).sum()) if sizes is not None and budget is not None else None,
    )

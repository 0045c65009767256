"""The paper's measures for one attacked set, typed: :class:`AttackMetrics` and its table of :class:`Measure` rows.

The table (:meth:`AttackMetrics.measures`) is the one that ``evaluate-attack``, ``reproduce``'s paper table and
the report all print; its JSON form (:meth:`AttackMetrics.as_dict`) is ``attack_metrics.json``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np

from dermadv.data.classes import CLASSES
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.imperceptibility import PerturbationSizes, summarise_sizes
from dermadv.evaluation.stats import (
    DEFAULT_CI,
    CIMethod,
    McNemarResult,
    format_value,
    mcnemar_test,
    proportion_ci,
)
from dermadv.proportions import Proportion, worst_class

_SIZE_KEYS = ("linf_255_max", "l2_mean", "l0_mean", "psnr_mean", "ssim_mean")


@dataclass(frozen=True)
class Measure:
    """One row of a results table: its name (a key of ``summary.json``), words, value and definition.

    ``value`` is a :class:`Proportion` for a share, else a number (or text); ``pointer`` names the keys where
    ``attack_metrics.json`` holds it.
    """

    name: str
    label: str
    value: Proportion | float | int | str | None
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
    accuracy_clean: Proportion
    accuracy_adv: Proportion
    fooling_ratio: Proportion
    linf_255_max: int | None = None
    l2_mean: float | None = None
    l0_mean: float | None = None
    psnr_mean: float | None = None
    ssim_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, each share as its interval (``{estimate, low, high, method}``)."""
        return {
            f.name: v.to_dict(form="interval") if isinstance(v, Proportion) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassResult:
        values: dict[str, Any] = {k: d.get(k) for k in _SIZE_KEYS}
        values |= {k: Proportion.from_dict(d[k]) for k in ("accuracy_clean", "accuracy_adv", "fooling_ratio")}
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
    accuracy_clean: Proportion
    accuracy_adv: Proportion
    mcnemar: McNemarResult  # exact binomial
    mcnemar_chi2: McNemarResult | None  # None without discordant pairs (statistic undefined, P = 1)
    fooling_ratio: dict[str, Proportion]
    fooling_ratio_all: Proportion
    worst_class: str | None  # the class with the smallest fooling ratio among those with images
    targeted_success: Proportion | None
    untargeted_success: Proportion
    flip_rate: Proportion
    confusion_adv: list[list[int]]
    confusion_clean: list[list[int]]
    per_class: dict[str, ClassResult]
    inmem_n_differ: int | None = None
    imperceptibility: dict[str, dict[str, Any]] | None = None  # summaries of linf_255, l2, l0, psnr, ssim
    eps_255: float | None = None
    n_over_budget: int | None = None
    attack: AttackInfo | None = None  # the folder's attack.json

    @property
    def worst_class_fooling_ratio(self) -> Proportion | None:
        return self.fooling_ratio[self.worst_class] if self.worst_class is not None else None

    def size(self, measure: str, statistic: str) -> Any:
        """A summary of the perturbation sizes, e.g. ``size("psnr", "mean")``; ``None`` when not measured."""
        return (self.imperceptibility or {}).get(measure, {}).get(statistic)

    def measures(self) -> list[Measure]:
        """The paper's table for this run, in the order every view prints it."""
        d = definitions(self.target, self.ci_method)
        aim = f"→ {self.target}" if self.target else "misclassified"
        rows: list[Measure] = []

        def add(
            name: str, label: str, value: Any, key: str = "", pointer: tuple[str, ...] = (), fmt: str = "g"
        ) -> None:
            rows.append(Measure(name, label, value, d[key or name.split(".")[0]], pointer, fmt))

        add("accuracy_clean", "accuracy, clean images", self.accuracy_clean)
        add("accuracy_adv", "accuracy, adversarial images", self.accuracy_adv)
        add("mcnemar_p", "McNemar test, exact", self.mcnemar.p_value, "mcnemar", ("mcnemar", "exact", "p_value"), "p")
        chi2_p, chi2_at = self.mcnemar_chi2.p_value if self.mcnemar_chi2 else 1.0, ("mcnemar", "chi2", "p_value")
        add("mcnemar_chi2_p", "McNemar test, chi-square with continuity correction", chi2_p, "mcnemar", chi2_at, "p")
        t, pairs = self.mcnemar.table, "discordant pairs: right → wrong / wrong → right (clean → adversarial)"
        add("mcnemar_discordant", pairs, f"{t[0][1]} / {t[1][0]}", "mcnemar", ("mcnemar", "table"))
        for c, share in self.fooling_ratio.items():
            if self.per_class[c].n:
                add(f"fooling_ratio.{c}", f"fooling ratio, {c} ({aim})", share)
        add("fooling_ratio_all", f"fooling ratio, all images ({aim})", self.fooling_ratio_all)
        if self.worst_class is not None:
            worst, at = f"worst-class fooling ratio ({self.worst_class})", ("fooling_ratio", self.worst_class)
            add("worst_class_fooling_ratio", worst, self.worst_class_fooling_ratio, pointer=at)
        if self.targeted_success is not None:
            add("targeted_success", f"targeted success (right when clean, not {self.target})", self.targeted_success)
        add("untargeted_success", "untargeted success (right when clean → wrong)", self.untargeted_success)
        add("flip_rate", "flip rate (adversarial ≠ clean prediction)", self.flip_rate)
        if self.inmem_n_differ is not None:
            differ, at = "saved PNG vs in-memory prediction differ (images)", ("inmem_agreement", "n_differ")
            add("inmem_n_differ", differ, self.inmem_n_differ, "inmem_agreement", at)
        identical = self.size("psnr", "n_identical")
        sizes = (
            ("linf_255", "median", "L∞ (8-bit steps), median", "g"),
            ("linf_255", "max", "L∞ (8-bit steps), largest", "g"),
            ("l2", "mean", "L2 ([0, 1] scale), mean", ".3f"),
            ("l0", "mean", "L0 (pixels changed), mean", ".0f"),
            (
                "psnr",
                "mean",
                "PSNR (dB), mean" + (f", {identical} identical images left out" if identical else ""),
                ".1f",
            ),
            ("psnr", "min", "PSNR (dB), lowest", ".1f"),
            ("ssim", "mean", "SSIM, mean", ".4f"),
            ("ssim", "min", "SSIM, lowest", ".4f"),
        )
        for measure, stat, label, fmt in sizes if self.imperceptibility is not None else ():
            add(f"{measure}_{stat}", label, self.size(measure, stat), measure, ("imperceptibility", measure, stat), fmt)
        if self.n_over_budget is not None:
            add("n_over_budget", "images over the budget (beyond 8-bit rounding)", self.n_over_budget)
        return rows

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``attack_metrics.json``."""
        sized, chi2, worst, differ = (
            self.imperceptibility is not None,
            self.mcnemar_chi2,
            self.worst_class,
            self.inmem_n_differ,
        )
        out: dict[str, Any] = {"attack": self.attack.to_dict()} if self.attack is not None else {}
        out |= {
            "n": self.n,
            "classes": list(self.classes),
            "target": self.target,
            "targeted": self.target is not None,
            "ci_method": self.ci_method,
            "accuracy_clean": self.accuracy_clean.to_dict(form="interval"),
            "accuracy_adv": self.accuracy_adv.to_dict(form="interval"),
            "mcnemar": {
                "table": self.mcnemar.table,
                "table_rows": ["clean correct", "clean wrong"],
                "table_columns": ["adv correct", "adv wrong"],
                "exact": {"statistic": self.mcnemar.statistic, "p_value": self.mcnemar.p_value},
                "chi2": {"statistic": chi2.statistic if chi2 else None, "p_value": chi2.p_value if chi2 else 1.0},
            },
            "fooling_ratio": {c: iv.to_dict(form="interval") for c, iv in self.fooling_ratio.items()},
            "fooling_ratio_all": self.fooling_ratio_all.to_dict(form="interval"),
            "worst_class_fooling_ratio": {"class": worst, **self.fooling_ratio[worst].to_dict(form="interval")}
            if worst
            else None,
            "targeted_success": self.targeted_success.to_dict(form="interval") if self.targeted_success else None,
            "untargeted_success": self.untargeted_success.to_dict(form="interval"),
            "flip_rate": self.flip_rate.to_dict(form="interval"),
            "confusion_adv": self.confusion_adv,
            "confusion_clean": self.confusion_clean,
            "per_class": {
                c: {k: v for k, v in r.to_dict().items() if sized or k not in _SIZE_KEYS}
                for c, r in self.per_class.items()
            },
            "inmem_agreement": None
            if differ is None
            else {"n_differ": differ, "share_differ": differ / self.n if self.n else float("nan")},
        }
        if sized:
            out |= {k: getattr(self, k) for k in ("imperceptibility", "eps_255", "n_over_budget")}
        out["definitions"] = definitions(self.target, self.ci_method)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackMetrics:
        """Read the JSON form back (``KeyError``/``TypeError`` on a file that is not one)."""
        mc = d["mcnemar"]
        exact, chi2 = mc["exact"], mc["chi2"]
        worst = d.get("worst_class_fooling_ratio")
        return cls(
            n=int(d["n"]),
            classes=tuple(d["classes"]),
            target=d["target"],
            ci_method=str(d["ci_method"]),
            accuracy_clean=Proportion.from_dict(d["accuracy_clean"]),
            accuracy_adv=Proportion.from_dict(d["accuracy_adv"]),
            mcnemar=McNemarResult(exact["statistic"], exact["p_value"], True, mc["table"]),
            mcnemar_chi2=(
                McNemarResult(chi2["statistic"], chi2["p_value"], False, mc["table"])
                if chi2["statistic"] is not None
                else None
            ),
            fooling_ratio={c: Proportion.from_dict(iv) for c, iv in d["fooling_ratio"].items()},
            fooling_ratio_all=Proportion.from_dict(d["fooling_ratio_all"]),
            worst_class=worst["class"] if worst else None,
            targeted_success=Proportion.from_dict(d["targeted_success"]) if d.get("targeted_success") else None,
            untargeted_success=Proportion.from_dict(d["untargeted_success"]),
            flip_rate=Proportion.from_dict(d["flip_rate"]),
            confusion_adv=d["confusion_adv"],
            confusion_clean=d["confusion_clean"],
            per_class={c: ClassResult.from_dict(r) for c, r in d["per_class"].items()},
            inmem_n_differ=(d.get("inmem_agreement") or {}).get("n_differ"),
            attack=AttackInfo.from_dict(d["attack"]) if isinstance(d.get("attack"), Mapping) and d["attack"] else None,
            **{k: d.get(k) for k in ("imperceptibility", "eps_255", "n_over_budget")},
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

    def ci(k: int | np.integer, m: int | np.integer) -> Proportion:
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
    worst = worst_class(
        {c: Proportion.counted(int(fooled[labels == i].sum()), per_class[c].n) for i, c in enumerate(classes)}
    )
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

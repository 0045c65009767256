"""The report's opening: paragraphs in words and the table measure | paper | this run, each value traced to its file."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dermadv.data.classes import CLASS_NAMES
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.evaluation.metrics import ClassificationReport
from dermadv.evaluation.stats import format_interval, format_p_value
from dermadv.observer.analysis import StudyAnalysis
from dermadv.paper import FOOLING_RATIO_EVERY_CLASS, OBSERVER_SENSITIVITY, OBSERVER_SPECIFICITY, PAPER, paper_value
from dermadv.proportions import Proportion
from dermadv.report.data import AttackPart, ClassifierPart, DataPart, Link, ObserverPart, PaperRow, SweepPart
from dermadv.report.format import eps_text, interval_text, md_cell, num, percent

Display = Callable[[Any], str]
Spec = tuple[str, str, tuple[str, ...], Display]  # key, label, pointer into the JSON file, display

#: the attack measures the paper's table shows, with the label they carry there (None: the measure's own)
_ATTACK_ROWS: dict[str, str | None] = {
    "accuracy_clean": "accuracy, clean test images (95% CI, {ci})",
    "accuracy_adv": "accuracy, perturbed test images",
    "mcnemar_p": "McNemar test (exact binomial)",
    "fooling_ratio": "fooling ratio, {cls}",
    **dict.fromkeys(
        ("worst_class_fooling_ratio", "inmem_n_differ", "linf_255_max", "l2_mean", "psnr_mean", "ssim_mean")
    ),
}


def _signed(fmt: str) -> Display:
    return lambda v: num(v, fmt).replace("-", "−")


#: the observers' combined shares the paper's table shows: key, label, and the share's key in ``analysis.json``
_OBSERVER_SHARES = (
    ("observer_sensitivity", "observers' sensitivity (perturbed called perturbed), combined", "sensitivity"),
    ("observer_specificity", "observers' specificity (clean called clean), combined", "specificity"),
    ("observer_altered_chosen", "observers chose the altered image (2AFC), combined", "altered_chosen"),
)


def _value_at(obj: Any, pointer: tuple[str, ...]) -> Any:
    for key in pointer:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _rows(specs: Sequence[Spec], source: dict[str, Any], link: Link | None, group: str = "result") -> list[PaperRow]:
    rows = []
    for key, label, pointer, display in specs:
        value = _value_at(source, pointer)
        if value is not None:
            rows.append(PaperRow(key, label, paper_value(key), display(value), value, link, pointer, group))
    return rows


def _classifier_rows(metrics: ClassificationReport, link: Link | None, *, accuracy: bool) -> list[PaperRow]:
    """Balanced accuracy and macro AUC (``accuracy``: and accuracy first), each where defined, as ``metrics.json``
    holds it."""
    rows = []
    if accuracy:
        ci = (metrics.accuracy.method or "wald").capitalize()
        rows.append(
            PaperRow(
                "accuracy_clean",
                f"accuracy, clean test images (95% CI, {ci})",
                paper_value("accuracy_clean"),
                interval_text(metrics.accuracy),
                metrics.accuracy.to_dict(form="interval"),
                link,
                ("accuracy",),
            )
        )
    rates: tuple[tuple[str, str, float, Display], ...] = (
        ("balanced_accuracy", "balanced accuracy, clean test images", metrics.balanced_accuracy, percent),
        ("macro_auc", "macro ROC AUC, one vs rest", metrics.macro_auc, lambda v: num(v, ".3f")),
    )
    for key, label, rate, display in rates:
        if not math.isnan(rate):
            rows.append(PaperRow(key, label, paper_value(key), display(rate), rate, link, (key,)))
    return rows


def _kappa(analysis: StudyAnalysis) -> float | None:
    """The observers' agreement; None with one observer, or where it is undefined."""
    agreement = analysis.agreement
    return None if agreement is None or math.isnan(agreement.kappa) else agreement.kappa


def _combined_shares(analysis: StudyAnalysis) -> dict[str, Proportion]:
    """The combined row's shares by their key in ``analysis.json``: detection rates (single design) or the share
    of altered images chosen (2AFC)."""
    combined = analysis.combined
    shares: dict[str, Proportion] = {}
    if combined.detection is not None:
        shares |= {"sensitivity": combined.detection.sensitivity, "specificity": combined.detection.specificity}
    if combined.forced_choice is not None:
        shares["altered_chosen"] = combined.forced_choice.correct
    return shares


def _observer_rows(analysis: StudyAnalysis, link: Link | None) -> list[PaperRow]:
    """The combined shares and the agreement, each as ``analysis.json`` holds it."""
    shares = _combined_shares(analysis)
    rows = []
    for key, label, name in _OBSERVER_SHARES:
        if name in shares:
            share = shares[name]
            value = share.to_dict(form="both")
            rows.append(PaperRow(key, label, paper_value(key), interval_text(share), value, link, ("combined", name)))
    kappa = _kappa(analysis)
    if kappa is not None:
        key, label, display = "observer_kappa", "agreement between observers (kappa)", _signed(".2f")(kappa)
        rows.append(PaperRow(key, label, paper_value(key), display, kappa, link, ("agreement", "kappa")))
    return rows


def _attack_rows(metrics: AttackMetrics, link: Link | None) -> list[PaperRow]:
    """The attack's measures (:meth:`AttackMetrics.measures`) that the paper's table shows."""
    rows = []
    for m in metrics.measures():
        key, _, cls = m.name.partition(".")
        if key in _ATTACK_ROWS:
            label = (_ATTACK_ROWS[key] or m.label).format(ci=metrics.ci_method.capitalize(), cls=cls)
            rows.append(PaperRow(m.name, label, paper_value(key), m.text, m.value, link, m.pointer))
    return rows


def split_method(part: DataPart) -> str | None:
    """The split method in words, checked against ``split.csv``: lesion-grouped or not."""
    if part.n_lesions and part.shared_lesions == 0:
        return f"grouped by lesion: {part.n_lesions} lesions, none with images in more than one split"
    if part.n_lesions:
        return (
            f"NOT grouped by lesion: {part.shared_lesions} of {part.n_lesions} lesions have images in more than one "
            "split, so test images may show lesions seen in training"
        )
    return "unknown (no lesion_id column in the split file)" if part.split_link else None


def setting_rows(
    classifier: ClassifierPart | None, attack: AttackPart | None, split_method: str | None, split_link: Link | None
) -> list[PaperRow]:
    """What the paper left unreported (size, split, budget) next to this run's choice."""
    rows: list[PaperRow] = []
    if classifier is not None and classifier.manifest_link is not None:
        init = "from scratch" if classifier.config.get("weights") in (None, "none") else "ImageNet-pretrained"
        specs: list[Spec] = [
            ("arch", "architecture", ("config", "arch"), lambda v: f"{v} ({init})"),
            ("image_size", "image size", ("config", "image_size"), lambda v: f"{v} px"),
        ]
        rows += _rows(specs, {"config": classifier.config}, classifier.manifest_link, "setting")
    if split_method is not None:
        rows.append(PaperRow("split", "split", PAPER["split"], split_method, None, split_link, (), "setting"))
    if attack is not None:
        specs = [
            ("eps", "perturbation budget (L∞)", ("eps",), lambda v: eps_text(255 * v)),
            ("target", "target class", ("target",), str),
        ]
        rows += _rows(specs, attack.attack.to_dict(), attack.attack_link, "setting")
        if attack.generator is not None:
            fit = [("fit_on", "generator fitted on", ("config", "fit_on"), lambda v: f"the {v} split")]
            rows += _rows(fit, {"config": attack.generator}, attack.generator_link, "setting")
    return rows


def inmem_statement(metrics: AttackMetrics) -> str:
    """One sentence on whether rounding the adversarial images to 8-bit PNGs changed any prediction."""
    differ, n = metrics.inmem_n_differ, metrics.n
    if differ is None:
        return (
            "This attack folder holds no in-memory predictions (inmem_adv_pred), so whether saving the adversarial "
            "images as 8-bit PNGs changed any prediction cannot be stated."
        )
    if differ == 0:
        return (
            f"Predictions on the saved 8-bit PNGs equal those on the in-memory (floating-point) adversarial images "
            f"for all {n} images: rounding to 8 bits changed no outcome."
        )
    return (
        f"For {differ} of {n} images ({100 * differ / n:.1f}%) the prediction on the saved 8-bit "
        "PNG differs from the one on the in-memory adversarial image; every figure here is computed from the saved "
        "PNGs, the images a person or a hospital system would see."
    )


def summary_measures(
    classifier: ClassifierPart | None, attack: AttackPart | None, observer: ObserverPart | None
) -> list[PaperRow]:
    """The side-by-side table; a measure whose file or key is missing is left out."""
    rows: list[PaperRow] = []
    am = attack.metrics if attack else None
    cm = classifier.metrics if classifier else None
    if am is not None and attack is not None:
        rows += _attack_rows(am, attack.metrics_link)
    if cm is not None and classifier is not None:
        rows += _classifier_rows(cm, classifier.metrics_link, accuracy=am is None)
    if observer is not None and observer.analysis is not None:
        rows += _observer_rows(observer.analysis, observer.analysis_link)
    elif observer is not None:
        label = "observers' sensitivity / specificity / kappa"
        text = "study kit ready, no answers yet"
        rows.append(PaperRow("observer_study", label, PAPER["observer_study"], text, None, observer.study_link, ()))
    return rows


def _source_phrase(source: str | None) -> str:
    if not source:
        return "the data"
    if source.startswith("synthetic"):
        return "the built-in synthetic data set (not dermatoscopic images)"
    return f"{source} images"


def _classifier_text(clf: ClassifierPart, data_source: str | None) -> str:
    cfg = clf.config
    weights = "ImageNet-pretrained" if cfg.get("weights") else "trained from scratch"
    size = f" at {cfg['image_size']} px" if cfg.get("image_size") else ""
    text = f"A {cfg.get('arch', '')} classifier ({weights}{size}) was trained on {_source_phrase(data_source)}"
    cm = clf.metrics
    if cm is not None:
        text += (
            f" and evaluated on {cm.n} held-out test images: accuracy {interval_text(cm.accuracy)}, "
            f"balanced accuracy {percent(cm.balanced_accuracy)}, macro AUC {num(cm.macro_auc, '.3f')}"
        )
    return text.replace("A  classifier", "A classifier") + "."


def _attack_text(attack: AttackPart) -> str:
    a, am = attack.attack, attack.metrics
    target = a.target
    aim = f"targeted at {target} ({CLASS_NAMES.get(target, target)})" if target else "untargeted"
    eps = f" with an L∞ budget of {eps_text(attack.eps_255)}" if attack.eps_255 else ""
    method, n_images = a.method or "attack", a.n_images if a.n_images is not None else "the"
    text = f"The {method} attack, {aim}{eps}, was applied to {n_images} test images"
    if attack.unfinished:
        saved = f"{attack.images_saved} of" if attack.images_saved is not None else "some of"
        text = (
            f"The {method} attack, {aim}{eps}, was started on {n_images} test "
            f"images but its run was {attack.status}: it saved {saved} them, and what is shown of it is partial."
        )
        return text
    trained = a.training_images_attacked
    if trained is not None and trained > 0:
        text += f" ({trained} of them were images the classifier was trained on: not a held-out measure)"
    if am is None:
        return text + "; it has not been evaluated yet (`dermadv evaluate-attack`)."
    text += (
        f" and scored on the saved 8-bit PNGs: accuracy went from {format_interval(am.accuracy_clean)} to "
        f"{format_interval(am.accuracy_adv)} (McNemar {format_p_value(am.mcnemar.p_value)})."
    )
    fooling = {c: v.estimate for c, v in am.fooling_ratio.items() if am.per_class[c].n}
    if fooling and target:
        lo, hi = min(fooling, key=fooling.__getitem__), max(fooling, key=fooling.__getitem__)
        text += (
            f" Per true class, the share of adversarial images predicted {target} ranged from "
            f"{percent(fooling[lo])} ({lo}) to {percent(fooling[hi])} ({hi}); the paper reported {FOOLING_RATIO_EVERY_CLASS}."
        )
    if am.imperceptibility is not None:
        text += (
            f" Mean PSNR {num(am.size('psnr', 'mean'), '.1f')} dB, mean SSIM {num(am.size('ssim', 'mean'), '.4f')}, "
            f"largest change {eps_text(am.size('linf_255', 'max'))}."
        )
    return text + " " + inmem_statement(am)


def _sweep_text(sweep: SweepPart) -> str:
    table = sweep.table
    methods = sorted(set(table["method"].astype(str)))
    budgets = ", ".join(eps_text(v) for v in sorted(set(table["eps_255"].dropna())))
    return f"Robustness curves compare {' and '.join(methods)} at ε = {budgets}."


def _observer_text(observer: ObserverPart) -> str:
    a = observer.analysis
    shares = _combined_shares(a) if a is not None else {}
    who = f"{len(a.observers)} observers rated {a.n_items} items" if a is not None else ""
    if a is not None and "sensitivity" in shares:
        kappa = _kappa(a)
        return (
            f"In the observer study, {who}: combined sensitivity for spotting perturbed images "
            f"{interval_text(shares['sensitivity'])}, specificity {interval_text(shares['specificity'])}"
            + (f", kappa {_signed('.2f')(kappa)}." if kappa is not None else ".")
            + f" The paper found {OBSERVER_SENSITIVITY.estimate} and {OBSERVER_SPECIFICITY.estimate}: detection at chance."
        )
    if "altered_chosen" in shares:
        return (
            f"In the observer study, {who}: the altered image was chosen in {interval_text(shares['altered_chosen'])}."
        )
    return "An observer-study kit is ready in the run folder; it has no answers yet."


def summary_paragraphs(
    data_source: str | None,
    classifier: ClassifierPart | None,
    attack: AttackPart | None,
    sweep: SweepPart | None,
    observer: ObserverPart | None,
) -> list[str]:
    """The summary in words, one paragraph per part present."""
    parts = []
    if classifier is not None:
        parts.append(_classifier_text(classifier, data_source))
    if attack is not None:
        parts.append(_attack_text(attack))
    if sweep is not None:
        parts.append(_sweep_text(sweep))
    if observer is not None:
        parts.append(_observer_text(observer))
    return parts


@dataclass(frozen=True)
class Cell:
    """One cell of a table as text, with the file its value was read from (``None``: a label or the paper's)."""

    text: str
    link: Link | None = None


@dataclass(frozen=True)
class TableRow:
    cells: tuple[Cell, ...]
    heading: str | None = None  # the name of a group of rows, on the group's first row ("settings")


@dataclass(frozen=True)
class Table:
    """A table as text: what the HTML and Markdown reports, ``paper_table.md`` and the CLI's table all draw."""

    header: tuple[str, ...]
    rows: tuple[TableRow, ...]

    def records(self) -> list[dict[str, str]]:
        """One dict per row, keyed by the header with ``_`` for spaces (``paper_table.json``)."""
        keys = [h.replace(" ", "_") for h in self.header]
        return [{k: c.text for k, c in zip(keys, row.cells, strict=True)} for row in self.rows]

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, str]], keys: Sequence[str]) -> Table:
        """The columns ``keys`` of :meth:`records`' output (no links, no headings)."""
        rows = tuple(TableRow(tuple(Cell(r[k]) for k in keys)) for r in records)
        return cls(tuple(k.replace("_", " ") for k in keys), rows)


def tabulate_measures(rows: Sequence[PaperRow], *, paper_column: str = "paper", source: bool = False) -> Table:
    """The table measure | paper | this run (``source``: and the file each value was read from, ``.`` for none);
    the settings rows open with the heading ``settings``."""
    header = ("measure", paper_column, "this run", *(("source",) if source else ()))
    table = []
    for i, m in enumerate(rows):
        starts_settings = m.group == "setting" and (i == 0 or rows[i - 1].group != "setting")
        cells: tuple[Cell, ...] = (Cell(m.label), Cell(m.paper), Cell(m.display, m.link))
        if source:
            cells += (Cell(m.link.path if m.link else "."),)
        table.append(TableRow(cells, "settings" if starts_settings else None))
    return Table(header, tuple(table))


def markdown_table(table: Table, *, code: Sequence[str] = ()) -> str:
    """``table`` as a Markdown table of plain text (the columns ``code`` as inline code), without headings."""
    quoted = [h in code for h in table.header]
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    for row in table.rows:
        texts = [f"`{md_cell(c.text)}`" if q else md_cell(c.text) for c, q in zip(row.cells, quoted, strict=True)]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"

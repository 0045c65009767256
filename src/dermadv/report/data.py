"""What a report shows: the parts read from a run folder, as frozen dataclasses, and the files it cites."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from dermadv.defences.results import CardResult, CertifyResult, DetectResult, TransformsResult
from dermadv.errors import RunError
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.evaluation.metrics import ClassificationReport
from dermadv.observer.analysis import StudyAnalysis
from dermadv.runs import RunManifest

#: Errors that turn a part into a note instead of a crash: unreadable, malformed or truncated files (RunError: a file
#: the attack folder's reader refuses).
READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    json.JSONDecodeError,
    pd.errors.ParserError,
    RunError,
)


@dataclass(frozen=True)
class Link:
    """A file the report cites: ``path`` relative to the run folder, ``href`` relative to the report page."""

    path: str
    href: str


class Sources:
    """The run folder's files the report cites; each is copied under ``report/sources/`` so the page travels alone."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.copies: dict[str, Path] = {}
        self.generated: dict[str, Any] = {}

    def cite(self, path: Path) -> Link:
        rel = path.relative_to(self.run_dir).as_posix()
        href = "sources/" + quote(rel)
        self.copies[href] = path
        return Link(rel, href)

    def cite_if(self, path: Path) -> Link | None:
        return self.cite(path) if path.is_file() else None

    def generate(self, name: str, content: Any) -> Link:
        """A JSON file the report writes itself (e.g. an observer analysis made at report time)."""
        self.generated[name] = content
        return Link(f"report/{name}", quote(name))


@dataclass(frozen=True)
class Stage:
    """One run folder's ``manifest.json`` (command, config, seed, versions, timings, hardware)."""

    name: str
    folder: str
    manifest: RunManifest
    link: Link


@dataclass(frozen=True)
class DataPart:
    source: str | None
    image_size: str | None
    fingerprint: str | None
    split_link: Link | None
    split_counts: pd.DataFrame | None  # index: class; columns: the splits present and total
    n_images: int | None
    n_lesions: int | None
    shared_lesions: int | None  # lesions with images in more than one split
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ClassifierPart:
    folder: str
    config: dict[str, Any]
    manifest: RunManifest | None  # None: the folder has no readable manifest.json
    manifest_link: Link | None
    history: pd.DataFrame | None
    history_link: Link | None
    metrics: ClassificationReport | None
    metrics_link: Link | None
    per_class_link: Link | None
    predictions: pd.DataFrame | None
    predictions_link: Link | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GridCell:
    """One image of the sample grid: ``src`` in the run folder, copied to ``href`` beside the page."""

    kind: str  # clean, adversarial, perturbation
    src: Path
    href: str
    caption: str


@dataclass(frozen=True)
class GridRow:
    image_id: str
    label: str
    cells: list[GridCell]


@dataclass(frozen=True)
class AttackPart:
    folder: str
    attack: AttackInfo
    attack_link: Link
    metrics: AttackMetrics | None
    metrics_link: Link | None
    per_class_link: Link | None
    per_image: pd.DataFrame | None
    per_image_link: Link | None
    predictions_link: Link | None
    generator: dict[str, Any] | None  # the generator fit's config (AdvGAN only)
    generator_link: Link | None
    generator_history: pd.DataFrame | None
    generator_history_link: Link | None
    grid: list[GridRow]
    notes: list[str] = field(default_factory=list)
    status: str | None = None  # its manifest's: "complete", or how the run stopped; None: the folder has none
    images_saved: int | None = None  # adversarial PNGs in images/adv (fewer than n_images when a run stopped)

    @property
    def unfinished(self) -> bool:
        return self.status not in (None, "complete")

    @property
    def eps_255(self) -> float | None:
        eps = self.attack.eps
        return float(eps) * 255 if eps is not None else None


@dataclass(frozen=True)
class SweepPart:
    table: pd.DataFrame
    link: Link
    folder_links: dict[str, Link]  # sweep row's folder -> its attack_metrics.json


@dataclass(frozen=True)
class ObserverPart:
    folder: str
    study: dict[str, Any]
    study_link: Link
    perturbed_share: float | None
    analysis: StudyAnalysis | None
    analysis_link: Link | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DefencesPart:
    """What ``dermadv defend …`` measured (each ``None`` where the run folder lacks it), with its files."""

    transforms: TransformsResult | None = None
    certify: CertifyResult | None = None
    detect: DetectResult | None = None
    card: CardResult | None = None
    links: dict[str, Link] = field(default_factory=dict)  # "transforms" -> transforms.json, …
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table (measure | paper | this run): this run's value, and where it was read.

    ``value`` is the number (or interval dict) found at ``pointer`` (keys into the JSON file ``link.path``);
    ``None`` for a row stated in words (e.g. the split method, read from ``split.csv``).
    """

    key: str
    label: str
    paper: str
    display: str
    value: Any
    link: Link | None
    pointer: tuple[str, ...]
    group: str = "result"  # result or setting


@dataclass(frozen=True)
class FigureFile:
    """A written figure: ``href`` relative to the page; ``width``/``height`` in CSS pixels (96 per inch)."""

    href: str
    width: int
    height: int


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows; rendering it is pure (no file access)."""

    run_dir: Path
    title: str
    kind: str  # reproduce, attack, classifier, sweep, observer or mixed
    generated: str
    classes: tuple[str, ...]
    summary: list[str]  # paragraphs
    measures: list[PaperRow]
    data: DataPart | None
    classifier: ClassifierPart | None
    attack: AttackPart | None
    sweep: SweepPart | None
    observer: ObserverPart | None
    stages: list[Stage]
    defences: DefencesPart | None
    notes: list[str]  # parts missing from the run folder
    copies: dict[str, Path]  # report-relative href -> file of the run folder
    generated_files: dict[str, Any]  # report-relative name -> JSON content written by the report
    paper_table_link: Link | None = None
    figures: dict[str, FigureFile] = field(default_factory=dict)

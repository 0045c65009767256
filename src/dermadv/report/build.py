"""Build the report of a run folder: ``collect`` reads it, ``render_report``/``render_markdown`` are pure,
``build_report`` writes ``report/`` (index.html, report.md, summary.json, figures/, images/, sources/)."""

from __future__ import annotations

import functools
import logging
import shutil
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jinja2

from dermadv.data.classes import CLASSES
from dermadv.errors import RunError
from dermadv.report.context import report_context
from dermadv.report.data import READ_ERRORS, ReportData, Sources
from dermadv.report.defences import MISSING_NOTE, find_defence_files, read_defences
from dermadv.report.readers import (
    read_attack,
    read_classifier,
    read_data,
    read_json_dict,
    read_observer,
    read_stage,
    read_sweep,
)
from dermadv.report.summary import setting_rows, split_method, summary_measures, summary_paragraphs
from dermadv.runs import atomic_write_text, read_run_manifest, require_complete, write_json

log = logging.getLogger(__name__)

REPORT_DIR = "report"


@dataclass(frozen=True)
class Layout:
    """Where each part of a run lives; ``None`` where the run folder lacks it."""

    run_dir: Path
    classifier: Path | None
    generator: Path | None
    attack: Path | None
    sweep: Path | None
    observer: Path | None
    split: Path | None
    defences: dict[str, Path] = field(default_factory=dict)  # "transforms" -> transforms.json, …

    @property
    def kind(self) -> str:
        """What the folder is: the folder of one command, or a run of several (``reproduce`` writes those)."""
        for kind, folder in (("attack", self.attack), ("classifier", self.classifier), ("study", self.observer)):
            if folder == self.run_dir:
                return kind
        return "run"

    def stage_folders(self) -> list[tuple[str, Path]]:
        named = [
            ("run", self.run_dir),
            ("classifier training", self.classifier),
            ("test-set evaluation", self.classifier / "test" if self.classifier else None),
            ("generator fit", self.generator),
            ("attack", self.attack),
            ("observer study", self.observer),
            *((f"defence: {name}", path.parent) for name, path in self.defences.items()),
        ]
        unique: dict[Path, str] = {}
        for name, folder in named:
            if folder is not None and (folder / "manifest.json").is_file():
                unique.setdefault(folder, name)
        return [(name, folder) for folder, name in unique.items()]


def _is_classifier_dir(folder: Path) -> bool:
    if (folder / "history.csv").is_file() and (folder / "model.safetensors").is_file():
        return True
    manifest = read_run_manifest(folder)
    return manifest is not None and manifest.command in ("train", "evaluate")


def _first(*candidates: Path, marker: str = "") -> Path | None:
    return next((p for p in candidates if (p / marker if marker else p).is_file()), None)


def locate(run_dir: Path) -> Layout:
    """Find the parts of a reproduce folder (classifier/, generator/, adv-test/, sweep/, observer/) or a bare one."""
    clf = next((d for d in (run_dir / "classifier", run_dir) if _is_classifier_dir(d)), None)
    return Layout(
        run_dir=run_dir,
        classifier=clf,
        generator=_first(run_dir / "generator", marker="manifest.json"),
        attack=_first(run_dir / "adv-test", run_dir, marker="attack.json"),
        sweep=_first(run_dir / "sweep" / "sweep.csv", run_dir / "sweep.csv"),
        observer=_first(run_dir / "observer", run_dir, marker="study.json"),
        split=_first(run_dir / "split.csv", (clf or run_dir) / "split.csv"),
        defences=find_defence_files(run_dir, skip=REPORT_DIR),
    )


def _missing_notes(layout: Layout, data: dict[str, Any], notes: list[str]) -> list[str]:
    """One note per part the run folder lacks (a part that failed to read already has its note)."""
    said = " ".join(notes)
    missing = []
    if data["classifier"] is None:
        checkpoint = (data["attack"].attack.checkpoint if data["attack"] else None) or ""
        where = f"; the attack used {checkpoint}, outside this folder" if checkpoint else ""
        missing.append(
            f"Classifier: no classifier run here (classifier/ with history.csv and test/metrics.json){where}."
        )
    if data["attack"] is None and "Attack:" not in said:
        missing.append("Attack: no attack output folder (adv-test/attack.json); `dermadv attack run` makes one.")
    if data["sweep"] is None and "Robustness curves:" not in said:
        missing.append("Robustness curves: no sweep.csv (`dermadv reproduce --sweep` or `dermadv attack sweep`).")
    if data["observer"] is None and "Observer study:" not in said:
        missing.append("Observer study: none in this folder (`dermadv observer create` makes the kit).")
    if data["defences"] is None:
        missing.append(MISSING_NOTE)
    if not layout.stage_folders():
        missing.append("Reproducibility: no manifest.json in this folder.")
    return missing


def collect(run_dir: str | Path, *, last_stage: bool = False) -> ReportData:
    """Read a run folder (reproduce, attack output, classifier or study folder) into :class:`ReportData`.

    Reads only files inside ``run_dir`` and never recomputes an attack (an observer study without a saved
    analysis is analysed from its answers, read-only). Missing or unreadable parts become notes.
    ``last_stage``: the report is the last stage of the run in ``run_dir`` (``reproduce``), which marks itself
    complete once the report is written; the report shows it so.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the --out of `dermadv reproduce` or another command")
    layout = locate(run_dir)
    sources = Sources(run_dir)
    stages = [s for name, folder in layout.stage_folders() if (s := read_stage(name, folder, sources)) is not None]
    if last_stage and stages and stages[0].folder == ".":
        root_stage = stages[0]
        stages[0] = replace(root_stage, manifest=replace(root_stage.manifest, status="complete", rerun=None))
        written = read_json_dict(run_dir / "manifest.json")  # the cited copy says the same, key for key
        completed = {k: v for k, v in written.items() if k != "rerun"} | {"status": "complete"}
        sources.generated[unquote(root_stage.link.href)] = completed
    notes: list[str] = []
    parts: dict[str, Any] = {"classifier": None, "attack": None, "sweep": None, "observer": None}
    readers: list[tuple[str, str, Path | None, Callable[[Path], Any]]] = [
        ("classifier", "Classifier", layout.classifier, lambda p: read_classifier(p, sources)),
        ("attack", "Attack", layout.attack, lambda p: read_attack(p, sources, generator_dir=layout.generator)),
        ("sweep", "Robustness curves", layout.sweep, lambda p: read_sweep(p, sources)),
        ("observer", "Observer study", layout.observer, lambda p: read_observer(p, sources)),
    ]
    for key, title, path, read in readers:
        if path is None:
            continue
        try:
            parts[key] = read(path)
        except READ_ERRORS as exc:
            notes.append(f"{title}: cannot read {path.relative_to(run_dir)} ({type(exc).__name__}: {exc})")
    parts["defences"] = read_defences(layout.defences, sources)
    if not any(parts.values()) and not notes:
        raise RunError(
            f"nothing to report in {run_dir}: no classifier run, attack output folder (attack.json), sweep.csv, "
            "observer study or defence results; pass the --out of `dermadv reproduce`, `train`, `attack run`, "
            "`attack sweep` or `defend …`"
        )
    classifier, attack, sweep, observer = (parts[k] for k in ("classifier", "attack", "sweep", "observer"))
    data_part = read_data(
        run_dir, sources, split_path=layout.split, stages=stages, attack=attack.attack if attack else None
    )
    notes += _missing_notes(layout, parts, notes)
    notes += [
        f"Unfinished run: {'this folder' if s.folder == '.' else s.folder} ({s.name}) stopped before it finished "
        f"(its manifest.json says {s.manifest.status}); what this report shows of it is partial."
        for s in stages
        if not s.manifest.complete and not (last_stage and s.folder == ".")
    ]
    classes = (attack.attack.classes if attack else None) or ()
    if not classes and classifier is not None and classifier.metrics is not None:
        classes = classifier.metrics.classes
    paper_table = sources.cite_if(run_dir / "paper_table.json")  # before the copies are listed below
    root = stages[0].manifest if stages and stages[0].folder == "." else None
    grid_copies = {cell.href: cell.src for row in (attack.grid if attack else []) for cell in row.cells}
    return ReportData(
        run_dir=run_dir,
        title=f"dermadv report: {run_dir.name}",
        kind="reproduce" if root is not None and root.command == "reproduce" else layout.kind,
        generated=time.strftime("%Y-%m-%d %H:%M %Z"),
        classes=classes or CLASSES,
        summary=summary_paragraphs(data_part.source, classifier, attack, sweep, observer),
        measures=[
            *summary_measures(classifier, attack, observer),
            *setting_rows(classifier, attack, split_method(data_part), data_part.split_link),
        ],
        data=data_part,
        classifier=classifier,
        attack=attack,
        sweep=sweep,
        observer=observer,
        stages=stages,
        defences=parts["defences"],
        notes=notes,
        copies={**sources.copies, **grid_copies},
        generated_files=dict(sources.generated),
        paper_table_link=paper_table,
    )


@functools.lru_cache(maxsize=2)
def _environment(autoescape: bool) -> jinja2.Environment:
    from dermadv.report.format import FILTERS

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def render_report(data: ReportData) -> str:
    """The report page as one HTML string (pure: reads no file but the template)."""
    return _environment(True).get_template("report.html").render(**report_context(data))


def render_markdown(data: ReportData) -> str:
    """The same tables as Markdown."""
    return _environment(False).get_template("report.md").render(**report_context(data))


def summary_json(data: ReportData) -> dict[str, Any]:
    """The machine-readable summary: each measure with its value and the file and key it was read from."""
    return {
        "format": 1,
        "run_dir": str(data.run_dir),
        "kind": data.kind,
        "generated": data.generated,
        "summary": data.summary,
        "sections": [s["id"] for s in report_context(data)["sections"]],
        "notes": data.notes,
        "measures": {
            m.key: {
                "label": m.label,
                "value": m.value,
                "paper": m.paper,
                "source": m.link.path if m.link else None,
                "pointer": list(m.pointer),
            }
            for m in data.measures
        },
    }


def check_finished(run_dir: str | Path, *, last_stage: bool = False, allow_incomplete: bool = False) -> None:
    """Refuse a run folder any of whose parts (classifier, generator, attack, study, defences) is a run that did not
    finish: its outputs would be reported as if whole. ``allow_incomplete``: report them, marked unfinished."""
    layout = locate(Path(run_dir).resolve())
    for _, folder in layout.stage_folders():
        if last_stage and folder == layout.run_dir:
            continue  # the run writing this report: it completes once the report is written
        require_complete(
            folder,
            allow_incomplete=allow_incomplete,
            fix="finish that run first (or rerun it), or pass --allow-incomplete to report it marked unfinished",
        )


def build_report(
    run_dir: str | Path, *, open_browser: bool = False, last_stage: bool = False, allow_incomplete: bool = False
) -> Path:
    """Write ``<run_dir>/report/`` and return the path of its ``index.html`` (``last_stage``: see :func:`collect`).

    A part of the folder that is the output of an unfinished run is refused (:func:`check_finished`), or reported
    marked unfinished under ``allow_incomplete``.
    """
    t0 = time.time()
    if Path(run_dir).is_dir():  # a missing folder: collect says so
        check_finished(run_dir, last_stage=last_stage, allow_incomplete=allow_incomplete)
    data = collect(run_dir, last_stage=last_stage)
    out = data.run_dir / REPORT_DIR
    for sub in ("figures", "images", "sources"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)  # a rebuilt report must not keep files of an older run
    out.mkdir(parents=True, exist_ok=True)
    for href, src in data.copies.items():
        dst = out / unquote(href)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for name, content in data.generated_files.items():
        write_json(out / name, content)
    from dermadv.report.figures import write_figures

    figures, figure_notes = write_figures(data, out / "figures")
    data = replace(data, figures=figures, notes=[*data.notes, *figure_notes])
    atomic_write_text(out / "index.html", render_report(data))
    atomic_write_text(out / "report.md", render_markdown(data))
    write_json(out / "summary.json", summary_json(data))
    log.info("report of %s written to %s in %.1f s", data.run_dir, out, time.time() - t0)
    page = out / "index.html"
    if open_browser:
        webbrowser.open(page.as_uri())
    return page

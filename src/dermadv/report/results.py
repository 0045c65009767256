"""A results page built from run folders: per run, its headline figures read from the folder's JSON and its
provenance from its ``manifest.json`` (command line, commit, data fingerprint, machine, status).

``dermadv results RUN... --out docs/results.md`` writes it; nothing on the page is typed by hand.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dermadv.config import format_eps
from dermadv.defences.results import (
    CardResult,
    CertifyResult,
    DetectResult,
    TargetedOutcome,
    TransformsResult,
    from_dict,
)
from dermadv.errors import DermadvError, RunError
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_run import (
    INFO_FILE,
    METRICS_FILE,
    read_attack_metrics,
    read_predictions,
)
from dermadv.evaluation.metrics import ClassificationReport
from dermadv.evaluation.stats import format_interval
from dermadv.proportions import Proportion
from dermadv.report.data import READ_ERRORS
from dermadv.report.readers import read_json_dict, read_table
from dermadv.runs import RunManifest, atomic_write_text, read_run_manifest

#: each kind of run, in page order: the commands it gathers and its section title
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("train",), "Classifiers (`dermadv train`)"),
    "evaluate": (("evaluate",), "Evaluations (`dermadv evaluate`)"),
    "attack": (("attack run", "attack transfer"), "Attacks (`dermadv attack run`, `dermadv attack transfer`)"),
    "sweep": (("attack sweep",), "Attack sweeps (`dermadv attack sweep`)"),
    "generator": (("attack fit",), "Generator fits (`dermadv attack fit`)"),
    "audit": (("audit",), "Audits (`dermadv audit`)"),
    "reproduce": (("reproduce",), "Reproductions (`dermadv reproduce`)"),
    "defend": ((), "Defences (`dermadv defend …`)"),
    "other": ((), "Other runs"),
}
PROVENANCE_COLUMNS = ("status", "command", "commit", "data fingerprint", "machine", "time")
UNFINISHED_MARK = "⚠ UNFINISHED"
NA = "–"
T = TypeVar("T")


@dataclass(frozen=True)
class Provenance:
    """Where a run's figures come from, as its ``manifest.json`` records it."""

    command: str  # the dermadv command, e.g. "attack run"
    command_line: str  # ``dermadv attack run --model …`` as typed (URLs redacted), or the library call that ran it
    commit: str | None
    data_fingerprint: str | None
    machine: str
    status: str
    reason: str | None = None
    seconds: float | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @classmethod
    def from_manifest(cls, manifest: RunManifest, *, data_fingerprint: str | None = None) -> Provenance:
        command = manifest.command or "?"
        status, reason = manifest.status or "unknown", manifest.reason
        rerun = manifest.rerun
        if status == "complete" and rerun is not None and not rerun.complete:
            # a rerun into a complete folder: the figures are the earlier run's, the rerun has not replaced them
            reason = f"a later rerun is {rerun.status}; these figures are from the earlier, complete run"
        return cls(
            command=command,
            command_line=command_line(manifest.argv, command),
            commit=manifest.git_commit,
            data_fingerprint=manifest.data_fingerprint or data_fingerprint,
            machine=machine(manifest.hardware),
            status=status,
            reason=reason or None,
            seconds=manifest.timings_s.get("total"),
        )


@dataclass(frozen=True)
class RunResult:
    """One run folder on the page: its kind, its headline figures (column -> text) and its provenance."""

    folder: str
    kind: str
    figures: dict[str, str]
    provenance: Provenance
    details: tuple[str, ...] = ()  # Markdown lines below the kind's table (a sweep's rows)
    notes: tuple[str, ...] = ()


def command_line(argv: Sequence[str] | None, command: str) -> str:
    """``dermadv train --data …`` from a manifest's (redacted) argv; a run made by a library call says so."""
    if not argv:
        return f"dermadv {command} (command line not recorded)"
    args = [str(a) for a in argv]
    program = Path(args[0])
    if program.name == "dermadv" or (program.name == "__main__.py" and program.parent.name == "dermadv"):
        return shlex.join(["dermadv", *args[1:]])
    return f"dermadv {command} as a library call from: {shlex.join([program.name, *args[1:]])}"


def machine(hardware: Mapping[str, Any] | None) -> str:
    """``NVIDIA H100 80GB HBM3 ×1; 16 CPU cores, 16 torch threads; Linux`` from a manifest's ``hardware``."""
    if not hardware:
        return "not recorded"
    parts = []
    gpus = hardware.get("cuda_devices") or []
    if gpus:
        names = sorted(set(map(str, gpus)))
        parts.append(", ".join(f"{n} ×{gpus.count(n)}" for n in names))
    else:
        parts.append("CPU only")
    cores, threads = hardware.get("cpu_count"), hardware.get("torch_threads")
    cpu = f"{cores} CPU cores" if cores is not None else "CPU cores not recorded"
    if threads is not None:
        cpu += f", {threads} torch thread{'' if threads == 1 else 's'}"
    parts.append(cpu)
    platform = str(hardware.get("platform") or "")
    if platform:
        parts.append(platform.split("-")[0])
    return "; ".join(parts)


def _number(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and value == value else NA


def _eps(value: Any) -> str:
    return format_eps(float(value)) if isinstance(value, (int, float)) else (str(value) if value else NA)


def _try_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"no {path.name}")
        return None
    try:
        return read_json_dict(path)
    except READ_ERRORS as exc:
        notes.append(f"cannot read {path.name} ({type(exc).__name__}: {exc})")
        return None


def _try_classification(path: Path, notes: list[str]) -> ClassificationReport | None:
    """The classification metrics in ``path`` (``metrics.json``); None, with a note, where missing or unreadable."""
    metrics = _try_json(path, notes)
    if metrics is None:
        return None
    try:
        return ClassificationReport.from_dict(metrics)
    except READ_ERRORS as exc:
        notes.append(f"cannot read {path.name} ({type(exc).__name__}: {exc})")
        return None


def _try_read(folder: Path, name: str, read: Callable[[Path], T], notes: list[str]) -> T | None:
    """``read(folder)`` of the attack folder's file ``name`` (an :mod:`~dermadv.evaluation.attack_run` reader); None,
    with a note, where the file is missing or unreadable."""
    if not (folder / name).is_file():
        notes.append(f"no {name}")
        return None
    try:
        return read(folder)
    except (*READ_ERRORS, DermadvError) as exc:
        notes.append(f"cannot read {name} ({type(exc).__name__}: {exc})")
        return None


def median_queries(attack_dir: Path) -> float | None:
    """The median queries the attack spent on the images it fooled (target class left out); None for an attack that
    counts no queries (gradient attacks, the generator) or fooled none."""
    import numpy as np

    try:
        if "queries" not in read_predictions(attack_dir).columns:
            return None
        from dermadv.report.figures import read_query_curves

        curves = read_query_curves(attack_dir)
    except (*READ_ERRORS, DermadvError):
        return None
    spent = np.concatenate([c.queries[c.fooled] for c in curves.curves]) if curves.curves else np.array([])
    return float(np.median(spent)) if spent.size else None


def attack_figures(attack_dir: Path, notes: list[str]) -> dict[str, str]:
    """Method, budget, target, accuracy clean → adversarial, all → target, worst class, median queries."""
    attack = _try_read(attack_dir, INFO_FILE, AttackInfo.read, notes) or AttackInfo()
    metrics = _try_read(attack_dir, METRICS_FILE, read_attack_metrics, notes)
    target = metrics.target if metrics is not None else attack.target
    figures = {
        "method": str(attack.method or NA),
        "ε": _eps(attack.eps),
        "target": str(target) if target else "none (untargeted)",
        "n": str(metrics.n) if metrics is not None else NA,
        "accuracy clean → adversarial": NA,
        "all → target": NA,
        "worst-class fooling ratio": NA,
    }
    if metrics is not None:
        figures["accuracy clean → adversarial"] = (
            f"{format_interval(metrics.accuracy_clean)} → {format_interval(metrics.accuracy_adv)}"
        )
        figures["all → target"] = format_interval(metrics.fooling_ratio_all)
        worst = metrics.worst_class_fooling_ratio
        if worst is not None:
            figures["worst-class fooling ratio"] = f"{metrics.worst_class}: {format_interval(worst)}"
    queries = median_queries(attack_dir)
    figures["median queries"] = f"{queries:g}" if queries is not None else NA
    return figures


def evaluation_folder(folder: Path) -> Path | None:
    """The test-set evaluation of a train folder (``test/``, else ``eval-*``), or the folder itself."""
    candidates = [folder / "test", *sorted(folder.glob("eval-*")), folder]
    return next((d for d in candidates if (d / "metrics.json").is_file()), None)


def _accuracy(folder: Path, notes: list[str]) -> tuple[str, str]:
    """(accuracy with its interval, n) of the folder's test-set ``metrics.json``."""
    found = evaluation_folder(folder)
    if found is None:
        notes.append("no test-set metrics.json")
        return NA, NA
    metrics = _try_classification(found / "metrics.json", notes)
    return (format_interval(metrics.accuracy), str(metrics.n)) if metrics is not None else (NA, NA)


def _train(folder: Path, manifest: RunManifest, notes: list[str]) -> dict[str, str]:
    config = manifest.config
    trained = _try_json(folder / "train_metrics.json", notes) or {}
    accuracy, n = _accuracy(folder, notes)
    best, select = trained.get("best_validation_score"), trained.get("select")
    return {
        "model": f"{config.get('arch', NA)} at {config.get('image_size', NA)} px",
        "epochs": str(trained.get("epochs_run", manifest.extra.get("epochs_run", NA))),
        "best validation": f"{_number(best)} ({select})" if select else _number(best),
        "test accuracy (95% CI)": accuracy,
        "n test": n,
    }


def _evaluate(folder: Path, manifest: RunManifest, notes: list[str]) -> dict[str, str]:
    split = str(manifest.config.get("split", NA))
    metrics = _try_classification(folder / "metrics.json", notes)
    if metrics is None:
        return {"split": split} | dict.fromkeys(("n", "accuracy (95% CI)", "balanced accuracy", "macro AUC"), NA)
    return {
        "split": split,
        "n": str(metrics.n),
        "accuracy (95% CI)": format_interval(metrics.accuracy),
        "balanced accuracy": _number(metrics.balanced_accuracy),
        "macro AUC": _number(metrics.macro_auc),
    }


def _audit(folder: Path, manifest: RunManifest, notes: list[str]) -> dict[str, str]:
    audit = _try_json(folder / "audit.json", notes) or {}
    model = audit.get("model") or {}
    clean = None
    if "clean" in audit:  # the clean evaluation's metrics.json, as the audit ran it
        try:
            clean = ClassificationReport.from_dict(audit["clean"])
        except READ_ERRORS as exc:
            notes.append(f"cannot read the clean evaluation in audit.json ({type(exc).__name__}: {exc})")
    figures = {
        "model": f"{model.get('spec', NA)} ({model.get('kind', NA)})",
        "threat model": str(audit.get("threat_model", NA)),
        "clean accuracy (95% CI)": format_interval(clean.accuracy) if clean is not None else NA,
    }
    attack = attack_figures(folder / "attack", notes)
    return figures | {k: v for k, v in attack.items() if k != "accuracy clean → adversarial"}


def _reproduce(folder: Path, manifest: RunManifest, notes: list[str]) -> dict[str, str]:
    accuracy, _ = _accuracy(folder / "classifier", notes)
    attack = attack_figures(folder / "adv-test", notes)
    keep = ("method", "ε", "target", "n", "all → target", "worst-class fooling ratio")
    return {"test accuracy (95% CI)": accuracy} | {k: attack[k] for k in keep}


def _generator(folder: Path, manifest: RunManifest, notes: list[str]) -> dict[str, str]:
    config = manifest.config
    rate = NA
    if (folder / "history.csv").is_file():
        try:
            history = read_table(folder / "history.csv", ("epoch", "train_target_rate"))
            rate = _number(float(history["train_target_rate"].iloc[-1]))
        except READ_ERRORS as exc:
            notes.append(f"cannot read history.csv ({type(exc).__name__}: {exc})")
    return {
        "target": str(config.get("target", NA)),
        "ε": str(config.get("eps", NA)),
        "epochs": str(manifest.extra.get("epochs_run", NA)),
        "train target rate, last epoch": rate,
    }


def _files(folder: Path, manifest: RunManifest, notes: list[str]) -> dict[str, str]:
    names = sorted(p.name for p in folder.glob("*.json") if p.name != "manifest.json")
    return {"result files": ", ".join(names) or NA}


def _share(p: Proportion | None) -> str:
    """``85.0% (17/20)``: a share with its counts (the defence results store counts)."""
    if p is None or not p.n:
        return NA
    return f"{100 * p.estimate:.1f}% ({p.k}/{p.n})" if p.counts else f"{100 * p.estimate:.1f}%"


def _worst(outcome: TargetedOutcome | None) -> str:
    if outcome is None or outcome.worst_class is None:
        return NA
    return f"{outcome.worst_class} {_share(outcome.worst_class_fooling)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[str, ...]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return (*lines, *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows))


def _defend_rows(folder: Path, command: str, notes: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """A defence run's headline and its table, from the result file its ``dermadv defend`` command wrote."""
    name = command.removeprefix("defend ")
    path = folder / f"{name}.json"
    try:
        data = read_json_dict(path)
        if name == "transforms":
            tr = from_dict(TransformsResult, data)
            largest = max(r.eps for r in tr.rows)
            adaptive = [r for r in tr.rows if r.eps == largest and r.adaptive is not None]
            headline = f"adaptive attack at {format_eps(largest)}, worst class: " + ", ".join(
                f"{r.defence} {_share(r.adaptive.worst_class_fooling if r.adaptive else None)}" for r in adaptive
            )
            rows = [
                [r.defence, format_eps(r.eps), _share(r.accuracy_clean), _worst(r.plain), _worst(r.adaptive)]
                for r in tr.rows
            ]
            header = ["defence", "ε", "clean accuracy", "worst class, plain attack", "worst class, adaptive attack"]
            figures = {"images": str(tr.n_images), "attack": tr.attack, "result": headline}
            return figures, (f"Targeted to `{tr.target}`; EOT samples {tr.eot_samples}.", "", *_table(header, rows))
        if name == "certify":
            ce = from_dict(CertifyResult, data)
            c = ce.certified
            radii = ", ".join(f"r = {r:g}: {100 * a:.1f}%" for r, a in zip(c.radii, c.accuracy, strict=True))
            figures = {
                "images": str(c.n_images),
                "attack": "none (certified L2 radius)",
                "result": f"certified accuracy (σ = {c.sigma:g}, {c.n_samples} noise samples): {radii}; "
                f"base classifier {_share(ce.accuracy_base)}, abstained {_share(ce.abstained)}",
            }
            return figures, ()
        if name == "detect":
            de = from_dict(DetectResult, data)
            rows = [
                [
                    o.attack,
                    f"{o.scores.auc:.3f}",
                    f"{100 * o.scores.tpr_at_5_fpr:.1f}%",
                    _share(o.fooled),
                    _share(o.fooled_undetected),
                ]
                for o in de.outcomes
            ]
            header = ["attack", "ROC AUC", "flagged at 5% false positives", "fooled", "fooled and undetected"]
            headline = "; ".join(
                f"{o.attack}: fooled and undetected {_share(o.fooled_undetected)}" for o in de.outcomes
            )
            figures = {"images": str(de.outcomes[0].scores.n_clean) if de.outcomes else NA, "result": headline}
            return figures | {"attack": de.detector}, _table(header, rows)
        if name == "card":
            ca = from_dict(CardResult, data)
            lines: list[str] = []
            for dc in ca.cards:
                card = dc.card
                title = f"{dc.defence}" + (", adaptive attack" if dc.adaptive else ", plain attack")
                header = [
                    "class",
                    "images",
                    *(f"→ {card.target} at {format_eps(e)}" for e in card.eps),
                    "ε ≥ 50%",
                    "ε ≥ 99%",
                ]
                rows = [
                    [
                        c.label,
                        str(c.n_images),
                        *(f"{100 * f:.0f}%" for f in c.fooling),
                        format_eps(c.eps_50) if c.eps_50 is not None else f"> {format_eps(card.eps[-1])}",
                        format_eps(c.eps_99) if c.eps_99 is not None else f"> {format_eps(card.eps[-1])}",
                    ]
                    for c in card.classes
                ]
                lines += [f"{title} ({card.attack}):", "", *_table(header, rows), ""]
            figures = {"attack": ca.cards[0].card.attack if ca.cards else NA, "result": "robustness card per class"}
            return figures, tuple(lines[:-1])
    except (*READ_ERRORS, KeyError, TypeError) as exc:
        notes.append(f"cannot read {path.name} ({type(exc).__name__}: {exc})")
        return {"result": NA}, ()
    return _files(folder, RunManifest(), notes), ()


def _sweep_rows(folder: Path, notes: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The sweep's summary figures and its table, one row per method × budget × protocol of ``sweep.csv``."""
    try:
        table = read_table(folder / "sweep.csv", ("method", "eps_255", "accuracy_adv"))
    except READ_ERRORS as exc:
        notes.append(f"cannot read sweep.csv ({type(exc).__name__}: {exc})")
        return {"attacks": NA}, ()
    worst = table.get("worst_class_fooling")
    figures = {
        "attacks": str(len(table)),
        "methods": ", ".join(sorted(set(table["method"].astype(str)))),
        "ε (/255)": ", ".join(f"{v:g}" for v in sorted(set(table["eps_255"].astype(float)))),
        "lowest accuracy, adversarial": f"{100 * float(table['accuracy_adv'].min()):.1f}%",
        "highest worst-class fooling ratio": f"{100 * float(worst.max()):.1f}%" if worst is not None else NA,
    }
    columns = ["method", "protocol", "eps", "n", "accuracy_clean", "accuracy_adv", "worst_class_fooling", "folder"]
    columns = [c for c in columns if c in table.columns]
    lines = [f"| {' | '.join(c.replace('_', ' ') for c in columns)} |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [
            f"{100 * float(row[c]):.1f}%" if c.startswith(("accuracy", "worst")) and row[c] == row[c] else str(row[c])
            for c in columns
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return figures, tuple(lines)


_READERS = {
    "train": _train,
    "evaluate": _evaluate,
    "audit": _audit,
    "reproduce": _reproduce,
    "generator": _generator,
    "other": _files,
}


def run_kind(command: str) -> str:
    for kind, (commands, _) in KINDS.items():
        if command in commands:
            return kind
    return "defend" if command.startswith("defend ") else "other"


def _subfolder_fingerprint(folder: Path) -> str | None:
    """The one data fingerprint the run's stages (subfolders) record, for a run that records none itself."""
    found = {
        m.data_fingerprint
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and (m := read_run_manifest(sub)) is not None and m.data_fingerprint
    }
    return found.pop() if len(found) == 1 else None


def read_run(folder: str | Path) -> RunResult:
    """One run folder's figures and provenance; refused when it holds no ``manifest.json``."""
    path = Path(folder)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder; pass run folders a dermadv command wrote")
    manifest = read_run_manifest(path)
    if manifest is None:
        raise RunError(
            f"{path} has no readable manifest.json, so its figures cannot be traced to a command, commit and data; "
            "pass a folder a dermadv command wrote (train, evaluate, attack run, attack sweep, audit, reproduce, …)"
        )
    fingerprint = None if manifest.data_fingerprint else _subfolder_fingerprint(path)
    provenance = Provenance.from_manifest(manifest, data_fingerprint=fingerprint)
    kind = run_kind(provenance.command)
    notes: list[str] = []
    details: tuple[str, ...] = ()
    if kind == "attack":
        figures = attack_figures(path, notes)
    elif kind == "sweep":
        figures, details = _sweep_rows(path, notes)
    elif kind == "defend":
        figures, details = _defend_rows(path, provenance.command, notes)
    else:
        figures = _READERS[kind](path, manifest, notes)
    return RunResult(str(folder), kind, figures, provenance, details, tuple(notes))


def collect_results(folders: Sequence[str | Path], *, allow_incomplete: bool = False) -> list[RunResult]:
    """Every folder read; an unfinished run is refused unless ``allow_incomplete`` (then the page marks it)."""
    if not folders:
        raise RunError("no run folder given; pass one or more folders a dermadv command wrote")
    results = [read_run(f) for f in folders]
    unfinished = [r for r in results if not r.provenance.complete]
    if unfinished and not allow_incomplete:
        listed = "; ".join(f"{r.folder} ({r.provenance.status})" for r in unfinished)
        raise RunError(
            f"unfinished run(s): {listed}; their figures may be partial: finish them, leave them out, or pass "
            "--allow-incomplete to list them marked UNFINISHED"
        )
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _status(p: Provenance) -> str:
    if p.complete:
        return "complete" + (f" ({p.reason})" if p.reason else "")
    return f"{UNFINISHED_MARK}: {p.status}" + (f" ({p.reason})" if p.reason else "")


def provenance_cells(p: Provenance) -> list[str]:
    commit = p.commit or "not recorded"
    return [
        _status(p),
        _code(p.command_line),
        _code(commit),
        _code(p.data_fingerprint) if p.data_fingerprint else "not recorded",
        p.machine,
        NA if p.seconds is None else f"{p.seconds:.0f} s" if p.seconds >= 10 else f"{p.seconds:.1f} s",
    ]


def render_results(results: Sequence[RunResult], *, generated_by: str) -> str:
    """The page as Markdown (pure): a header naming the command that made it, then one table per kind of run."""
    lines = [
        f"<!-- Generated by `{generated_by}`: do not edit by hand; rerun it (or `make docs RUNS=...`). -->",
        "",
        "# Results",
        "",
        f"Generated by `{generated_by}` from {len(results)} run folder(s); do not edit this file by hand. "
        "Each row reads one run folder's JSON (metrics.json, attack_metrics.json, audit.json, sweep.csv, …); its "
        "provenance — command line, commit, data fingerprint, machine and status — is the folder's manifest.json. "
        "Intervals are 95% intervals of the method the run recorded.",
    ]
    if any(not r.provenance.complete for r in results):
        lines += ["", f"**{UNFINISHED_MARK}** marks a run that did not finish: its figures may be partial."]
    for kind, (_, title) in KINDS.items():
        group = [r for r in results if r.kind == kind]
        if not group:
            continue
        columns = list(dict.fromkeys(c for r in group for c in r.figures))
        header = ["run", *columns, *PROVENANCE_COLUMNS]
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in group:
            mark = "" if r.provenance.complete else f"{UNFINISHED_MARK} "
            cells = [f"{mark}{_code(r.folder)}", *(r.figures.get(c, NA) for c in columns)]
            lines.append("| " + " | ".join(_cell(c) for c in [*cells, *provenance_cells(r.provenance)]) + " |")
        for r in group:
            if r.details:
                lines += ["", f"### {_code(r.folder)}", "", *r.details]
        noted = [r for r in group if r.notes]
        if noted:
            lines += ["", "Notes:", ""]
            lines += [f"- {_code(r.folder)}: {'; '.join(r.notes)}" for r in noted]
    return "\n".join(lines) + "\n"


def write_results(
    folders: Sequence[str | Path], out: str | Path, *, generated_by: str, allow_incomplete: bool = False
) -> Path:
    """Read ``folders``, render the page and write it to ``out`` (atomically)."""
    text = render_results(collect_results(folders, allow_incomplete=allow_incomplete), generated_by=generated_by)
    atomic_write_text(out, text)
    return Path(out)

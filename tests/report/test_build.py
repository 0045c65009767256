"""The report of a run folder: files, numbers, sections, and what happens when parts are missing."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from typer.testing import CliRunner

from dermadv import cli
from dermadv.errors import RunError
from dermadv.observer.analysis import analyze_study
from dermadv.observer.study import create_study
from dermadv.report import build_report, collect, render_markdown, render_report
from dermadv.report.context import report_context
from dermadv.runs import read_json, write_json

ALL_SECTIONS = ["summary", "data", "classifier", "attack", "robustness", "defences", "observer", "reproducibility"]


class _Refs(HTMLParser):
    """Every ``src``/``href`` of a page and the ids of its sections, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "section" and values.get("id"):
            self.sections.append(str(values["id"]))


def _parse(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _local(ref: str) -> bool:
    return not (ref.startswith("#") or urlparse(ref).scheme in ("http", "https", "data", "mailto"))


@pytest.fixture(scope="module")
def built(run_dir: Path) -> Path:
    return build_report(run_dir)


def test_report_folder_is_complete_and_every_reference_exists(built: Path) -> None:
    out = built.parent
    assert built.name == "index.html"
    for name in ("report.md", "summary.json"):
        assert (out / name).is_file()
    refs = [r for r in _parse(built).refs if _local(r)]
    assert refs, "the page references no file"
    missing = [r for r in refs if not (out / unquote(r)).is_file()]
    assert not missing, f"referenced but absent: {missing}"
    for figure in (
        "training_curves",
        "confusion",
        "per_class_rates",
        "roc",
        "attack_confusion",
        "fooling",
        "sizes",
        "robustness",
        "class_counts",
        "generator_curves",
        "robustness_card",
    ):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    assert all(not r.startswith(("/", "..")) for r in refs), "links must stay inside report/"
    md_links = re.findall(r"\]\(([^)]+)\)", (out / "report.md").read_text(encoding="utf-8"))
    assert md_links and all((out / unquote(link)).is_file() for link in md_links)
    assert len(list((out / "images" / "adv").glob("*.png"))) == 7  # one sample per class


def test_sections_come_in_the_issue_order(built: Path) -> None:
    assert _parse(built).sections == ALL_SECTIONS
    text = built.read_text(encoding="utf-8")
    assert "saved 8-bit PNG differs from the one on the in-memory adversarial image" in text  # inmem_agreement
    assert "84% (82–86)" in text and "paper (Allyn et al. 2020)" in text


def test_summary_json_numbers_equal_the_metrics_files(run_dir: Path, built: Path) -> None:
    summary = read_json(built.parent / "summary.json")
    measures = summary["measures"]
    for key, m in measures.items():
        if m["value"] is None:  # a row in words (the split method), not a number
            continue
        value = read_json(run_dir / m["source"])
        for step in m["pointer"]:
            value = value[step]
        assert value == m["value"], key
    attack = read_json(run_dir / "adv-test" / "attack_metrics.json")
    clf = read_json(run_dir / "classifier" / "test" / "metrics.json")
    assert measures["accuracy_clean"]["value"] == attack["accuracy_clean"]
    assert measures["accuracy_adv"]["value"] == attack["accuracy_adv"]
    assert measures["mcnemar_p"]["value"] == attack["mcnemar"]["exact"]["p_value"]
    assert measures["inmem_n_differ"]["value"] == attack["inmem_agreement"]["n_differ"] == 1
    assert {k.split(".")[1] for k in measures if k.startswith("fooling_ratio.")} == set(attack["fooling_ratio"])
    assert measures["balanced_accuracy"]["value"] == clf["balanced_accuracy"]
    observers = analyze_study(run_dir / "observer").as_dict()
    assert measures["observer_sensitivity"]["value"] == observers["combined"]["sensitivity"]
    assert measures["observer_kappa"]["value"] == observers["agreement"]["kappa"]
    assert summary["sections"] == ALL_SECTIONS and summary["notes"] == []


def test_rendering_is_pure_and_matches_between_html_and_markdown(run_dir: Path) -> None:
    data = collect(run_dir)
    assert render_report(data) == render_report(data)
    html, md = render_report(data), render_markdown(data)
    assert 'src="figures/' not in html  # no figures drawn yet: none referenced
    for m in data.measures:
        assert m.display in html and m.display in md


def test_missing_parts_become_notes_not_crashes(run_copy) -> None:
    folder = run_copy(drop=("classifier", "generator", "sweep", "observer", "split.csv", "defences"))
    page = build_report(folder)
    summary = read_json(page.parent / "summary.json")
    assert summary["sections"] == ["summary", "data", "attack", "reproducibility"]
    notes = " ".join(summary["notes"])
    for part in ("Classifier:", "Robustness curves:", "Observer study:", "Defences:"):
        assert part in notes
    text = page.read_text(encoding="utf-8")
    assert "Not in this report" in text and "generator settings left out" in text
    assert all((page.parent / unquote(r)).is_file() for r in _parse(page).refs if _local(r))


def test_malformed_files_are_reported_not_raised(run_copy) -> None:
    folder = run_copy()
    (folder / "adv-test" / "attack_metrics.json").write_text("{ truncated")
    (folder / "classifier" / "history.csv").write_text("loss,acc\n1,2\n")
    (folder / "classifier" / "test" / "metrics.json").write_text("{}")  # valid JSON, nothing in it
    (folder / "sweep" / "sweep.csv").write_text("garbage\n")
    data = collect(folder)
    assert data.attack is not None and data.attack.grid  # the images still show
    assert any(n.startswith("Robustness curves: cannot read") for n in data.notes)
    page = build_report(folder)
    html = page.read_text(encoding="utf-8")
    assert "attack measures left out: cannot read attack_metrics.json" in html
    assert "training curves left out" in html
    assert "test-set evaluation left out: cannot read metrics.json (KeyError" in html  # read typed, or not at all


def test_bare_attack_folder(run_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(run_dir / "adv-test", tmp_path / "adv")
    page = build_report(folder)
    summary = read_json(page.parent / "summary.json")
    assert summary["kind"] == "attack"
    assert summary["sections"] == ["summary", "data", "attack", "reproducibility"]
    assert "accuracy_adv" in summary["measures"]
    assert any("outside this folder" in n for n in summary["notes"])


def test_bare_classifier_folder(tmp_path: Path, helpers) -> None:
    folder = tmp_path / "clf"
    helpers["write_classifier"](folder, np.random.default_rng(1))
    data = collect(folder)
    assert data.kind == "classifier" and data.attack is None
    keys = {m.key for m in data.measures}
    assert {"accuracy_clean", "balanced_accuracy", "macro_auc"} <= keys
    sections = [s["id"] for s in report_context(data)["sections"]]
    assert sections == ["summary", "data", "classifier", "reproducibility"]


def test_bare_2afc_study_without_and_with_answers(run_dir: Path, tmp_path: Path, helpers) -> None:
    study = create_study(run_dir / "adv-test", tmp_path / "study", n=6, design="2afc", seed=3).path
    data = collect(study)
    assert data.kind == "study" and data.observer is not None and data.observer.analysis is None
    assert "no results yet" in render_report(data)
    helpers["answer_study"](study, np.random.default_rng(2))
    data = collect(study)
    html = render_report(data)
    assert "altered image chosen" in html and "observer_altered_chosen" in {m.key for m in data.measures}
    assert not (study / "report").exists()  # collect writes nothing


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nothing to report"):
        collect(tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        collect(tmp_path / "absent")


def test_cli_report_command(run_copy) -> None:
    folder = run_copy(drop=("sweep", "observer"))
    result = CliRunner().invoke(cli.app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "report" / "index.html").is_file()
    assert "report:" in result.output


def test_defence_numbers_are_the_files_numbers(run_dir: Path, built: Path) -> None:
    from dermadv.defences.results import TransformsResult, from_dict
    from dermadv.evaluation.stats import format_interval, proportion_ci

    text = built.read_text(encoding="utf-8")
    result = from_dict(TransformsResult, read_json(run_dir / "defences" / "transforms" / "transforms.json"))
    for row in result.rows:
        worst = (row.adaptive or row.plain).worst_class_fooling
        assert worst is not None
        assert f"{format_interval(proportion_ci(worst.k, worst.n, method='wilson'))} {worst.k}/{worst.n}" in text
    assert "≥ 99% moved at" in text and "TPR at 5% FPR" in text and "L2 radius" in text
    assert "defence: certify" in text  # each defence folder's manifest in the reproducibility table


def test_a_bare_defence_folder_reports_its_defences(run_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(run_dir / "defences" / "card", tmp_path / "card")
    summary = read_json(build_report(folder).parent / "summary.json")
    assert "defences" in summary["sections"]
    assert not any(n.startswith("Defences:") for n in summary["notes"])


def test_an_interrupted_attack_is_refused_or_reported_as_interrupted(run_dir: Path, tmp_path: Path) -> None:
    """The report of an interrupted attack must not say it was applied to all its images."""
    folder = shutil.copytree(run_dir / "adv-test", tmp_path / "adv")
    write_json(folder / "manifest.json", {**read_json(folder / "manifest.json"), "status": "interrupted"})
    for png in sorted((folder / "images" / "adv").glob("*.png"))[::2]:
        png.unlink()
    saved = len(list((folder / "images" / "adv").glob("*.png")))
    with pytest.raises(RunError, match="unfinished run .*says interrupted.*--allow-incomplete"):
        build_report(folder)
    assert not (folder / "report").exists()
    summary = read_json(build_report(folder, allow_incomplete=True).parent / "summary.json")
    attack = next(p for p in summary["summary"] if p.startswith("The "))
    assert f"its run was interrupted: it saved {saved} of them" in attack and "was applied to" not in attack
    assert any(n.startswith("Unfinished run: this folder") for n in summary["notes"])
    result = CliRunner().invoke(cli.app, ["report", str(folder)])
    assert result.exit_code == 1


def test_an_unfinished_stage_of_a_run_folder_is_refused(run_copy) -> None:
    folder = run_copy()
    manifest = folder / "classifier" / "manifest.json"
    write_json(manifest, {**read_json(manifest), "status": "failed"})
    with pytest.raises(RunError, match="classifier is the output of an unfinished run"):
        build_report(folder)

"""Success against queries: the curves, the audit's table and the report's figure, from a small predictions.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dermadv.errors import DataError
from dermadv.report import build_report
from dermadv.report.audit import render_audit_markdown, render_queries_markdown
from dermadv.report.figures import QUERIES_FIGURE, query_curves, read_query_curves, success_vs_queries
from dermadv.runs import write_json

CLASSES = ["akiec", "bcc", "mel", "nv"]
#: (label, adv_pred, queries): targeted to nv with a budget of 500 queries per image
ROWS = [
    ("akiec", "nv", 1),
    ("akiec", "nv", 5),
    ("akiec", "nv", 50),
    ("akiec", "akiec", 500),
    ("bcc", "nv", 8),
    ("bcc", "nv", 300),
    ("mel", "mel", 500),
    ("mel", "bcc", 500),
    ("nv", "nv", 1),
]


def _predictions() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"image_id": f"ISIC_{k:07d}", "label": label, "clean_pred": label, "adv_pred": adv, "queries": q}
            for k, (label, adv, q) in enumerate(ROWS)
        ]
    )


def _attack_folder(folder: Path, *, budget: int = 500) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _predictions().to_csv(folder / "predictions.csv", index=False)
    write_json(
        folder / "attack.json",
        {
            "method": "square",
            "params": f"Square(eps=0.0157, queries={budget}, p_init=None, loss='margin', norm='linf', seed=0)",
            "eps": 4 / 255,
            "target": "nv",
            "classes": CLASSES,
            "image_size": [16, 16],
            "queries": {"queries": 2000, "calls": 40, "model_seconds": 1.0, "attack_queries": 1864},
        },
    )
    return folder


def test_targeted_shares_and_medians() -> None:
    curves = query_curves(_predictions(), target="nv", budget=500, classes=CLASSES)
    by_class = {c.label: c for c in curves.curves}
    assert list(by_class) == ["akiec", "bcc", "mel"]  # the target class is left out
    akiec, bcc, mel = by_class["akiec"], by_class["bcc"], by_class["mel"]
    assert [akiec.fooled_within(q) for q in (1, 4, 5, 49, 50, 500)] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75]
    assert akiec.median_queries == 5.0
    assert (bcc.fooled_within(10), bcc.fooled_within(299), bcc.fooled_within(300)) == (0.5, 0.5, 1.0)
    assert bcc.median_queries == 154.0  # median of 8 and 300
    assert mel.fooled_within(500) == 0.0  # moved to bcc, not to the target
    assert mel.median_queries is None


def test_untargeted_counts_any_misclassification() -> None:
    curves = query_curves(_predictions(), target=None)
    by_class = {c.label: c for c in curves.curves}
    assert set(by_class) == {"akiec", "bcc", "mel", "nv"}
    assert curves.budget == 500  # the most any image spent
    assert by_class["mel"].fooled_within(500) == 0.5
    assert by_class["mel"].median_queries == 500.0
    assert by_class["nv"].fooled_within(500) == 0.0


def test_table_marks_beyond_the_budget() -> None:
    table = query_curves(_predictions(), target="nv", budget=500, classes=CLASSES).table()
    assert table["marks"] == [10, 100, 1000] and table["budget"] == 500
    akiec = table["classes"][0]
    assert akiec["label"] == "akiec" and akiec["n"] == 4
    assert akiec["within"] == {10: 0.5, 100: 0.75, 1000: None}
    assert akiec["fooled"] == 0.75 and akiec["median_queries"] == 5.0


def test_audit_markdown_table(tmp_path: Path) -> None:
    table = query_curves(_predictions(), target="nv", budget=500, classes=CLASSES).table()
    lines = render_queries_markdown(table, figure=QUERIES_FIGURE)
    assert f"]({QUERIES_FIGURE})" in "\n".join(lines)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["akiec"] == "| akiec | 4 | 50% | 75% | – | 75% | 5 |"
    assert rows["bcc"] == "| bcc | 2 | 50% | 50% | – | 100% | 154 |"
    assert rows["mel"] == "| mel | 2 | 0% | 0% | – | 0% | – |"
    assert "nv" not in rows


def test_figure_from_folder_reads_target_and_budget(tmp_path: Path) -> None:
    folder = _attack_folder(tmp_path / "attack", budget=1000)
    out = tmp_path / "figures" / QUERIES_FIGURE
    curves = success_vs_queries(folder, out)
    assert curves.target == "nv" and curves.budget == 1000  # from the attack's repr, not the most spent
    assert [c.label for c in curves.curves] == ["akiec", "bcc", "mel"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    from_frame = success_vs_queries(_predictions(), tmp_path / "frame.png", target="nv", budget=1000)
    assert [c.fooled_within(100) for c in from_frame.curves] == [c.fooled_within(100) for c in curves.curves]


def test_bad_predictions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="queries"):
        query_curves(_predictions().drop(columns="queries"), target="nv")
    with pytest.raises(DataError, match="budget 100"):
        query_curves(_predictions(), target="nv", budget=100)


def test_render_audit_markdown_includes_the_section() -> None:
    audit = {
        "model": {"spec": "m.onnx", "kind": "onnx", "fingerprint": "f", "image_size": [16, 16], "classes": CLASSES},
        "threat_model": "score-based",
        "why": "scores only",
        "check": {"verdict": "ok"},
        "clean": {"n": 9, "accuracy": None, "balanced_accuracy": 0.5},
        "attack": {
            "target": "nv",
            "eps_255": 4.0,
            "method": "square",
            "n": 9,
            "fooling_ratio": {},
            "accuracy_clean": None,
            "accuracy_adv": None,
            "mcnemar_p": 0.5,
            "worst_class": "mel",
            "queries": None,
        },
        "checks": [],
        "timing": {"wall_s": 1.0, "model_s": 0.5, "dermadv_s": 0.5, "dermadv_share": 0.5, "queries": 9},
    }
    assert "Success against queries" not in render_audit_markdown(audit)
    table = query_curves(_predictions(), target="nv", budget=500, classes=CLASSES).table()
    page = render_audit_markdown(audit, query_table=table, queries_figure=QUERIES_FIGURE)
    assert "## Success against queries" in page and "| akiec | 4 | 50% | 75% | – | 75% | 5 |" in page
    assert page.index("Success against queries") < page.index("Reliability checks")


def test_report_of_a_query_attack_shows_the_figure(tmp_path: Path) -> None:
    folder = _attack_folder(tmp_path / "attack")
    page = build_report(folder)
    assert (page.parent / "figures" / "success_vs_queries.png").is_file()
    assert "figures/success_vs_queries.png" in page.read_text(encoding="utf-8")
    assert "success_vs_queries.png" in (page.parent / "report.md").read_text(encoding="utf-8")
    assert read_query_curves(folder).budget == 500


def test_folder_whose_images_spent_more_than_its_recorded_budget(tmp_path: Path) -> None:
    folder = _attack_folder(tmp_path / "attack", budget=100)  # the repr says 100, an image spent 500
    assert read_query_curves(folder).budget == 500

"""Study design: sample, plan, lossless opaque export, key kept apart, invitations."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv.errors import ConfigError, DataError, DermadvError
from dermadv.observer.storage import StudyDB
from dermadv.observer.study import (
    ITEM_ID_RE,
    TOKEN_RE,
    create_study,
    hash_token,
    invite_observer,
    load_answer_key,
    load_study,
)
from dermadv.runs import read_json, run_complete, write_json


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_single_design_plan_and_lossless_export(make_study, attack_dir: Path) -> None:
    study = make_study(n=10, perturbed_share=0.6)
    key = load_answer_key(study.path)
    assert study.design == "single" and study.n_items == 10 and set(key) == set(study.item_ids)
    assert Counter(e.condition for e in key.values()) == {"perturbed": 6, "clean": 4}
    assert len({e.image_id for e in key.values()}) == 10
    for entry in key.values():
        exported = study.image_path(entry.item_id)
        source = attack_dir / "images" / ("adv" if entry.altered else "clean") / f"{entry.image_id}.png"
        with Image.open(exported) as im:
            assert im.format == "PNG" and not {k for k in im.info if k not in ("dpi", "gamma")}
        np.testing.assert_array_equal(_pixels(exported), _pixels(source))
        # the other version differs: the plan decides what is shown
        other = attack_dir / "images" / ("clean" if entry.altered else "adv") / f"{entry.image_id}.png"
        assert not np.array_equal(_pixels(exported), _pixels(other))
    assert run_complete(study.path)


def test_public_files_hide_the_plan(make_study) -> None:
    study = make_study(n=10)
    key = load_answer_key(study.path)
    public = (study.path / "study.json").read_text()
    assert all(ITEM_ID_RE.fullmatch(i) for i in study.item_ids)
    assert list(study.item_ids) == sorted(study.item_ids)
    for word in ("perturbed", "clean", "ISIC_", "adv", "label"):
        assert word not in public
    names = sorted(p.name for p in (study.path / "images").iterdir())
    assert names == sorted(f"{i}.png" for i in study.item_ids)
    assert not any(e.image_id in "".join(names) for e in key.values())


@pytest.mark.parametrize("design", ["single", "2afc"])
def test_the_study_lists_the_images_it_wrote(make_study, design: str) -> None:
    """The app serves only these names; a study without the list falls back to its ids."""
    study = make_study(n=4, design=design)
    written = {p.name for p in (study.path / "images").iterdir()}
    assert study.image_names == written == set(read_json(study.path / "study.json")["images"])
    meta = read_json(study.path / "study.json")
    del meta["images"]
    write_json(study.path / "study.json", meta)
    assert load_study(study.path).image_names == written


def test_same_seed_same_plan_other_seed_other_plan(attack_dir: Path, tmp_path: Path) -> None:
    def plan(seed: int, out: str) -> list[tuple[str, str | None]]:
        key = load_answer_key(create_study(attack_dir, tmp_path / out, n=12, seed=seed).path)
        return sorted((e.image_id, e.condition) for e in key.values())

    assert plan(3, "a") == plan(3, "b")
    assert plan(3, "c") != plan(4, "d")


def test_2afc_pairs_have_one_altered_side_balanced(make_study, attack_dir: Path) -> None:
    study = make_study(n=10, design="2afc")
    key = load_answer_key(study.path)
    assert Counter(e.altered_side for e in key.values()) == {"left": 5, "right": 5}
    for entry in key.values():
        assert entry.condition is None
        other = "right" if entry.altered_side == "left" else "left"
        adv = _pixels(attack_dir / "images" / "adv" / f"{entry.image_id}.png")
        clean = _pixels(attack_dir / "images" / "clean" / f"{entry.image_id}.png")
        np.testing.assert_array_equal(_pixels(study.image_path(entry.item_id, entry.altered_side)), adv)
        np.testing.assert_array_equal(_pixels(study.image_path(entry.item_id, other)), clean)
    with pytest.raises(DataError):
        study.image_path(study.item_ids[0])  # 2AFC items need a side


def test_image_path_refuses_unknown_items(make_study) -> None:
    study = make_study(n=4)
    for bad in ("../answer_key", "0" * 32, "/etc/passwd", study.item_ids[0] + "/../x"):
        with pytest.raises(DataError):
            study.image_path(bad)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"n": 500}, ConfigError, "exceeds the 24 image pairs"),
        ({"n": 0}, ConfigError, "at least 1"),
        ({"perturbed_share": 1.5}, ConfigError, "perturbed share"),
        ({"design": "3afc"}, ConfigError, "design must be"),
    ],
)
def test_bad_options_raise_one_line_errors(attack_dir: Path, tmp_path: Path, kwargs, error, fragment) -> None:
    with pytest.raises(error, match=fragment) as info:
        create_study(attack_dir, tmp_path / "s", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()


def test_missing_or_empty_attack_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        create_study(tmp_path / "nope", tmp_path / "s")
    (tmp_path / "empty" / "images" / "clean").mkdir(parents=True)
    with pytest.raises(DataError, match="no clean/adversarial pairs"):
        create_study(tmp_path / "empty", tmp_path / "s")


def test_only_complete_pairs_are_sampled_and_labels_optional(fake_attack_dir, tmp_path: Path) -> None:
    root = fake_attack_dir(tmp_path / "adv", n_images=5)
    (root / "images" / "adv" / "ISIC_0000000.png").unlink()
    (root / "predictions.csv").unlink()
    with pytest.raises(ConfigError, match="4 image pairs"):
        create_study(root, tmp_path / "s", n=5)
    key = load_answer_key(create_study(root, tmp_path / "s", n=4).path)
    assert "ISIC_0000000" not in {e.image_id for e in key.values()}
    assert all(e.label is None for e in key.values())


def test_existing_study_is_not_overwritten(make_study, attack_dir: Path) -> None:
    study = make_study(n=4)
    before = (study.path / "answer_key.json").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        create_study(attack_dir, study.path, n=4)
    assert (study.path / "answer_key.json").read_bytes() == before
    assert not [p for p in study.path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_invitations_unguessable_hashed_and_ordered_per_observer(make_study) -> None:
    study = make_study(n=10)
    a = invite_observer(study.path, "Observer A")
    b = invite_observer(study.path, "Observer B")
    assert a.token != b.token and TOKEN_RE.fullmatch(a.token) and TOKEN_RE.fullmatch(b.token)
    assert a.link() == f"http://127.0.0.1:8000/s/{a.token}"
    raw = (study.path / "answers.sqlite").read_bytes()
    assert a.token.encode() not in raw and hash_token(a.token).encode() in raw
    db = StudyDB(study.db_path)
    assert db.observer_by_token_hash(hash_token(a.token)).name == "Observer A"
    orders = {}
    for inv in (a, b):
        items = []
        while (item := db.serve_next(inv.observer_id)) is not None:
            items.append(item)
            db.record_answer(inv.observer_id, item, answer="no", confidence=3)
        orders[inv.name] = items
    assert sorted(orders["Observer A"]) == sorted(orders["Observer B"]) == sorted(study.item_ids)
    assert orders["Observer A"] != orders["Observer B"]


def test_duplicate_name_and_reissue(make_study) -> None:
    study = make_study(n=4)
    first = invite_observer(study.path, "Observer A")
    with pytest.raises(ConfigError, match="already invited"):
        invite_observer(study.path, "Observer A")
    with pytest.raises(ConfigError, match="empty"):
        invite_observer(study.path, "  ")
    again = invite_observer(study.path, "Observer A", reissue=True)
    db = StudyDB(study.db_path)
    assert again.observer_id == first.observer_id
    assert db.observer_by_token_hash(hash_token(first.token)) is None
    assert db.observer_by_token_hash(hash_token(again.token)) is not None
    with pytest.raises(ConfigError, match="no observer named"):
        invite_observer(study.path, "Observer Z", reissue=True)


def test_load_study_errors(tmp_path: Path, make_study) -> None:
    with pytest.raises(DermadvError, match="not a study folder"):
        load_study(tmp_path)
    study = make_study(n=4)
    copy = tmp_path / "copy"
    shutil.copytree(study.path, copy)
    meta = json.loads((copy / "study.json").read_text())
    meta["item_ids"][0] = "../answer_key"
    (copy / "study.json").write_text(json.dumps(meta))
    with pytest.raises(DermadvError, match="malformed item id"):
        load_study(copy)


def test_cli_commands_and_one_line_errors(attack_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dermadv.cli.observer import app

    runner = CliRunner()
    out = tmp_path / "s1"
    args = ["create", str(attack_dir), "--n", "6", "--perturbed-share", "0.5", "--seed", "1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--design", "single"])
    assert result.exit_code == 0, result.output
    assert Counter(e.condition for e in load_answer_key(out).values()) == {"perturbed": 3, "clean": 3}
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and again.output.strip().count("\n") == 0 and "error:" in again.output

    invited = runner.invoke(app, ["invite", str(out), "--name", "Observer A", "--port", "8123"])
    assert invited.exit_code == 0 and re.fullmatch(
        r"http://127\.0\.0\.1:8123/s/[A-Za-z0-9_-]{43}", invited.output.strip()
    )
    status = runner.invoke(app, ["status", str(out)], env={"COLUMNS": "200"})
    assert status.exit_code == 0 and "Observer A" in status.output and "0/6" in status.output
    analyze = runner.invoke(app, ["analyze", str(out)])
    assert analyze.exit_code == 1 and "no answers yet" in analyze.output
    exported = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "a.csv")])
    assert exported.exit_code == 0 and (tmp_path / "a.csv").read_text().startswith("observer,observer_id,position")
    missing = runner.invoke(app, ["status", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "not a study folder" in missing.output

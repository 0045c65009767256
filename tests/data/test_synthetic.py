"""The built-in synthetic set: layout, determinism, learnability, and the cache folder's atomicity."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv.data import synthetic
from dermadv.data.classes import CLASSES
from dermadv.data.synthetic import (
    COLUMNS,
    METADATA,
    default_synthetic_root,
    ensure_synthetic,
    generate_synthetic,
)
from dermadv.errors import ConfigError, DataError

N_FULL = 1400


@pytest.fixture(scope="module")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default-size set, drawn once."""
    out = tmp_path_factory.mktemp("synthetic") / "set"
    generate_synthetic(out, n_images=N_FULL, seed=0)
    return out


def read_rows(root: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((root / METADATA).read_bytes().decode("utf-8"), newline="")))


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_ham10000(full_set: Path) -> None:
    root = full_set
    raw = (root / METADATA).read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and b"\n" not in b"".join(lines), "every line must end with CRLF, like the original"
    assert lines[0].decode() == ",".join(COLUMNS)
    rows = read_rows(root)
    assert len(rows) == N_FULL
    ids = [r["image_id"] for r in rows]
    assert len(set(ids)) == N_FULL
    assert all(re.fullmatch(r"SYN_\d{7}", i) for i in ids)
    assert all(re.fullmatch(r"SYNL_\d{7}", r["lesion_id"]) for r in rows)
    assert sorted(p.stem for p in (root / "images").glob("*.jpg")) == sorted(ids)
    for r in rows:
        assert r["dx_type"] in {"histo", "follow_up", "consensus", "confocal"}
        assert r["sex"] in {"male", "female", "unknown"}
        assert r["age"] == "" or 0 <= float(r["age"]) <= 85
        assert r["localization"]


def test_images_are_rgb_jpegs_of_quality_95(full_set: Path, tmp_path: Path) -> None:
    root = full_set
    reference = tmp_path / "q95.jpg"
    Image.new("RGB", (200, 150), (200, 150, 140)).save(reference, quality=95)
    with Image.open(reference) as ref:
        q95 = getattr(ref, "quantization")  # noqa: B009 (JpegImageFile only)
    for path in sorted((root / "images").glob("*.jpg"))[:50]:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (200, 150))
            assert getattr(img, "quantization") == q95  # noqa: B009


def test_classes_are_skewed_but_all_present(full_set: Path) -> None:
    counts = Counter(r["dx"] for r in read_rows(full_set))
    assert set(counts) == set(CLASSES)
    shares = {c: counts[c] / N_FULL for c in CLASSES}
    assert 0.40 <= shares["nv"] <= 0.50
    assert all(shares[c] >= 0.05 for c in CLASSES if c != "nv"), shares
    assert max(shares, key=lambda c: shares[c]) == "nv"


def test_some_lesions_have_several_images(full_set: Path) -> None:
    rows = read_rows(full_set)
    per_lesion = Counter(r["lesion_id"] for r in rows)
    assert set(per_lesion.values()) == {1, 2, 3}
    assert 0.05 < sum(n > 1 for n in per_lesion.values()) / len(per_lesion) < 0.5
    dx_of: dict[str, set[str]] = {}
    for r in rows:
        dx_of.setdefault(r["lesion_id"], set()).add(r["dx"])
    assert all(len(v) == 1 for v in dx_of.values()), "one lesion, one diagnosis"
    lesion = next(lid for lid, n in per_lesion.items() if n == 3)
    views = [
        np.asarray(Image.open(full_set / "images" / f"{r['image_id']}.jpg")) for r in rows if r["lesion_id"] == lesion
    ]
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[1], views[2])


def test_the_reader_accepts_it(full_set: Path) -> None:
    from dermadv.data.ham10000 import load_ham10000

    ds = load_ham10000(full_set)
    assert len(ds) == N_FULL and len(set(ds.lesion_ids)) < N_FULL
    assert set(ds.class_counts().values()) != {0}


def features(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """16×16 pixels plus a 64-bin joint colour histogram per image; labels; lesion ids."""
    rows = read_rows(root)
    feats = []
    for r in rows:
        with Image.open(root / "images" / f"{r['image_id']}.jpg") as img:
            small = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR))
        tiny = np.asarray(Image.fromarray(small).resize((16, 16), Image.Resampling.BILINEAR)).ravel() / 255.0
        q = (small // 64).reshape(-1, 3)
        hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(q)
        feats.append(np.concatenate([tiny, hist]))
    labels = np.array([CLASSES.index(r["dx"]) for r in rows])
    return np.stack(feats), labels, np.array([r["lesion_id"] for r in rows])


def test_a_linear_model_learns_it_but_not_perfectly(full_set: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupShuffleSplit
    from sklearn.preprocessing import StandardScaler

    x, y, groups = features(full_set)
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0).split(x, y, groups))
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(max_iter=300, C=0.05).fit(scaler.transform(x[train]), y[train])
    accuracy = float((clf.predict(scaler.transform(x[test])) == y[test]).mean())
    majority = np.bincount(y[test]).max() / len(test)
    assert accuracy > majority + 0.12, f"accuracy {accuracy:.3f} vs majority-class rate {majority:.3f}"
    assert accuracy < 0.98, f"accuracy {accuracy:.3f}: the set is trivially separable"


@pytest.mark.slow
def test_a_small_cnn_learns_it_well_but_not_perfectly(full_set: Path) -> None:
    import torch
    from sklearn.model_selection import GroupShuffleSplit
    from torch import nn

    root = full_set
    rows = read_rows(root)
    images = np.stack([np.asarray(Image.open(root / "images" / f"{r['image_id']}.jpg").resize((32, 32))) for r in rows])
    y = np.array([CLASSES.index(r["dx"]) for r in rows])
    train, test = next(
        GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0).split(y, y, [r["lesion_id"] for r in rows])
    )
    torch.manual_seed(0)
    x, labels = torch.tensor(images).permute(0, 3, 1, 2).float() / 255, torch.tensor(y)

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
            nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip

    model = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.append(nn.Linear(128, len(CLASSES)))
    epochs, batch = 20, 64
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * -(-len(train) // batch))
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        model.train()
        order = rng.permutation(train)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            xb = x[idx].flip(3) if rng.random() < 0.5 else x[idx]
            loss = nn.functional.cross_entropy(model(xb), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == labels[test]).float().mean())
    assert 0.75 <= accuracy < 0.99, accuracy


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = all_files(generate_synthetic(tmp_path / "a", n_images=24, seed=3))
    b = all_files(generate_synthetic(tmp_path / "b", n_images=24, seed=3))
    c = all_files(generate_synthetic(tmp_path / "c", n_images=24, seed=4))
    assert a == b
    assert a[METADATA] != c[METADATA]
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != c.get(k) for k in jpgs) == len(jpgs)


def test_small_sets_keep_every_class_and_the_size(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "s", n_images=9, seed=1, size=(60, 80))
    rows = read_rows(root)
    assert len(rows) == 9 and {r["dx"] for r in rows} == set(CLASSES)
    with Image.open(root / "images" / f"{rows[0]['image_id']}.jpg") as img:
        assert img.size == (80, 60)


@pytest.mark.parametrize(("kwargs", "match"), [({"n_images": 0}, "n_images"), ({"size": (16, 16)}, "32×32")])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_synthetic(tmp_path / "x", **kwargs)  # type: ignore[arg-type]


def test_default_root_follows_the_cache_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERMADV_CACHE", str(tmp_path))
    assert default_synthetic_root() == tmp_path / "synthetic-v1-seed0-n1400"
    assert default_synthetic_root(n_images=50, seed=2).name == "synthetic-v1-seed2-n50"
    monkeypatch.delenv("DERMADV_CACHE")
    assert default_synthetic_root().parent == Path.home() / ".cache" / "dermadv"


def test_ensure_draws_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERMADV_CACHE", str(tmp_path))
    root = ensure_synthetic(n_images=12, seed=5)
    assert root == default_synthetic_root(n_images=12, seed=5)
    assert len(read_rows(root)) == 12
    before = all_files(root)

    def must_not_run(*args: object, **kwargs: object) -> Path:
        raise AssertionError("a complete set was drawn again")

    monkeypatch.setattr(synthetic, "generate_synthetic", must_not_run)
    assert ensure_synthetic(n_images=12, seed=5) == root
    assert all_files(root) == before
    assert [p.name for p in tmp_path.iterdir()] == [root.name], "no temporary folders left behind"


def test_ensure_leaves_nothing_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out: Path, **kwargs: object) -> Path:
        (out / "images").mkdir(parents=True)
        (out / "images" / "SYN_0000001.jpg").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_synthetic", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "set", n_images=12, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_ensure_fills_an_empty_folder_and_refuses_others(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(read_rows(ensure_synthetic(empty, n_images=8, seed=0))) == 8
    with pytest.raises(DataError, match="different synthetic set .*seed 0"):
        ensure_synthetic(empty, n_images=8, seed=1)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a complete synthetic set"):
        ensure_synthetic(junk, n_images=8, seed=0)
    assert (junk / "notes.txt").read_text() == "mine"

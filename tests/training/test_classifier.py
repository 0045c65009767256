"""Classifier training: run outputs, CPU determinism, resume after interruption, loss weights, calibration, augmentation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from dermadv.data.classes import CLASSES
from dermadv.data.load import Prepared, prepare, to_float
from dermadv.errors import ConfigError, RunError
from dermadv.models.checkpoints import load_checkpoint, load_state
from dermadv.models.inference import predict_logits
from dermadv.pipeline import train as pipeline
from dermadv.pipeline.train import fit
from dermadv.runs import read_json, run_complete
from dermadv.training import classifier as training
from dermadv.training.augment import AugmentConfig, augment
from dermadv.training.classifier import TrainConfig, calibrate_logit_bias, class_weights, lr_lambda

TIMING = ["seconds", "images_per_s"]  # the only history columns allowed to differ between identical runs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module folder whose ``cache/`` is ``$DERMADV_CACHE`` for every test here."""
    folder = tmp_path_factory.mktemp("training")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMADV_CACHE", str(folder / "cache"))
        yield folder


@pytest.fixture(scope="module")
def prepared(workdir: Path, synthetic_root: Path) -> Prepared:
    return prepare(synthetic_root, image_size=32, seed=0, progress=False)


def tiny_config(out: Path, data: Path, **changes: Any) -> TrainConfig:
    base = TrainConfig(
        out=out, data=str(data), arch="resnet18", image_size=32, epochs=2, batch_size=32, lr=1e-3, progress=False
    )
    return replace(base, **changes)


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "train_state.pt", map_location="cpu", weights_only=False)["model"]


def history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv")


def assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(history(a).drop(columns=TIMING), history(b).drop(columns=TIMING))
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ca, cb = load_state(a / "model.safetensors")[0], load_state(b / "model.safetensors")[0]
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


@pytest.fixture(scope="module")
def straight(workdir: Path, synthetic_root: Path, prepared: Prepared) -> Path:
    fit(tiny_config(workdir / "straight", synthetic_root), prepared=prepared)
    return workdir / "straight"


def test_run_folder_outputs(straight: Path, prepared: Prepared) -> None:
    for name in ("model.safetensors", "history.csv", "manifest.json", "split.csv", "train_metrics.json"):
        assert (straight / name).is_file(), name
    manifest = read_json(straight / "manifest.json")
    assert manifest["status"] == "complete" and run_complete(straight)
    assert manifest["command"] == "train"
    assert manifest["seed"] == 0
    assert manifest["config"]["arch"] == "resnet18" and manifest["config"]["image_size"] == 32
    assert manifest["config"]["augment_config"]["rotation"] == AugmentConfig().rotation
    assert {"python", "torch", "torchvision", "numpy", "dermadv"} <= set(manifest["versions"])
    assert manifest["data_fingerprint"] == prepared.dataset.fingerprint
    assert "git_commit" in manifest
    assert manifest["epochs_run"] == 2 and {"train", "total"} <= set(manifest["timings_s"])
    pd.testing.assert_frame_equal(pd.read_csv(straight / "split.csv", dtype=str, keep_default_na=False), prepared.frame)
    hist = history(straight)
    assert list(hist.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_acc",
        "val_balanced_acc",
        "lr",
        "seconds",
        "images_per_s",
    ]
    assert hist["epoch"].tolist() == [0, 1]
    assert np.isfinite(hist[["train_loss", "val_loss"]].to_numpy()).all()


def test_checkpoint_is_the_best_validation_epoch(straight: Path, prepared: Prepared) -> None:
    model, meta = load_checkpoint(straight / "model.safetensors")
    assert meta.arch == "resnet18" and meta.classes == CLASSES and meta.image_size == (32, 32)
    assert meta.data_fingerprint == prepared.dataset.fingerprint
    hist = history(straight)
    best = int(hist["val_balanced_acc"].to_numpy().argmax())  # the first epoch reaching the maximum
    assert json.loads(meta.extra)["epoch"] == best
    val = prepared.indices("val")
    pred = predict_logits(model, prepared.images, indices=val).argmax(1).numpy()
    labels = prepared.dataset.labels[val]
    assert float((pred == labels).mean()) == pytest.approx(hist["val_acc"][best], abs=1e-12)
    assert balanced_accuracy_score(labels, pred) == pytest.approx(hist["val_balanced_acc"][best], abs=1e-12)


def test_select_last_keeps_the_final_epoch(workdir: Path, synthetic_root: Path, prepared: Prepared) -> None:
    """select=last (adversarial training) keeps the last epoch's weights whatever validation says."""
    run = workdir / "last"
    fit(tiny_config(run, synthetic_root, epochs=3, select="last", patience=1), prepared=prepared)
    _, meta = load_checkpoint(run / "model.safetensors")
    assert len(history(run)) == 3 and json.loads(meta.extra)["epoch"] == 2  # each epoch "improves": no early stop
    checkpoint, final = load_state(run / "model.safetensors")[0], model_state(run)
    assert all(torch.equal(checkpoint[k], final[k]) for k in checkpoint)


def test_same_seed_same_run(straight: Path, workdir: Path, synthetic_root: Path, prepared: Prepared) -> None:
    fit(tiny_config(workdir / "again", synthetic_root), prepared=prepared)
    assert_same_run(straight, workdir / "again")


def test_other_seed_other_run(straight: Path, workdir: Path, synthetic_root: Path, prepared: Prepared) -> None:
    fit(tiny_config(workdir / "seed1", synthetic_root, seed=1, epochs=1), prepared=prepared)
    assert not torch.equal(
        model_state(straight)["backbone.fc.weight"], model_state(workdir / "seed1")["backbone.fc.weight"]
    )


def test_resume_after_interruption_matches_a_straight_run(
    straight: Path, workdir: Path, synthetic_root: Path, prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = workdir / "interrupted"
    original = training.train_one_epoch

    def interrupted(*args: Any, **kwargs: Any) -> float:
        if args[-1] == 1:  # the epoch argument: stop as a Ctrl-C would, after epoch 0 was saved
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(out, synthetic_root), prepared=prepared)
    assert not run_complete(out), "an interrupted run must not look finished"
    assert history(out)["epoch"].tolist() == [0]
    with pytest.raises(RunError, match="--resume"):
        fit(tiny_config(out, synthetic_root), prepared=prepared)
    monkeypatch.setattr(pipeline, "train_one_epoch", original)
    fit(tiny_config(out, synthetic_root, resume=True), prepared=prepared)
    assert run_complete(out)
    assert_same_run(straight, out)


def test_resume_with_more_epochs_continues(
    straight: Path, workdir: Path, synthetic_root: Path, prepared: Prepared
) -> None:
    """A finished 1-epoch run extended to 2 epochs keeps epoch 0 and trains only epoch 1.

    It equals a straight 2-epoch run here because the one-epoch warm-up (the default) fills epoch 0 in
    both schedules. With a shorter warm-up it would not: the cosine spans the configured number of
    epochs, so a 1-epoch run decays its rate to zero inside epoch 0 and the extension restarts it.
    """
    out = workdir / "extended"
    fit(tiny_config(out, synthetic_root, epochs=1), prepared=prepared)
    first = history(out)
    fit(tiny_config(out, synthetic_root, epochs=2, resume=True), prepared=prepared)
    longer = history(out)
    assert longer["epoch"].tolist() == [0, 1]
    pd.testing.assert_frame_equal(longer.iloc[:1], first)
    assert read_json(out / "manifest.json")["epochs_run"] == 2
    assert_same_run(straight, out)


def test_refuses_an_existing_run_without_resume(straight: Path, synthetic_root: Path) -> None:
    before = (straight / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already holds a training run; pass --resume"):
        fit(tiny_config(straight, synthetic_root))
    assert (straight / "model.safetensors").read_bytes() == before


def test_resume_with_other_settings_is_refused_before_any_work(straight: Path, synthetic_root: Path) -> None:
    """A run folder is one run: --resume with another --image-size names it, and the finished run stays complete."""
    before = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}
    with pytest.raises(RunError) as info:
        fit(tiny_config(straight, synthetic_root, image_size=48, lr=2e-3, resume=True))
    message = str(info.value)
    assert "image_size: 32 there, 48 now" in message and "lr: 0.001 there, 0.002 now" in message
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()} == before


def test_resume_with_another_split_is_refused(straight: Path, synthetic_root: Path, tmp_path: Path) -> None:
    split = pd.read_csv(straight / "split.csv")
    split.loc[split["split"] == "test", "split"] = "train"
    split.to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(RunError, match="split: '[0-9a-f]+' there, '[0-9a-f]+' now"):
        fit(tiny_config(straight, synthetic_root, split_file=str(tmp_path / "split.csv"), resume=True))
    assert run_complete(straight)


def test_resume_of_a_complete_run_does_nothing(straight: Path, synthetic_root: Path, prepared: Prepared) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in straight.iterdir()}
    assert fit(tiny_config(straight, synthetic_root, resume=True), prepared=prepared) == straight / "model.safetensors"
    assert {p.name: p.stat().st_mtime_ns for p in straight.iterdir()} == before


def test_an_image_size_the_architecture_cannot_take_is_one_clear_error(
    workdir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="densenet121 cannot take 16×16 images.*--image-size"):
        fit(tiny_config(tmp_path / "run", synthetic_root, arch="densenet121", image_size=16))
    assert not (tmp_path / "run").exists()


def test_the_checkpoint_records_its_training_images(straight: Path, prepared: Prepared) -> None:
    """The ids of the train split, sorted, with their fingerprint, in the checkpoint's header."""
    from dermadv.data.dataset import fingerprint_of
    from dermadv.models.checkpoints import read_training_images

    train = sorted(prepared.dataset.image_ids[i] for i in prepared.indices("train"))
    _, meta = load_checkpoint(straight / "model.safetensors")
    assert list(meta.training_images) == train and meta.training_images_fingerprint == fingerprint_of(train)
    assert read_training_images(straight / "model.safetensors") == set(train)
    assert train[0] not in repr(meta)  # thousands of ids stay out of logs and error messages


def test_a_last_batch_of_one_image_is_merged_into_the_one_before(
    workdir: Path, synthetic_root: Path, prepared: Prepared
) -> None:
    """49 images at batch 16 leave one image for batch norm, which cannot train on it: it is merged."""
    assert training.batch_sizes(49, 16) == [16, 16, 17]
    assert training.batch_sizes(56, 55) == [56]
    assert training.batch_sizes(48, 16) == [16, 16, 16] and training.batch_sizes(50, 16) == [16, 16, 16, 2]
    assert training.batch_sizes(1, 16) == [1] and training.batch_sizes(0, 16) == []
    run = workdir / "remainder-one"
    fit(tiny_config(run, synthetic_root, epochs=1, batch_size=16, max_train_images=49), prepared=prepared)
    assert run_complete(run)


def test_a_training_split_of_one_class_is_refused_before_training(
    synthetic_root: Path, prepared: Prepared, tmp_path: Path
) -> None:
    """A split whose train part is one class would train a model that only answers it."""
    frame = prepared.frame.copy()
    frame.loc[(frame["split"] == "train") & (frame["dx"] != "nv"), "split"] = "val"
    one_class = Prepared(prepared.dataset, frame, prepared.images, prepared.size)
    with pytest.raises(ConfigError, match=r"one class only \(nv: \d+ images\); a classifier needs at least 2"):
        fit(tiny_config(tmp_path / "run", synthetic_root), prepared=one_class)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- pieces


def test_class_weights() -> None:
    labels = np.array([0] * 60 + [1] * 15 + [2] * 5)
    for mode, power in [("inverse", 1.0), ("sqrt", 0.5)]:
        w = class_weights(labels, 4, mode).numpy().astype(np.float64)
        assert w[labels].mean() == pytest.approx(1.0)
        counts = np.bincount(labels, minlength=3)
        balanced = w[:3] * counts**power  # w ∝ count^-power
        np.testing.assert_allclose(balanced, balanced[0], rtol=1e-6)
        assert w[3] == pytest.approx(w[2] * 5**power)  # an absent class counts as one image
    np.testing.assert_array_equal(class_weights(labels, 3, "none").numpy(), np.ones(3))
    inverse = class_weights(labels, 3, "inverse").numpy()
    totals = np.bincount(labels, weights=inverse[labels])
    np.testing.assert_allclose(totals, totals[0], rtol=1e-6)  # every class weighs the same in the loss
    with pytest.raises(ConfigError, match="class_balance"):
        class_weights(labels, 3, "log")


def acc_plus_balanced(logits: torch.Tensor, labels: np.ndarray) -> float:
    pred = logits.argmax(1).numpy()
    return float((pred == labels).mean() + balanced_accuracy_score(labels, pred))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_calibrate_logit_bias_never_lowers_its_score() -> None:
    rng = np.random.default_rng(0)
    for trial in range(2):
        labels = rng.choice(7, size=300, p=[0.05, 0.05, 0.1, 0.02, 0.1, 0.65, 0.03])
        logits = torch.from_numpy(rng.normal(size=(300, 7))).float()
        logits[torch.arange(300), torch.from_numpy(labels)] += 1.5  # informative
        logits[:, 5] += 1.0 + 2 * trial  # skewed towards the majority class, as a nevus-heavy model is
        bias = calibrate_logit_bias(logits, labels, rounds=1)
        assert bias.shape == (7,)
        before, after = acc_plus_balanced(logits, labels), acc_plus_balanced(logits + bias, labels)
        assert after >= before
        if trial == 1:
            assert after > before + 0.1, "a strong prior skew should be mostly undone"
            assert float(bias[5]) < float(bias.mean()), "the majority class should be pushed down relative to the rest"


def test_lr_schedule() -> None:
    total, warmup = 100, 10
    lrs = [lr_lambda(s, total=total, warmup=warmup) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(0.1) and lrs[warmup - 1] == pytest.approx(1.0)
    assert lrs[warmup] == pytest.approx(1.0)
    assert lrs[warmup + 45] == pytest.approx(0.5)
    assert lrs[total] == pytest.approx(0.0, abs=1e-12) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))


def test_predict_logits_with_flips_averages_four_views() -> None:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    from dermadv.models.classifier import Classifier

    model = Classifier(backbone, 4)
    images = np.random.default_rng(0).integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    plain = predict_logits(model, images, batch_size=3)
    x = to_float(torch.from_numpy(images))
    with torch.no_grad():
        torch.testing.assert_close(plain, model(x))
        views = [model(x), model(x.flip(3)), model(x.flip(2)), model(x.flip(2, 3))]
    torch.testing.assert_close(predict_logits(model, images, tta=True, batch_size=4), sum(views) / 4)
    idx = np.array([7, 2])
    torch.testing.assert_close(predict_logits(model, images, indices=idx), plain[idx])


def test_to_float() -> None:
    images = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    x = to_float(images)
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, 2, 4, 5], images[1, 4, 5, 2].float() / 255)


def random_images(n: int = 16, size: int = 24, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    images[0], images[1] = 0.0, 1.0  # extremes must stay in range too
    return images


def test_augment_keeps_range_shape_and_is_seeded() -> None:
    images = random_images()
    strong = AugmentConfig(brightness=0.5, contrast=0.5, saturation=0.5)
    out = augment(images, strong, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, images)
    assert torch.equal(out, augment(images, strong, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, augment(images, strong, torch.Generator().manual_seed(2)))
    rect = torch.rand(4, 3, 20, 28)
    assert augment(rect, AugmentConfig(), torch.Generator().manual_seed(0)).shape == rect.shape


NO_CHANGE = AugmentConfig(
    flips=False, rotation=0.0, scale=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0, saturation=0.0
)


def test_augment_identity_and_pure_flips() -> None:
    images = random_images(64)
    torch.testing.assert_close(augment(images, NO_CHANGE, torch.Generator().manual_seed(0)), images)
    out = augment(images, replace(NO_CHANGE, flips=True), torch.Generator().manual_seed(0))
    seen = set()
    for a, b in zip(images, out, strict=True):
        views = {"none": a, "h": a.flip(2), "v": a.flip(1), "hv": a.flip(1, 2)}
        match = [k for k, v in views.items() if torch.allclose(b, v, atol=1e-5)]
        assert match, "a flip-only augmentation must return an exact flip"
        seen.update(match)
    assert seen == {"none", "h", "v", "hv"}


def test_augment_rotation_keeps_the_centre() -> None:
    """Rotating about the centre with zoom 1 keeps the centre pixel's colour (a check on the affine's sign/origin)."""
    images = torch.zeros(8, 3, 33, 33)
    images[:, :, 14:19, 14:19] = 1.0
    out = augment(images, replace(NO_CHANGE, rotation=180.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :, 16, 16], torch.ones(8, 3), atol=1e-5, rtol=0)
    assert float(out[:, :, 0, 0].max()) < 1e-5

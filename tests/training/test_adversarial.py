"""Adversarial training: the training attacks, their effect on robustness, and the record in the checkpoint."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dermadv.attacks.gradient import PGD
from dermadv.errors import ConfigError, RunError
from dermadv.models.checkpoints import load_checkpoint
from dermadv.models.classifier import Classifier
from dermadv.pipeline.train import fit
from dermadv.training.adversarial import adversarial_batch, fgsm_rs, training_attack
from dermadv.training.classifier import TrainConfig

EPS = 8 / 255


def _loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(images), labels))


@pytest.mark.parametrize("method", ["pgd", "fgsm-rs"])
def test_training_batch_stays_in_budget_and_raises_the_loss(method: str, tiny) -> None:
    attack, record = training_attack(method, "8/255", 3)  # type: ignore[misc]
    images, labels = tiny.test_images[:64], tiny.test_labels[:64]
    adv = adversarial_batch(tiny.model, images, labels, attack)
    assert not adv.requires_grad and adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= EPS + 1e-6
    assert _loss(tiny.model, adv, labels) > _loss(tiny.model, images, labels)
    assert record.describe() == (
        {"method": "pgd", "eps": "8/255", "steps": 3} if method == "pgd" else {"method": "fgsm-rs", "eps": "8/255"}
    )
    assert all(p.requires_grad for p in tiny.model.parameters())  # weights unfrozen after crafting


def test_fgsm_rs_steps_from_a_random_start() -> None:
    attack = fgsm_rs(EPS)
    assert attack.random_start and attack.steps == 1 and attack.step_size == pytest.approx(1.25 * EPS)


def test_none_and_bad_options() -> None:
    assert training_attack("none", "2/255") is None
    with pytest.raises(ConfigError, match="adversarial must be one of"):
        training_attack("trades", "2/255")
    with pytest.raises(ConfigError, match="adv_generator"):
        training_attack("generator", "2/255")
    with pytest.raises(ConfigError, match="eps"):
        TrainConfig(out=Path("x"), adversarial="pgd", adv_eps="8")
    with pytest.raises(ConfigError, match="adv_steps"):
        TrainConfig(out=Path("x"), adversarial="pgd", adv_steps=0)


def _pgd_success(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float(PGD(EPS, steps=10, seed=0)(model, images, labels=labels).success.float().mean())


@pytest.mark.parametrize("method", ["pgd", "fgsm-rs"])
def test_adversarial_training_lowers_pgd_success(method: str, texture, train_tiny) -> None:
    """Madry et al.'s PGD training and Wong et al.'s fast FGSM cut PGD-10's success on held-out images by a quarter."""
    attack, _ = training_attack(method, EPS, 5)  # type: ignore[misc]
    robust = train_tiny("texture", batch_hook=lambda model, x, y: adversarial_batch(model, x, y, attack)).model
    images, labels = texture.test_images, texture.test_labels
    assert _pgd_success(robust, images, labels) < 0.75 * _pgd_success(texture.model, images, labels)
    with torch.no_grad():
        assert (robust(images).argmax(1) == labels).float().mean() > 0.9


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    out = tmp_path_factory.mktemp("adv-train") / "run"
    cfg = TrainConfig(
        out=out, data=str(synthetic_root), arch="resnet18", image_size=32, epochs=1, batch_size=32, progress=False
    )
    return fit(replace(cfg, adversarial="pgd", adv_eps="4/255", adv_steps=2))


def test_fit_records_the_training_attack_in_the_checkpoint(fit_run: Path) -> None:
    model, meta = load_checkpoint(fit_run)
    assert isinstance(model, Classifier)
    assert json.loads(meta.extra)["training_attack"] == {"method": "pgd", "eps": "4/255", "steps": 2}
    manifest = json.loads((fit_run.parent / "manifest.json").read_text())
    assert manifest["config"]["adversarial"] == "pgd"


def test_generator_training_attack_loads_a_fitted_generator(tmp_path: Path, tiny) -> None:
    from dermadv.attacks.generator import GeneratorSpec, PerturbationGenerator, save_generator

    classes = ("a", "b", "c", "d")
    torch.manual_seed(0)
    generator = PerturbationGenerator(EPS, channels=4, res_blocks=1).eval()
    path = tmp_path / "generator.safetensors"
    spec = GeneratorSpec(channels=4, res_blocks=1, eps=EPS, target="a", target_index=0, classes=classes)
    save_generator(path, generator, spec)
    attack, record = training_attack("generator", "2/255", generator=str(path), classes=classes)  # type: ignore[misc]
    images, labels = tiny.test_images[:8], tiny.test_labels[:8]
    adv = adversarial_batch(tiny.model, images, labels, attack)
    torch.testing.assert_close(adv, (images + generator(images)).clamp(0, 1).detach())
    assert record.describe() == {"method": "generator", "eps": "8/255", "generator": str(path)}
    with pytest.raises(ConfigError, match="classes"):
        training_attack("generator", "2/255", generator=str(path), classes=("x", "y", "z", "w"))


def test_init_fine_tunes_from_a_checkpoint(fit_run: Path, tmp_path: Path, synthetic_root: Path) -> None:
    """--init starts from the checkpoint's weights: with a vanishing learning rate the model stays that model."""
    start, _ = load_checkpoint(fit_run)
    cfg = TrainConfig(
        out=tmp_path / "ft",
        data=str(synthetic_root),
        arch="resnet18",
        image_size=32,
        epochs=1,
        batch_size=32,
        lr=1e-12,
        ema_decay=0.0,
        progress=False,
        init=str(fit_run),
        weights="imagenet",  # overridden by init: nothing is downloaded or looked up
    )
    tuned, meta = load_checkpoint(fit(cfg))
    assert meta.weights == f"init:{fit_run}"
    # the learned weights are the checkpoint's (BatchNorm running statistics, buffers, move with the new batches)
    before, after = dict(start.named_parameters()), dict(tuned.named_parameters())
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["init_fingerprint"]


def test_init_refuses_a_missing_or_mismatching_checkpoint(fit_run: Path, tmp_path: Path, synthetic_root: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig(out=tmp_path / "x", init=str(tmp_path / "missing.safetensors"))
    base = dict(data=str(synthetic_root), image_size=32, epochs=1, progress=False, init=str(fit_run))
    with pytest.raises(ConfigError, match="--arch resnet34"):
        fit(TrainConfig(out=tmp_path / "a", arch="resnet34", **base))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--image-size 32"):
        fit(TrainConfig(out=tmp_path / "b", arch="resnet18", **{**base, "image_size": 48}))  # type: ignore[arg-type]
    assert not (tmp_path / "a" / "model.safetensors").exists()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(fit_run.parent, unfinished)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    with pytest.raises(RunError, match="finish that run first"):
        fit(TrainConfig(out=tmp_path / "c", arch="resnet18", **{**base, "init": str(unfinished / fit_run.name)}))  # type: ignore[arg-type]


def test_noise_training_sees_noisy_images_and_records_sigma(
    fit_run: Path, tmp_path: Path, synthetic_root: Path
) -> None:
    """--noise-sigma (the base model of randomized smoothing): the same frozen model scores worse on its noisy
    training batches than on clean ones, and the checkpoint records the sigma."""
    base = TrainConfig(
        out=tmp_path / "clean", data=str(synthetic_root), arch="resnet18", image_size=32, epochs=1, batch_size=32,
        lr=1e-12, ema_decay=0.0, progress=False, init=str(fit_run),
    )  # fmt: skip
    losses = {}
    for sigma in (0.0, 0.5):
        out = fit(replace(base, out=tmp_path / f"s{sigma}", noise_sigma=sigma))
        history = (out.parent / "history.csv").read_text().splitlines()
        losses[sigma] = float(history[1].split(",")[1])
        extra = json.loads(load_checkpoint(out)[1].extra or "{}")
        assert extra.get("training_noise_sigma") == (sigma or None)
    assert losses[0.5] > losses[0.0] + 0.1, losses
    with pytest.raises(ConfigError, match="noise_sigma"):
        TrainConfig(out=Path("x"), noise_sigma=-0.1)


def test_adv_share_attacks_part_of_each_batch_and_is_recorded(
    tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--adv-share 0.5 (Goodfellow et al.'s clean + adversarial halves) attacks half of each batch and is recorded
    with the training attack; a share outside (0, 1] is refused before any work."""
    import dermadv.training.classifier as classifier_module

    attacked: list[tuple[int, int]] = []

    def counting(model, images, labels, attack):  # type: ignore[no-untyped-def]
        attacked.append((len(images), len(labels)))
        return adversarial_batch(model, images, labels, attack)

    monkeypatch.setattr(classifier_module, "adversarial_batch", counting)
    cfg = TrainConfig(
        out=tmp_path / "mix", data=str(synthetic_root), arch="resnet18", image_size=32, epochs=1, batch_size=32,
        progress=False, adversarial="fgsm-rs", adv_eps="4/255", adv_share=0.5,
    )  # fmt: skip
    _, meta = load_checkpoint(fit(cfg))
    assert attacked and all(n == m == 16 for n, m in attacked[:-1])  # every full batch of 32: its first 16
    assert json.loads(meta.extra)["training_attack"] == {"method": "fgsm-rs", "eps": "4/255", "share": 0.5}
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="adv_share"):
            TrainConfig(out=Path("x"), adversarial="pgd", adv_share=bad)

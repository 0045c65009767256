"""The AdvGAN generator: budget after 8-bit rounding, effect on held-out images, PNG round trip, resume, bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dermadv.attacks.apply import AttackTask, quantise, read_png, run_attack
from dermadv.attacks.generator import (
    GeneratorAttack,
    PerturbationGenerator,
    load_generator,
    save_generator,
    targeted_margin_loss,
)
from dermadv.attacks.runner import AttackRunConfig, attack_split
from dermadv.config import parse_eps
from dermadv.data.classes import CLASSES
from dermadv.errors import CheckpointError, ConfigError, DataError, RunError
from dermadv.models.checkpoints import load_checkpoint
from dermadv.runs import read_json, run_complete
from dermadv.training.augment import to_float
from dermadv.training.data import prepare
from dermadv.training.generator import GeneratorConfig, fit_generator

EPS_VALUES = [1 / 255, 2 / 255, 8 / 255]


def _saturated_generator(eps: float, *, seed: int = 0) -> PerturbationGenerator:
    """A generator whose ``tanh`` is driven to ±1, so its perturbation sits at the edge of the budget."""
    torch.manual_seed(seed)
    generator = PerturbationGenerator(eps, channels=8, res_blocks=1).eval()
    with torch.no_grad():
        generator.head.weight.mul_(1e3)
    return generator


def _random_uint8(n: int, h: int, w: int, *, seed: int) -> np.ndarray:
    """Random images with some pixels at 0 and 255, where clipping to [0, 1] matters."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    images[:, :2] = 0
    images[:, -2:] = 255
    return images


# --- the budget ---


@pytest.mark.parametrize("shape", [(30, 40), (33, 47), (150, 200)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("eps", EPS_VALUES, ids=lambda e: f"{round(e * 255)}/255")
def test_generator_output_keeps_shape_and_budget(eps: float, shape: tuple[int, int]) -> None:
    generator = _saturated_generator(eps)
    images = torch.rand(2, 3, *shape)
    with torch.no_grad():
        delta = generator(images)
    assert delta.shape == images.shape
    assert delta.abs().max() <= eps * (1 + 1e-6)
    assert delta.abs().max() > 0.99 * eps  # saturated: the check above is not vacuous


@pytest.mark.parametrize("eps", [*EPS_VALUES, 2.5 / 255], ids=lambda e: f"{e * 255:g}/255")
def test_quantise_stays_within_eps_even_for_an_overshooting_attack(eps: float) -> None:
    clean = torch.from_numpy(_random_uint8(4, 12, 16, seed=1)).permute(0, 3, 1, 2)
    far = (clean.float() / 255 + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    q = quantise(far, clean, eps)
    diff = q.int() - clean.int()
    assert q.dtype == torch.uint8
    assert diff.abs().max() == int(eps * 255 + 1e-6)  # floor: 2.5/255 allows 2 steps, not 3
    assert (diff.abs().float() / 255).max() <= eps + 1e-12
    inside = ((far * 255).round() - clean.float()).abs() <= int(eps * 255 + 1e-6)
    assert torch.equal(q[inside].float(), (far * 255).round()[inside])  # pixels within budget are only rounded


def _tiny_model(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )


@pytest.mark.parametrize("shape", [(30, 40), (150, 200)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("eps", EPS_VALUES, ids=lambda e: f"{round(e * 255)}/255")
def test_saved_pngs_keep_every_pixel_within_eps(eps: float, shape: tuple[int, int], tmp_path: Path) -> None:
    attack = GeneratorAttack(eps=eps, generator=_saturated_generator(eps))
    images = _random_uint8(3, *shape, seed=2)
    task = AttackTask(
        attack=attack,
        model=_tiny_model(len(CLASSES)),
        classes=CLASSES,
        images=images,
        image_ids=[f"IMG_{i}" for i in range(len(images))],
        labels=np.arange(len(images), dtype=np.int64),
        indices=np.arange(len(images)),
        target=5,
        eps=eps,
    )
    run_attack(task, tmp_path, progress=False)
    k = round(eps * 255)
    for i in range(len(images)):
        clean = read_png(tmp_path / "images" / "clean" / f"IMG_{i}.png").astype(int)
        adv = read_png(tmp_path / "images" / "adv" / f"IMG_{i}.png").astype(int)
        amplified = read_png(tmp_path / "images" / "perturbation" / f"IMG_{i}.png")
        assert clean.shape == adv.shape == amplified.shape == (*shape, 3)
        assert np.array_equal(clean, images[i])
        diff = adv - clean
        assert np.abs(diff).max() == k  # within the budget, and using all of it
        assert diff.min() == -k
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == len(images)


def test_targeted_margin_loss_is_zero_once_the_target_wins_by_kappa() -> None:
    logits = torch.tensor([[0.0, 1.0, 7.0], [0.0, 3.0, 1.0]])
    assert torch.allclose(targeted_margin_loss(logits, 2, 5.0), torch.tensor([0.0, 7.0]))


def test_seed_fixes_the_in_memory_fit(tiny) -> None:
    def fitted() -> torch.Tensor:
        attack = GeneratorAttack(eps=4 / 255, channels=4, res_blocks=1, epochs=1, seed=3)
        attack.fit(tiny.model, tiny.train_images[:64], target=1)
        return attack(tiny.model, tiny.test_images[:8], target=1).adv_images

    torch.manual_seed(123)
    first = fitted()
    torch.manual_seed(456)  # the global RNG must not matter
    assert torch.equal(first, fitted())
    assert all(p.requires_grad for p in tiny.model.parameters())  # the classifier is unfrozen again


# --- the effect on held-out images, and the PNG round trip (pipeline fixtures in conftest.py) ---


def _test_split(pipeline) -> tuple[nn.Module, list[str], torch.Tensor, np.ndarray]:
    """Classifier A and its held-out test split: image ids, uint8 N×H×W×3 images, labels."""
    model, meta = load_checkpoint(pipeline.checkpoint)
    prep = prepare(
        str(pipeline.data),
        image_size=meta.image_size,
        split_file=pipeline.checkpoint.parent / "split.csv",
        progress=False,
    )
    idx = prep.indices("test")
    ids = [prep.dataset.image_ids[i] for i in idx]
    return model, ids, torch.from_numpy(np.asarray(prep.images[idx])), prep.dataset.labels[idx]


def _target_log_odds(model: nn.Module, images_uint8: torch.Tensor, target: int) -> torch.Tensor:
    """Per-image log-odds of ``target`` for uint8 N×3×H×W images; registers moves near probability 0 or 1."""
    with torch.no_grad():
        log_prob = model(images_uint8.float() / 255).log_softmax(1)
    others = log_prob.clone()
    others[:, target] = -torch.inf
    return log_prob[:, target] - others.logsumexp(1)


def test_short_fit_raises_target_probability_on_held_out_images(pipeline) -> None:
    model, _, images, labels = _test_split(pipeline)
    fitted = load_generator(pipeline.generator)
    target = CLASSES.index(pipeline.target)
    assert fitted.spec.target_index == target
    keep = torch.from_numpy(labels != target)  # held-out test images that are not already the target
    clean_u8 = images[keep].permute(0, 3, 1, 2)

    def attacked(attack: GeneratorAttack) -> torch.Tensor:
        adv = attack(model, clean_u8.float() / 255, target=target).adv_images
        return quantise(adv, clean_u8, attack.eps)  # scored as saved: 8-bit

    unfitted = GeneratorAttack(eps=fitted.eps, channels=fitted.spec.channels, res_blocks=1, seed=0)
    clean = _target_log_odds(model, clean_u8, target)
    before = _target_log_odds(model, attacked(unfitted), target)
    after = _target_log_odds(model, attacked(fitted), target)
    assert after.mean() > clean.mean() + 1.0
    assert after.mean() > before.mean() + 1.0  # the fit, not any noise of this size, moves it
    assert (after > clean).float().mean() >= 0.8


def test_saved_png_round_trip_reproduces_in_memory_predictions(pipeline, adv_folder: Path) -> None:
    preds = pd.read_csv(adv_folder / "predictions.csv")
    model, ids, images, _ = _test_split(pipeline)
    assert preds["image_id"].tolist() == ids and len(ids) > 0

    # Deterministic: the generator's in-memory output, rounded to 8 bits, is bit for bit the saved PNG,
    # and the classifier's probabilities on it are the ones in predictions.csv.
    attack = load_generator(pipeline.generator)
    adv = attack(model, to_float(images), target=attack.spec.target_index).adv_images
    adv_u8 = quantise(adv, images.permute(0, 3, 1, 2), attack.eps).permute(0, 2, 3, 1)
    saved = torch.from_numpy(np.stack([read_png(adv_folder / "images" / "adv" / f"{i}.png") for i in ids]))
    assert torch.equal(adv_u8, saved)
    with torch.no_grad():
        probs = model(to_float(saved)).softmax(1).numpy()
    np.testing.assert_allclose(probs, preds[[f"adv_prob_{c}" for c in CLASSES]].to_numpy(), atol=2e-6)
    assert preds["adv_pred"].tolist() == [CLASSES[i] for i in probs.argmax(1)]

    # In memory (before rounding) and saved predictions agree for (nearly) every image, as reported.
    n_differ = int((preds["adv_pred"] != preds["inmem_adv_pred"]).sum())
    assert n_differ <= 0.05 * len(preds)
    metrics = read_json(adv_folder / "attack_metrics.json")
    assert metrics["inmem_agreement"]["n_differ"] == n_differ
    assert metrics["imperceptibility"]["linf_255"]["max"] <= 8
    assert metrics["n_over_budget"] == 0


def test_stored_size_attack_perturbs_the_non_square_file_resolution(pipeline, tmp_path: Path) -> None:
    """``--attack-size stored``: the generator works on the 60×80 stored images, the classifier's resize inside."""
    generator = fit_generator(
        GeneratorConfig(
            checkpoint=pipeline.checkpoint,
            out=tmp_path / "gen",
            data=str(pipeline.data),
            eps="2/255",
            attack_size="stored",
            epochs=1,
            batch_size=32,
            channels=4,
            res_blocks=1,
            progress=False,
        )
    )
    assert load_generator(generator).spec.image_size == (60, 80)
    out = tmp_path / "adv"
    metrics = attack_split(
        AttackRunConfig(
            checkpoint=pipeline.checkpoint, out=out, generator=generator, data=str(pipeline.data), progress=False
        )
    )
    info = read_json(out / "attack.json")
    assert info["attack_size"] == "stored"
    assert info["image_size"] == [60, 80] and info["classifier_input_size"] == [32, 32]
    preds = pd.read_csv(out / "predictions.csv")
    for image_id in preds["image_id"]:
        clean = read_png(out / "images" / "clean" / f"{image_id}.png").astype(int)
        adv = read_png(out / "images" / "adv" / f"{image_id}.png").astype(int)
        assert clean.shape == adv.shape == (60, 80, 3)
        assert np.abs(adv - clean).max() <= 2
    assert metrics["n_over_budget"] == 0


# --- resume ---


class _Interrupt(KeyboardInterrupt):
    pass


def _interrupt_at_epoch(epoch: int):
    """A stand-in for tqdm that raises when the given epoch starts, like Ctrl-C between epochs."""
    from tqdm.auto import tqdm

    def fake(iterable, *, desc: str = "", **kwargs):
        if desc == f"generator epoch {epoch}":
            raise _Interrupt
        return tqdm(iterable, desc=desc, **kwargs)

    return fake


def test_interrupted_fit_resumes_to_the_straight_fit(pipeline, tmp_path: Path, monkeypatch) -> None:
    base = GeneratorConfig(
        checkpoint=pipeline.checkpoint,
        out=tmp_path / "straight",
        data=str(pipeline.data),
        target="nv",
        eps="4/255",
        epochs=2,
        batch_size=32,
        channels=4,
        res_blocks=1,
        progress=False,
    )
    fit_generator(base)
    interrupted = replace(base, out=tmp_path / "resumed")
    with monkeypatch.context() as mp:
        mp.setattr("dermadv.training.generator.tqdm", _interrupt_at_epoch(1))
        with pytest.raises(_Interrupt):
            fit_generator(interrupted)
    assert not run_complete(interrupted.out)
    assert len(pd.read_csv(interrupted.out / "history.csv")) == 1

    with pytest.raises(RunError, match="--resume"):
        fit_generator(interrupted)  # a second fit into the folder must ask for --resume
    # The one-cycle schedule is planned over all epochs: resuming under another plan is refused, and the
    # refusal leaves the fit resumable (which is also why 1 epoch + 1 more cannot equal a 2-epoch fit).
    with pytest.raises(RunError, match="--epochs 3"):
        fit_generator(replace(interrupted, epochs=3, resume=True))
    fit_generator(replace(interrupted, resume=True))

    assert run_complete(interrupted.out)
    straight, resumed = (
        load_file(base.out / "generator.safetensors"),
        load_file(interrupted.out / "generator.safetensors"),
    )
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = ["epoch", "loss_adv", "loss_gan", "loss_d", "train_target_rate"]
    pd.testing.assert_frame_equal(
        pd.read_csv(base.out / "history.csv")[losses], pd.read_csv(interrupted.out / "history.csv")[losses]
    )


# --- bad inputs: one clear error ---


@pytest.mark.parametrize("value", ["0", "8", "-1", "abc", "1/0", 0.0, 8.0, -1.0])
def test_eps_out_of_range_is_refused(value: str | float) -> None:
    with pytest.raises(ConfigError, match="eps") as info:
        parse_eps(value)
    assert "\n" not in str(info.value)
    if str(value).startswith("8"):
        assert "did you mean 8" in str(info.value)
    with pytest.raises(ConfigError):
        GeneratorAttack(eps=value)


@pytest.mark.parametrize("value", ["1/255", "2/255", "8/255", "0.5", "1", 0.01])
def test_eps_in_range_is_accepted(value: str | float) -> None:
    assert 0 < parse_eps(value) <= 1


def test_eps_out_of_range_writes_nothing(pipeline, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        fit_generator(GeneratorConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "gen", eps="8"))
    with pytest.raises(ConfigError, match="eps"):
        attack_split(AttackRunConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "adv", method="pgd", eps="-1"))
    assert not (tmp_path / "gen").exists() and not (tmp_path / "adv").exists()


def test_unknown_target_class_is_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown class 'melanoma'; expected one of akiec"):
        fit_generator(GeneratorConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "gen", target="melanoma"))
    with pytest.raises(DataError, match="unknown class"):
        attack_split(
            AttackRunConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "adv", method="pgd", target="melanoma")
        )
    assert not (tmp_path / "gen").exists() and not (tmp_path / "adv").exists()


def _run_generator(pipeline, out: Path, **changes) -> None:
    cfg = AttackRunConfig(
        checkpoint=pipeline.checkpoint,
        out=out,
        generator=pipeline.generator,
        data=str(pipeline.data),
        target=pipeline.target,
        progress=False,
    )
    attack_split(replace(cfg, **changes))


def test_generator_for_another_target_is_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fitted for target 'df', not 'nv'"):
        _run_generator(pipeline, tmp_path / "adv", target="nv")
    assert not (tmp_path / "adv").exists()


def test_generator_from_another_image_size_is_refused(pipeline, tmp_path: Path) -> None:
    attack = load_generator(pipeline.generator)
    other = tmp_path / "generator-24px.safetensors"
    save_generator(other, attack.generator, replace(attack.spec, image_size=(24, 24)))
    with pytest.raises(CheckpointError, match="fitted at 24x24 but the images here are 32x32"):
        _run_generator(pipeline, tmp_path / "adv", generator=other)
    assert not (tmp_path / "adv").exists()


def test_generator_from_another_classifier_is_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="fitted against another classifier"):
        _run_generator(pipeline, tmp_path / "adv", checkpoint=pipeline.other_checkpoint)
    assert not (tmp_path / "adv").exists()


def test_classifier_and_generator_swapped_are_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a dermadv generator"):
        _run_generator(pipeline, tmp_path / "adv", generator=pipeline.checkpoint)
    with pytest.raises(CheckpointError, match="is not a dermadv classifier"):
        _run_generator(pipeline, tmp_path / "adv", checkpoint=pipeline.generator)
    with pytest.raises(CheckpointError, match="is not a dermadv classifier"):
        fit_generator(GeneratorConfig(checkpoint=pipeline.generator, out=tmp_path / "gen", data=str(pipeline.data)))
    assert not (tmp_path / "adv").exists() and not (tmp_path / "gen").exists()


def _dermadv(*args: object) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("dermadv")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _assert_one_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["attack", "fit", "--eps", "8"], "did you mean 8/255?"),
        pytest.param(["attack", "fit", "--target", "melanoma"], "unknown class 'melanoma'", marks=pytest.mark.slow),
        (["attack", "run", "--generator", "{checkpoint}"], "is not a dermadv generator"),
    ],
    ids=["eps", "target", "classifier-as-generator"],
)
def test_cli_bad_input_gives_one_error_line(pipeline, tmp_path: Path, args: list[str], fragment: str) -> None:
    args = [a.format(checkpoint=pipeline.checkpoint) for a in args]
    out = tmp_path / "out"
    proc = _dermadv(*args, "--checkpoint", pipeline.checkpoint, "--data", pipeline.data, "--out", out)
    _assert_one_error(proc, fragment)
    assert not out.exists()


# --- conditioning on the classifier's input gradient ---


def test_gradient_inputs_carry_the_descent_direction_toward_the_target(tiny) -> None:
    from dermadv.attacks.generator import generator_inputs

    images, target = tiny.test_images[:32], 1
    inputs = generator_inputs(tiny.model, images, target=target, condition="gradient")
    assert inputs.shape == (32, 9, *images.shape[-2:]) and float(inputs.min()) >= 0 and float(inputs.max()) <= 1
    assert torch.equal(inputs[:, :3], images)
    assert torch.equal(generator_inputs(tiny.model, images, target=target, condition="image"), images)
    step = (inputs[:, 6:] - 0.5) * 2  # the sign channel
    goal = torch.full((32,), target)
    with torch.no_grad():
        before = nn.functional.cross_entropy(tiny.model(images), goal, reduction="none")
        after = nn.functional.cross_entropy(tiny.model((images + 1 / 255 * step).clamp(0, 1)), goal, reduction="none")
    assert (after < before).float().mean() >= 0.9


def _fit_in_memory(tiny, condition: str, *, target: int, eps: float) -> GeneratorAttack:
    from dermadv.attacks.generator import GeneratorSpec, LossWeights, PatchDiscriminator, gan_step

    torch.manual_seed(0)
    gen = PerturbationGenerator(eps, channels=8, res_blocks=1, condition=condition)
    disc = PatchDiscriminator(8)
    opt_g = torch.optim.Adam(gen.parameters(), lr=3e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=3e-3, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(0)
    for batch in torch.cat([torch.randperm(len(tiny.train_images), generator=rng) for _ in range(3)]).split(16):
        gan_step(
            gen, disc, opt_g, opt_d, tiny.model, tiny.train_images[batch], target=target, eps=eps,
            weights=LossWeights(gan_weight=0.0, hinge_weight=0.0),
        )  # fmt: skip
    spec = GeneratorSpec(condition=condition, eps=eps, target_index=target)
    return GeneratorAttack(generator=gen.eval(), spec=spec)


def test_gradient_conditioned_generator_fools_more_than_the_image_only_one(tiny) -> None:
    """One pass over the same images with the same budget: the conditioned generator adapts to each image."""
    target, eps = 2, 8 / 255  # class 2: the tiny model is least robust toward it (PGD-20: 37%)
    keep = tiny.test_labels != target
    rates = {}
    for condition in ("image", "gradient"):
        attack = _fit_in_memory(tiny, condition, target=target, eps=eps)
        result = attack(tiny.model, tiny.test_images[keep], target=target)
        assert float((result.adv_images - tiny.test_images[keep]).abs().max()) <= eps + 1e-6
        rates[condition] = float(result.success.float().mean())
    assert rates["gradient"] > rates["image"] + 0.06, rates

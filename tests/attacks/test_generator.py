"""The AdvGAN generator attack: its budget, its effect on held-out images, built from its file through the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dermadv.attacks.generator import GeneratorAttack, PerturbationGenerator, load_generator
from dermadv.attacks.registry import create_attack
from dermadv.config import parse_eps
from dermadv.data.classes import CLASSES
from dermadv.errors import ConfigError
from dermadv.pipeline.apply import quantise

EPS_VALUES = [1 / 255, 2 / 255, 8 / 255]


# --- the budget ---


@pytest.mark.parametrize("shape", [(30, 40), (33, 47), (150, 200)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("eps", EPS_VALUES, ids=lambda e: f"{round(e * 255)}/255")
def test_generator_output_keeps_shape_and_budget(eps: float, shape: tuple[int, int], saturated_generator) -> None:
    generator = saturated_generator(eps)
    images = torch.rand(2, 3, *shape)
    with torch.no_grad():
        delta = generator(images)
    assert delta.shape == images.shape
    assert delta.abs().max() <= eps * (1 + 1e-6)
    assert delta.abs().max() > 0.99 * eps  # saturated: the check above is not vacuous


# --- the effect on held-out images, and the PNG round trip (pipeline fixtures in conftest.py) ---


def _target_log_odds(model: nn.Module, images_uint8: torch.Tensor, target: int) -> torch.Tensor:
    """Per-image log-odds of ``target`` for uint8 N×3×H×W images; registers moves near probability 0 or 1."""
    with torch.no_grad():
        log_prob = model(images_uint8.float() / 255).log_softmax(1)
    others = log_prob.clone()
    others[:, target] = -torch.inf
    return log_prob[:, target] - others.logsumexp(1)


def test_short_fit_raises_target_probability_on_held_out_images(pipeline, held_out) -> None:
    model, images, labels = held_out.model, held_out.images, held_out.labels
    fitted = load_generator(pipeline.generator)
    target = CLASSES.index(pipeline.target)
    assert fitted.spec.target_index == target
    keep = torch.from_numpy(labels != target)  # held-out test images that are not already the target
    clean_u8 = images[keep].permute(0, 3, 1, 2)

    def attacked(attack: GeneratorAttack) -> torch.Tensor:
        adv = attack(model, clean_u8.float() / 255, target=target).adv_images
        return quantise(adv, clean_u8, attack.eps)  # scored as saved: 8-bit

    torch.manual_seed(0)
    unfitted = GeneratorAttack(PerturbationGenerator(fitted.eps, channels=fitted.spec.channels, res_blocks=1))
    clean = _target_log_odds(model, clean_u8, target)
    before = _target_log_odds(model, attacked(unfitted), target)
    after = _target_log_odds(model, attacked(fitted), target)
    assert after.mean() > clean.mean() + 1.0
    assert after.mean() > before.mean() + 1.0  # the fit, not any noise of this size, moves it
    assert (after > clean).float().mean() >= 0.8


def test_registry_builds_the_fitted_generator_from_its_file(pipeline) -> None:
    attack = create_attack("advgan", generator=pipeline.generator)
    assert isinstance(attack, GeneratorAttack) and not attack.needs_fit
    assert attack.spec == load_generator(pipeline.generator).spec
    assert attack.spec.target == pipeline.target and attack.eps == pytest.approx(8 / 255)


# --- bad inputs: one clear error ---


@pytest.mark.parametrize("value", ["0", "8", "-1", "abc", "1/0", 0.0, 8.0, -1.0])
def test_eps_out_of_range_is_refused(value: str | float) -> None:
    with pytest.raises(ConfigError, match="eps") as info:
        parse_eps(value)
    assert "\n" not in str(info.value)
    if str(value).startswith("8"):
        assert "did you mean 8" in str(info.value)


@pytest.mark.parametrize("value", ["1/255", "2/255", "8/255", "0.5", "1", 0.01])
def test_eps_in_range_is_accepted(value: str | float) -> None:
    assert 0 < parse_eps(value) <= 1


# --- conditioning on the classifier's input gradient ---


@pytest.mark.parametrize(("condition", "share"), [("gradient", 0.9), ("gradient-half", 0.75)])
def test_gradient_inputs_carry_the_descent_direction_toward_the_target(tiny, condition: str, share: float) -> None:
    """The sign channel is a descent direction of the cross-entropy toward the target (at half resolution too)."""
    from dermadv.attacks.generator import generator_inputs

    images, target = tiny.test_images[:32], 1
    inputs = generator_inputs(tiny.model, images, target=target, condition=condition)
    assert inputs.shape == (32, 9, *images.shape[-2:]) and float(inputs.min()) >= 0 and float(inputs.max()) <= 1
    assert torch.equal(inputs[:, :3], images)
    assert torch.equal(generator_inputs(tiny.model, images, target=target, condition="image"), images)
    step = (inputs[:, 6:] - 0.5) * 2  # the sign channel
    goal = torch.full((32,), target)
    with torch.no_grad():
        before = nn.functional.cross_entropy(tiny.model(images), goal, reduction="none")
        after = nn.functional.cross_entropy(tiny.model((images + 1 / 255 * step).clamp(0, 1)), goal, reduction="none")
    assert (after < before).float().mean() >= share


def _fit_in_memory(tiny, condition: str, *, target: int, eps: float, steps: int = 1) -> GeneratorAttack:
    from dermadv.attacks.generator import GeneratorSpec, PatchDiscriminator
    from dermadv.training.generator import LossWeights, gan_step

    torch.manual_seed(0)
    gen = PerturbationGenerator(eps, channels=8, res_blocks=1, condition=condition)
    disc = PatchDiscriminator(8)
    opt_g = torch.optim.Adam(gen.parameters(), lr=3e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=3e-3, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(0)
    for batch in torch.cat([torch.randperm(len(tiny.train_images), generator=rng) for _ in range(3)]).split(16):
        gan_step(
            gen, disc, opt_g, opt_d, tiny.model, tiny.train_images[batch], target=target, eps=eps,
            weights=LossWeights(gan_weight=0.0, hinge_weight=0.0), steps=steps,
        )  # fmt: skip
    spec = GeneratorSpec(condition=condition, channels=8, res_blocks=1, eps=eps, target_index=target, steps=steps)
    return GeneratorAttack(gen.eval(), spec=spec)


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


@pytest.mark.parametrize("gan_weight", [0.0, 0.05])
def test_the_critic_is_trained_only_when_the_gan_term_counts(tiny, gan_weight: float) -> None:
    """Without the GAN term the critic cannot change G, so it is skipped (a quarter of a fit step's cost)."""
    from dermadv.attacks.generator import PatchDiscriminator
    from dermadv.training.generator import LossWeights, gan_step

    torch.manual_seed(0)
    gen = PerturbationGenerator(8 / 255, channels=8, res_blocks=1, condition="image")
    disc = PatchDiscriminator(8)
    before = [p.detach().clone() for p in disc.parameters()]
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    stats = gan_step(
        gen, disc, opt_g, opt_d, tiny.model, tiny.train_images[:8], target=2, eps=8 / 255,
        weights=LossWeights(gan_weight=gan_weight, hinge_weight=0.0),
    )  # fmt: skip
    changed = any(not torch.equal(a, b) for a, b in zip(before, disc.parameters(), strict=True))
    assert changed == (gan_weight > 0)
    assert (float(stats[2]) > 0) == (gan_weight > 0)  # the critic's loss is reported only when it is trained


def test_two_step_generator_stays_in_budget_and_round_trips(tiny, tmp_path) -> None:
    """Two applications on fresh gradients: projected onto the eps ball, saved and loaded with its step count;
    one step is exactly AdvGAN's ``clamp(images + G(inputs))``."""
    from dermadv.attacks.generator import generate, generator_inputs, save_generator

    target, eps = 2, 4 / 255
    attack = _fit_in_memory(tiny, "gradient", target=target, eps=eps, steps=2)
    images = tiny.test_images[:16]
    adv = attack(tiny.model, images, target=target).adv_images
    assert float((adv - images).abs().max()) <= eps + 1e-6
    save_generator(tmp_path / "g.safetensors", attack.generator, attack.spec)
    loaded = load_generator(tmp_path / "g.safetensors")
    assert loaded.spec.steps == 2
    torch.testing.assert_close(loaded(tiny.model, images, target=target).adv_images, adv)
    one = generate(attack.generator, tiny.model, images, target=target, eps=eps, steps=1)
    with torch.no_grad():
        inputs = generator_inputs(tiny.model, images, target=target, condition="gradient")
        torch.testing.assert_close(one, (images + attack.generator(inputs)).clamp(0, 1))
    assert not torch.equal(one, adv)  # the second step moves the images further


def test_multi_step_needs_a_gradient_condition(tmp_path) -> None:
    from dermadv.training.generator import GeneratorConfig

    with pytest.raises(ConfigError, match="steps > 1 needs a gradient condition"):
        GeneratorConfig(checkpoint=tmp_path / "m", out=tmp_path / "o", condition="image", steps=2)
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        GeneratorConfig(checkpoint=tmp_path / "m", out=tmp_path / "o", steps=0)

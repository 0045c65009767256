"""FGSM, PGD and Carlini–Wagner: cross-checks against ART and torchattacks, early stop, L2 geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dermadv.attacks.gradient import FGSM, PGD, CarliniWagnerL2
from dermadv.errors import ConfigError

EPS = 8 / 255
STEPS = 10
TARGETS = (0, 3)  # a class the tiny model confuses easily, and one it does not


def _success(result) -> float:
    return result.success.float().mean().item()


@pytest.mark.parametrize("target", TARGETS)
def test_fgsm_matches_art(tiny, target: int) -> None:
    from art.attacks.evasion import FastGradientMethod

    ours = _success(FGSM(EPS)(tiny.model, tiny.test_images, target=target))
    art = _art_success(tiny, FastGradientMethod, target, eps=EPS)
    assert abs(ours - art) <= 0.02, (ours, art)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_art(tiny, target: int, random_start: bool) -> None:
    from art.attacks.evasion import ProjectedGradientDescent

    # ART starts at the clean image unless num_random_init > 0 and uses no default 2.5·eps/steps step
    step_size = 2.5 * EPS / STEPS
    attack = PGD(EPS, steps=STEPS, step_size=step_size, random_start=random_start, seed=0)
    ours = _success(attack(tiny.model, tiny.test_images, target=target))
    art = _art_success(
        tiny,
        ProjectedGradientDescent,
        target,
        eps=EPS,
        eps_step=step_size,
        max_iter=STEPS,
        num_random_init=int(random_start),
        verbose=False,
    )
    assert abs(ours - art) <= 0.02, (ours, art)
    assert ours > 0.3  # the comparison means something only if the attack is neither hopeless nor trivial


def _art_success(tiny, cls, target: int, **params) -> float:
    import numpy as np
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=tiny.model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(tiny.test_images.shape[1:]),
        nb_classes=tiny.num_classes,
        clip_values=(0.0, 1.0),
    )
    x = tiny.test_images.numpy()
    y = np.eye(tiny.num_classes, dtype=np.float32)[np.full(len(x), target)]
    adv = cls(classifier, targeted=True, batch_size=len(x), **params).generate(x=x, y=y)
    assert np.abs(adv - x).max() <= params["eps"] + 1e-6
    with torch.no_grad():
        pred = tiny.model(torch.from_numpy(adv)).argmax(1)
    return (pred == target).float().mean().item()


@pytest.mark.parametrize("target", TARGETS)
def test_pgd_matches_torchattacks(tiny, target: int) -> None:
    import torchattacks

    step_size = 2.5 * EPS / STEPS
    ours = _success(
        PGD(EPS, steps=STEPS, step_size=step_size, random_start=False)(tiny.model, tiny.test_images, target=target)
    )
    reference = torchattacks.PGD(tiny.model, eps=EPS, alpha=step_size, steps=STEPS, random_start=False)
    reference.set_mode_targeted_by_label(quiet=True)
    adv = reference(tiny.test_images, torch.full_like(tiny.test_labels, target))
    with torch.no_grad():
        theirs = (tiny.model(adv).argmax(1) == target).float().mean().item()
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


class _RowCounter(nn.Module):
    """Counts the images the wrapped model is asked to classify."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.rows += images.shape[0]
        return self.model(images)


def test_early_stop_freezes_finished_images(tiny) -> None:
    images = tiny.test_images
    full, early = _RowCounter(tiny.model), _RowCounter(tiny.model)
    plain = PGD(EPS, steps=STEPS, seed=0)(full, images, target=0)
    stopped = PGD(EPS, steps=STEPS, seed=0, early_stop=True)(early, images, target=0)
    assert early.rows < 0.8 * full.rows  # finished (and already-target) images cost nothing after
    assert _success(stopped) >= _success(plain) - 0.01
    assert (stopped.adv_images - images).abs().max() <= EPS + 1e-6
    # an image frozen on success stays a success
    assert stopped.success.sum() >= plain.success.sum() - 2


def test_early_stop_untargeted(tiny) -> None:
    images, labels = tiny.test_images[:64], tiny.test_labels[:64]
    result = PGD(EPS, steps=STEPS, seed=0, early_stop=True)(tiny.model, images, labels=labels)
    assert _success(result) > 0.3
    assert (result.adv_images - images).abs().max() <= EPS + 1e-6


def test_pgd_l2_stays_in_ball(tiny) -> None:
    eps = 0.5
    images = tiny.test_images[:64]
    result = PGD(eps, norm="l2", steps=STEPS, seed=0)(tiny.model, images, target=0)
    norms = (result.adv_images - images).flatten(1).norm(dim=1)
    assert norms.max() <= eps + 1e-4
    assert _success(result) > _success(FGSM(1 / 255)(tiny.model, images, target=0))


def test_seed_makes_random_start_reproducible(tiny) -> None:
    images = tiny.test_images[:16]
    a = PGD(EPS, steps=2, seed=5)(tiny.model, images, target=0).adv_images
    b = PGD(EPS, steps=2, seed=5)(tiny.model, images, target=0).adv_images
    assert torch.equal(a, b)


def test_carlini_wagner_finds_small_targeted_perturbations(tiny) -> None:
    images, labels = tiny.test_images[:32], tiny.test_labels[:32]
    keep = labels != 0
    images = images[keep]
    result = CarliniWagnerL2(steps=50, binary_search_steps=3, lr=0.05)(tiny.model, images, target=0)
    assert _success(result) > 0.9
    # CW minimises the L2 norm: smaller than the L2 size of an L∞ perturbation that fills the box
    l2 = (result.adv_images - images).flatten(1).norm(dim=1)[result.success]
    assert l2.median() < EPS * images[0].numel() ** 0.5


def test_parameters_untouched_after_attack(tiny) -> None:
    tiny.model.zero_grad(set_to_none=True)  # earlier users (training, ART) leave weight gradients behind
    PGD(EPS, steps=2)(tiny.model, tiny.test_images[:4], target=0)
    assert all(p.requires_grad for p in tiny.model.parameters())
    assert all(p.grad is None for p in tiny.model.parameters())


@pytest.mark.parametrize(
    "make",
    [
        lambda: PGD(8.0),
        lambda: PGD(EPS, steps=0),
        lambda: PGD(EPS, norm="l1"),  # type: ignore[arg-type]
        lambda: FGSM("two"),
    ],
)
def test_bad_hyperparameters(make) -> None:
    with pytest.raises(ConfigError):
        make()

"""White-box gradient attacks: FGSM, PGD (L∞ and L2) and Carlini–Wagner L2.

FGSM and PGD share one loop (after Foolbox's ``gradient_descent_base``) whose geometry lives in small
hooks: :meth:`GradientAttack.get_random_start`, :meth:`~GradientAttack.normalize` and
:meth:`~GradientAttack.project`. The loop always *ascends* a per-image gain: the cross-entropy of the
true label (untargeted) or minus the cross-entropy of the target (targeted).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.common import LossName, attack_gain, attack_goal, frozen_parameters, is_success, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.config import parse_eps
from dermadv.errors import ConfigError

Norm = Literal["linf", "l2"]


def _l2_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


def _check_common(steps: int, norm: str, loss: str) -> None:
    if steps < 1:
        raise ConfigError(f"steps must be a positive integer; got {steps}")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2'; got {norm!r}")
    if loss not in ("ce", "margin"):
        raise ConfigError(f"loss must be 'ce' or 'margin'; got {loss!r}")


class GradientAttack(Attack):
    """Iterated gradient steps inside an eps-ball, projected after each step and clamped to [0, 1].

    With ``early_stop`` an image is frozen as soon as it is classified as the target (or, untargeted,
    as anything but its label); later steps run on the remaining images only.
    """

    def __init__(
        self,
        eps: float | str,
        *,
        steps: int,
        step_size: float,
        norm: Norm = "linf",
        random_start: bool = False,
        early_stop: bool = False,
        loss: LossName = "ce",
        seed: int | None = None,
    ) -> None:
        _check_common(steps, norm, loss)
        self.eps = parse_budget(eps, norm)
        if not step_size > 0:
            raise ConfigError(f"step_size must be positive; got {step_size}")
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.norm: Norm = norm
        self.random_start = random_start
        self.early_stop = early_stop
        self.loss: LossName = loss
        self.seed = seed

    # -- hooks: the geometry of the threat model ----------------------------------------------------
    def get_random_start(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A uniformly random point of the eps-ball around ``images`` (not yet clamped to [0, 1])."""
        if self.norm == "linf":
            noise = torch.empty_like(images).uniform_(-self.eps, self.eps, generator=generator)
        else:
            noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            d = images[0].numel()
            radius = torch.rand(images.shape[0], generator=generator, device=images.device, dtype=images.dtype)
            noise *= (self.eps * radius.pow(1.0 / d)).view(-1, 1, 1, 1) / _l2_norm(noise).clamp_min(1e-12)
        return images + noise

    def normalize(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit size for the norm (may reuse ``grad``'s memory)."""
        if self.norm == "linf":
            return grad.sign_()
        return grad.div_(_l2_norm(grad).clamp_min(1e-12))

    def project(self, adv: torch.Tensor, images: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Project onto the eps-ball around ``images``, then clamp to [0, 1] (in place).

        ``box`` is ``(max(images - eps, 0), min(images + eps, 1))``: for L∞ the projection and the clamp
        are one clamp to it.
        """
        if self.norm == "linf":
            return adv.clamp_(min=box[0], max=box[1])
        delta = adv.sub_(images)
        delta.mul_((self.eps / _l2_norm(delta).clamp_min(1e-12)).clamp_(max=1.0))
        return delta.add_(images).clamp_(0.0, 1.0)

    # -- the loop --------------------------------------------------------------------------------------
    def _box(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm == "linf":
            return (images - self.eps).clamp_(min=0.0), (images + self.eps).clamp_(max=1.0)
        empty = images.new_empty(images.shape[0], 0)
        return empty, empty  # unused for L2, kept so that early-stop indexing treats both alike

    def _gradient(
        self, model: nn.Module, adv: torch.Tensor, classes: torch.Tensor, targeted: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = adv.detach().requires_grad_(True)
        logits = model(x)
        gain = attack_gain(logits, classes, targeted=targeted, loss=self.loss)
        (grad,) = torch.autograd.grad(gain.sum(), x)
        return grad, logits.detach()

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        classes, targeted = attack_goal(images, labels=labels, target=target)
        clean = images.detach()
        box = self._box(clean)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=clean.device).manual_seed(self.seed)
        if self.random_start:
            adv = self.project(self.get_random_start(clean, generator), clean, box)
        else:
            adv = clean.clone()

        result = adv  # with early stopping, finished rows are written here
        active: torch.Tensor | None = None  # indices (into the batch) of the images still attacked
        with frozen_parameters(model):
            for _ in range(self.steps):
                grad, logits = self._gradient(model, adv, classes, targeted)
                with torch.no_grad():
                    if self.early_stop:
                        done = is_success(logits, classes, targeted=targeted)
                        if bool(done.any()):  # the loop's one host sync, and only with early stopping
                            if active is None:
                                active = torch.arange(adv.shape[0], device=adv.device)
                                result = adv
                            else:
                                result[active[done]] = adv[done]
                            keep = ~done
                            active, adv, clean, classes, grad = (t[keep] for t in (active, adv, clean, classes, grad))
                            box = (box[0][keep], box[1][keep])
                            if active.numel() == 0:
                                return result
                    adv.add_(self.normalize(grad), alpha=self.step_size)
                    adv = self.project(adv, clean, box)
        if active is None:
            return adv
        result[active] = adv
        return result


@register_attack("fgsm")
class FGSM(GradientAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): one signed gradient step of size ``eps``."""

    def __init__(self, eps: float | str, *, loss: LossName = "ce") -> None:
        eps = parse_eps(eps)
        super().__init__(eps, steps=1, step_size=eps, norm="linf", random_start=False, loss=loss)


@register_attack("pgd")
class PGD(GradientAttack):
    """Projected gradient descent (Madry et al. 2018), L∞ or L2, with optional random start and early stop.

    ``step_size`` defaults to ``2.5 * eps / steps``: enough for the walk to cross the ball and turn back.
    """

    def __init__(
        self,
        eps: float | str,
        *,
        steps: int = 10,
        step_size: float | None = None,
        norm: Norm = "linf",
        random_start: bool = True,
        early_stop: bool = False,
        loss: LossName = "ce",
        seed: int | None = None,
    ) -> None:
        _check_common(steps, norm, loss)
        eps_value = parse_budget(eps, norm)
        if step_size is None:
            step_size = 2.5 * eps_value / steps
        super().__init__(
            eps_value,
            steps=steps,
            step_size=step_size,
            norm=norm,
            random_start=random_start,
            early_stop=early_stop,
            loss=loss,
            seed=seed,
        )


@register_attack("cw")
class CarliniWagnerL2(Attack):
    """Carlini & Wagner (2017) L2 attack: Adam in tanh space on ``‖δ‖² + c·margin``, binary search on ``c``.

    Unbounded (no eps): it returns, per image, the smallest successful perturbation it found, or its
    last iterate if none succeeded.
    """

    def __init__(
        self,
        *,
        confidence: float = 0.0,
        c: float = 1.0,
        steps: int = 100,
        lr: float = 0.01,
        binary_search_steps: int = 5,
        abort_early: bool = True,
    ) -> None:
        if steps < 1 or binary_search_steps < 1:
            raise ConfigError(f"steps and binary_search_steps must be ≥ 1; got {steps} and {binary_search_steps}")
        if not c > 0 or not lr > 0:
            raise ConfigError(f"c and lr must be positive; got c={c}, lr={lr}")
        self.confidence = float(confidence)
        self.c = float(c)
        self.steps = int(steps)
        self.lr = float(lr)
        self.binary_search_steps = int(binary_search_steps)
        self.abort_early = abort_early

    def _margin(self, logits: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
        # f6 of the paper: how far the image is from success, floored at -confidence
        gain = attack_gain(logits, classes, targeted=targeted, loss="margin")
        return (-gain).clamp(min=-self.confidence)

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        classes, targeted = attack_goal(images, labels=labels, target=target)
        clean = images.detach()
        n = clean.shape[0]
        w_clean = torch.atanh((clean * 2 - 1) * (1 - 1e-6))
        const = torch.full((n,), self.c, device=clean.device)
        lower = torch.zeros(n, device=clean.device)
        upper = torch.full((n,), math.inf, device=clean.device)
        best_l2 = torch.full((n,), math.inf, device=clean.device)
        best_adv = clean.clone()
        last_adv = clean.clone()
        found = torch.zeros(n, dtype=torch.bool, device=clean.device)

        with frozen_parameters(model):
            for _ in range(self.binary_search_steps):
                w = w_clean.clone().requires_grad_(True)
                optimizer = torch.optim.Adam([w], lr=self.lr)
                succeeded = torch.zeros(n, dtype=torch.bool, device=clean.device)
                previous = math.inf
                for step in range(self.steps):
                    adv = (torch.tanh(w) + 1) / 2
                    logits = model(adv)
                    l2 = (adv - clean).flatten(1).pow(2).sum(1)
                    margin = self._margin(logits, classes, targeted)
                    loss = (l2 + const * margin).sum()
                    w.grad = torch.autograd.grad(loss, w)[0]
                    with torch.no_grad():
                        # success as the paper scores it: the margin reaches -confidence
                        ok = margin.detach() <= -self.confidence
                        if self.confidence == 0:
                            ok &= is_success(logits.detach(), classes, targeted=targeted)
                        better = ok & (l2.detach() < best_l2)
                        best_l2 = torch.where(better, l2.detach(), best_l2)
                        best_adv[better] = adv.detach()[better]
                        succeeded |= ok
                        last_adv = adv.detach()
                    optimizer.step()
                    if self.abort_early and step % max(self.steps // 10, 1) == 0:
                        current = float(loss.detach())
                        if current > previous * 0.9999:
                            break
                        previous = current
                with torch.no_grad():
                    found |= succeeded
                    upper = torch.where(succeeded, torch.minimum(upper, const), upper)
                    lower = torch.where(succeeded, lower, torch.maximum(lower, const))
                    const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return torch.where(found.view(-1, 1, 1, 1), best_adv, last_adv)

"""Few-pixel attack by differential evolution: black-box, it only reads class probabilities."""

from __future__ import annotations

import torch
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.common import class_tensor
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError


@register_attack("pixel")
class PixelAttack(Attack):
    """One-/few-pixel attack (Su et al. 2019): DE/rand/1 without crossover over ``pixels`` × (row, col, r, g, b).

    Each candidate overwrites at most ``pixels`` pixel positions with 8-bit colours. Fitness is the target
    class's probability (targeted, maximised) or the true class's (untargeted, minimised). All candidates
    of all images are scored in batches of ``batch_size``. The paper uses ``popsize=400, maxiter=100``;
    the defaults are smaller to fit a CPU. With ``early_stop`` an image stops evolving once one candidate
    succeeds.
    """

    def __init__(
        self,
        pixels: int = 1,
        *,
        popsize: int = 100,
        maxiter: int = 50,
        mutation: float = 0.5,
        batch_size: int = 1024,
        early_stop: bool = True,
        seed: int | None = None,
    ) -> None:
        if pixels < 1:
            raise ConfigError(f"pixels must be a positive integer (1, 3, 5, …); got {pixels}")
        if popsize < 4:
            raise ConfigError(f"popsize must be at least 4 for DE/rand/1; got {popsize}")
        if maxiter < 0 or batch_size < 1:
            raise ConfigError(f"maxiter must be ≥ 0 and batch_size ≥ 1; got {maxiter} and {batch_size}")
        if not 0 < mutation <= 2:
            raise ConfigError(f"mutation (DE's F) must be in (0, 2]; got {mutation}")
        self.pixels = int(pixels)
        self.popsize = int(popsize)
        self.maxiter = int(maxiter)
        self.mutation = float(mutation)
        self.batch_size = int(batch_size)
        self.early_stop = early_stop
        self.seed = seed

    @staticmethod
    def apply(images: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Write each candidate's pixels into a copy of its image (``images`` B×3×H×W, ``candidates`` B×k×5)."""
        b, c, h, w = images.shape
        rows = candidates[..., 0].round().long().clamp_(0, h - 1)
        cols = candidates[..., 1].round().long().clamp_(0, w - 1)
        # 8-bit colours, so the saved PNG is exactly the image that was scored
        colours = candidates[..., 2:5].clamp(0, 1).mul(255).round_().div_(255).to(images.dtype)
        index = (rows * w + cols)[:, None, :].expand(b, c, -1)
        adv = images.reshape(b, c, h * w).clone()
        adv.scatter_(2, index, colours.transpose(1, 2))
        return adv.view(b, c, h, w)

    def _evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor,
        population: torch.Tensor,
        classes: torch.Tensor,
        targeted: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitness (lower is better) and success of every candidate: both n×P."""
        n, p = population.shape[:2]
        flat = population.reshape(n * p, self.pixels, 5)
        owner = torch.arange(n, device=images.device).repeat_interleave(p)
        fitness = torch.empty(n * p, device=images.device)
        success = torch.empty(n * p, dtype=torch.bool, device=images.device)
        for start in range(0, n * p, self.batch_size):
            part = slice(start, start + self.batch_size)
            idx = owner[part]
            logits = model(self.apply(images[idx], flat[part]))
            prob = logits.softmax(1).gather(1, classes[idx, None]).squeeze(1)
            pred = logits.argmax(1)
            fitness[part] = -prob if targeted else prob
            success[part] = pred == classes[idx] if targeted else pred != classes[idx]
        return fitness.view(n, p), success.view(n, p)

    def _mutate(self, population: torch.Tensor, upper: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, p = population.shape[:2]
        device = population.device
        # three distinct members per trial: offsets from r1 that differ from each other and from 0
        r1 = torch.randint(0, p, (n, p), generator=generator, device=device)
        off2 = torch.randint(1, p, (n, p), generator=generator, device=device)
        off3 = torch.randint(1, p - 1, (n, p), generator=generator, device=device)
        off3 = off3 + (off3 >= off2).long()
        r2, r3 = (r1 + off2) % p, (r1 + off3) % p
        rows = torch.arange(n, device=device)[:, None]
        trial = population[rows, r1] + self.mutation * (population[rows, r2] - population[rows, r3])
        return torch.minimum(trial.clamp_(min=0), upper)

    @torch.no_grad()
    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        targeted = target is not None
        classes = class_tensor(images, labels=labels, target=target)
        n, _, h, w = images.shape
        device = images.device
        generator = torch.Generator(device=device).manual_seed(self.seed) if self.seed is not None else None
        upper = torch.tensor([h - 1, w - 1, 1.0, 1.0, 1.0], device=device)

        shape = (n, self.popsize, self.pixels)
        population = torch.empty(*shape, 5, device=device)
        population[..., 0] = torch.rand(shape, generator=generator, device=device) * (h - 1)
        population[..., 1] = torch.rand(shape, generator=generator, device=device) * (w - 1)
        # colours ~ N(128, 127) in 8-bit units, as in the paper
        colours = torch.randn((*shape, 3), generator=generator, device=device)
        population[..., 2:] = (0.5 + 0.5 * colours).clamp_(0, 1)

        clean = images.detach()
        fitness, success = self._evaluate(model, clean, population, classes, targeted)
        best_population = population.clone()
        best_fitness, best_success = fitness.clone(), success.clone()
        active = torch.arange(n, device=device)
        for _ in range(self.maxiter):
            if self.early_stop:
                keep = ~success.any(1)
                if not bool(keep.all()):
                    best_population[active], best_fitness[active], best_success[active] = population, fitness, success
                    active, clean, classes = active[keep], clean[keep], classes[keep]
                    population, fitness, success = population[keep], fitness[keep], success[keep]
                    if active.numel() == 0:
                        break
            trial = self._mutate(population, upper, generator)
            trial_fitness, trial_success = self._evaluate(model, clean, trial, classes, targeted)
            better = trial_fitness <= fitness
            population = torch.where(better[..., None, None], trial, population)
            fitness = torch.where(better, trial_fitness, fitness)
            success = torch.where(better, trial_success, success)
        if active.numel():
            best_population[active], best_fitness[active], best_success[active] = population, fitness, success

        # a successful candidate first, then the best fitness
        score = best_fitness - 4.0 * best_success.float()
        choice = score.argmin(1)
        winners = best_population[torch.arange(n, device=device), choice]
        return self.apply(images.detach(), winners)

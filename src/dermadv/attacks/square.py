"""Square Attack, L∞ (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack
via random search", ECCV): score-based random search over square-shaped updates, with counted queries.

Algorithm 1 of the paper with its p-schedule and vertical-stripe initialisation, batched (every image draws its
own square; the images still searching go to the model in one call per iteration) and on the 8-bit grid, since
the audited model may be a black box that only ever receives 8-bit PNGs.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import nn

from dermadv.attacks.base import Attack, Needs
from dermadv.attacks.common import LossName, attack_gain, class_tensor, is_success, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError

#: the iterations, out of the paper's 10 000, after which p is halved; shorter runs rescale the schedule
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: new signs drawn at most this often for a square that would leave an image unchanged
_MAX_REDRAWS = 16


def default_p_init(height: int, width: int) -> float:
    """The first square's share of the image: 0.05 at 224 px and above (the paper's ImageNet setting), 0.8 at 32 px
    and below (AutoAttack's CIFAR-10 setting), log-linear between (about 0.3 at 64 px, 0.17 at 96 px: measured on
    the demo classifier at 64 px, 0.2–0.5 moved 64–72% to nv in 300 queries, 0.05 44%)."""
    t = min(1.0, max(0.0, (math.log(min(height, width)) - math.log(32)) / (math.log(224) - math.log(32))))
    return math.exp(math.log(0.8) + t * (math.log(0.05) - math.log(0.8)))


def p_selection(p_init: float, iteration: int, iterations: int) -> float:
    """The share of the image that the square drawn at ``iteration`` (of ``iterations``) covers (paper, §3.1)."""
    rescaled = int(iteration / iterations * 10000)
    return p_init / 2 ** sum(rescaled > h for h in _HALVINGS)


@register_attack("square")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), L∞: at most ``queries`` model queries per image.

    Each iteration sets a random square of every unfinished image to ``±eps`` (one sign per channel) and keeps
    the change where the loss drops. An image leaves the search, and is never queried again, once it succeeds;
    ``_last_queries`` holds what each image spent (the first query scores the starting point). Every image sent
    to the model is on the 8-bit grid, within ``floor(eps·255)`` steps of the clean image rounded to that grid.

    ``_start``, when set to an N×3×H×W tensor before a call, replaces the stripes as the starting point (e.g. a
    transfer attack's output, to be refined by queries); it is projected onto the 8-bit eps-ball first.
    """

    needs: ClassVar[Needs] = "scores"

    def __init__(
        self,
        eps: float | str = "8/255",
        *,
        queries: int = 1000,
        # None: by image size (:func:`default_p_init`), from the paper's 0.05 at ImageNet sizes to AutoAttack's 0.8
        # at 32×32: on small images a square of 5% of the area is a few pixels
        p_init: float | None = None,
        loss: LossName = "margin",
        norm: Literal["linf"] = "linf",
        seed: int | None = 0,
    ) -> None:
        if norm != "linf":
            raise ConfigError(f"norm must be 'linf', the only one the square attack supports so far; got {norm!r}")
        self.eps = parse_budget(eps, norm)
        if self.eps * 255 < 1 - 1e-6:
            raise ConfigError(
                f"eps must be at least 1/255 for the square attack, which searches the 8-bit grid; got {eps}"
            )
        if int(queries) != queries or queries < 1:
            raise ConfigError(f"queries (the model queries per image) must be a whole number ≥ 1; got {queries}")
        if p_init is not None and not 0 < p_init <= 1:
            raise ConfigError(f"p_init (the first square's share of the image) must be in (0, 1]; got {p_init}")
        if loss not in ("margin", "ce"):
            raise ConfigError(f"loss must be 'margin' or 'ce'; got {loss!r}")
        self.queries = int(queries)
        self.p_init = float(p_init) if p_init is not None else None
        self.loss: LossName = loss
        self.norm: Literal["linf"] = norm
        self.seed = seed
        self._start: torch.Tensor | None = None

    def _bounds(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per value, the lowest and highest 8-bit level (0–255) a candidate may take.

        Within ``k = floor(eps·255)`` levels of the clean image rounded to the grid, in [0, 255], and for an
        image off the grid also within eps of it. The tolerances absorb rounding: ``8/255 * 255`` is 7.999…,
        and a float32 image on the grid is its level / 255 only to about 3e-5 levels.
        """
        levels = images.detach().double() * 255
        e = self.eps * 255
        k = math.floor(e + 1e-6)
        clean = levels.round()
        low = torch.maximum((levels - e - 1e-4).ceil(), clean - k).clamp_(min=0)
        high = torch.minimum((levels + e + 1e-4).floor(), clean + k).clamp_(max=255)
        return low.to(images.dtype), high.to(images.dtype)

    @staticmethod
    def _to_grid(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to the 8-bit grid and clamped into the budget: for an image on the grid, that is
        ``clean + clamp(round((x - clean)·255), -k, k) / 255`` clamped to [0, 1]."""
        return torch.maximum(torch.minimum((x * 255).round(), high), low) / 255

    def _loss(self, logits: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
        # minimised: margin max_{j≠t} z_j − z_t (targeted) or z_y − max_{j≠y} z_j; or ±cross-entropy
        return -attack_gain(logits, classes, targeted=targeted, loss=self.loss)

    def _propose(
        self, best: torch.Tensor, low: torch.Tensor, high: torch.Tensor, side: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Each image's best point with one random ``side``×``side`` square set to ``±eps`` per channel.

        As in the paper's code, an image whose square would not change it (a sign already in place
        everywhere in it) draws new signs; at most one sign per channel can be in place, so a few redraws
        suffice (the cap only guards against a budget too small to move any value).
        """
        m, c, h, w = best.shape
        top = torch.randint(0, h - side, (m, 1), generator=generator).to(best.device)
        left = torch.randint(0, w - side, (m, 1), generator=generator).to(best.device)
        rows, cols = torch.arange(h, device=best.device), torch.arange(w, device=best.device)
        in_rows, in_cols = (rows >= top) & (rows < top + side), (cols >= left) & (cols < left + side)
        window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # m×1×h×w
        # the edges of the ball (x ± eps, clipped) are on the 8-bit grid, as ``best`` is: no rounding needed
        up = torch.randint(0, 2, (m, c, 1, 1), generator=generator).to(best.device, torch.bool)
        candidate = torch.where(window, torch.where(up, high, low) / 255, best)
        todo = (candidate == best).flatten(1).all(1).nonzero().squeeze(1)
        for _ in range(_MAX_REDRAWS - 1):
            if todo.numel() == 0:
                break
            up = torch.randint(0, 2, (todo.numel(), c, 1, 1), generator=generator).to(best.device, torch.bool)
            moved = torch.where(up, high[todo], low[todo]) / 255
            candidate[todo] = torch.where(window[todo], moved, best[todo])
            todo = todo[(candidate[todo] == best[todo]).flatten(1).all(1)]
        return candidate

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        n, c, h, w = images.shape
        if min(h, w) < 2:
            raise ValueError(f"the square attack needs images of at least 2×2 pixels; got {h}×{w}")
        targeted = target is not None
        classes = class_tensor(images, labels=labels, target=target)
        low, high = self._bounds(images)
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)

        if self._start is None:  # vertical stripes: one random sign per column and channel (paper, §3.1)
            up = torch.randint(0, 2, (n, c, 1, w), generator=generator).to(images.device, torch.bool)
            start = torch.where(up, high, low) / 255
        elif self._start.shape != images.shape:
            raise ValueError(
                f"the start must have the images' shape {tuple(images.shape)}; got {tuple(self._start.shape)}"
            )
        else:
            start = self._start.detach().to(images)
        best = self._to_grid(start, low, high)

        with torch.no_grad():
            logits = model(best)
            best_loss = self._loss(logits, classes, targeted)
            spent = torch.ones(n, dtype=torch.long, device=images.device)
            active = (~is_success(logits, classes, targeted=targeted)).nonzero().squeeze(1)
            for iteration in range(self.queries - 1):  # the first query scored the start
                if active.numel() == 0:
                    break
                p_init = self.p_init if self.p_init is not None else default_p_init(*images.shape[-2:])
                p = p_selection(p_init, iteration, self.queries)
                side = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
                candidate = self._propose(best[active], low[active], high[active], side, generator)
                logits = model(candidate)
                spent[active] += 1
                loss = self._loss(logits, classes[active], targeted)
                won = is_success(logits, classes[active], targeted=targeted)
                keep = won | (loss < best_loss[active])
                best[active[keep]] = candidate[keep]
                best_loss[active[keep]] = loss[keep]
                active = active[~won]
        self._last_queries = spent
        return best

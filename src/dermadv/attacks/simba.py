"""SimBA-DCT (Guo et al. 2019, "Simple Black-box Adversarial Attacks", ICML): score-based coordinate search along
low-frequency DCT directions, here within an L∞ budget, with counted queries.

Each proposal adds ``+step`` times one orthonormal 2-D DCT basis vector (one channel) to an image's best point and
keeps it if the loss drops; if not, ``-step``. Directions are drawn without replacement, the low-frequency block
first (the paper's SimBA-DCT; the authors' code, github.com/cg563/simple-blackbox-attack, widens the block in
strides after that). The original SimBA bounds nothing but the number of steps (its perturbation grows in L2); for a
comparison with Square at the same L∞ budget every candidate is projected into the eps-ball and [0, 1], on the
8-bit grid like Square's (:func:`~dermadv.attacks.square.grid_bounds`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import nn

from dermadv.attacks.base import Attack, Needs
from dermadv.attacks.common import LossName, attack_gain, class_tensor, is_success, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.attacks.square import grid_bounds, to_grid
from dermadv.errors import ConfigError

Order = Literal["strided", "random"]

#: the share of each image side whose DCT frequencies form the first block (the paper's 28 of 224 px)
_FREQ_SHARE = 1 / 8
#: strided order: the block widens by this share of its side at a time (the authors' stride 7 for a block of 28)
_STRIDE_SHARE = 1 / 4


def dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: row k is the k-th cosine of length ``size`` (scipy's ``norm="ortho"``), so
    the outer product of rows u and v is the inverse 2-D DCT of the (u, v) unit coefficient."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    n = torch.arange(size, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    basis[0] /= math.sqrt(2)
    return basis.float()


def frequency_bands(height: int, width: int, freq_dims: tuple[int, int], order: Order) -> torch.Tensor:
    """Per DCT coefficient (u, v), the band it is drawn in: 0 for the ``freq_dims`` low-frequency block, then
    (``"strided"``) one band per widening of the block by a quarter of its side, as the authors' ``block_order``,
    or (``"random"``) 1 for everything else."""
    fh, fw = freq_dims
    u, v = torch.arange(height)[:, None], torch.arange(width)[None, :]
    outside = (u >= fh) | (v >= fw)
    if order == "random":
        return outside.long()
    sh, sw = max(1, round(fh * _STRIDE_SHARE)), max(1, round(fw * _STRIDE_SHARE))
    beyond = torch.maximum(torch.div(u - fh, sh, rounding_mode="floor"), torch.div(v - fw, sw, rounding_mode="floor"))
    return torch.where(outside, 1 + beyond.clamp(min=0), 0)


def coefficient_orders(
    n: int,
    channels: int,
    bands: torch.Tensor,
    count: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """n×``count`` flat coefficient indices (channel·H·W + u·W + v): per image its own random order within each
    band, bands in turn (the authors draw one order for the whole batch)."""
    band = bands.flatten().repeat(channels).double()
    orders = torch.empty(n, count, dtype=torch.long)
    for i in range(n):  # one image at a time: only the first ``count`` of each order are kept
        orders[i] = torch.argsort(band + torch.rand(band.numel(), generator=generator, dtype=torch.float64))[:count]
    return orders


@register_attack("simba")
class SimBA(Attack):
    """SimBA-DCT (Guo et al. 2019) within an L∞ budget: at most ``queries`` model queries per image.

    A proposal costs one query if ``+step`` improves the loss (or succeeds), two if ``-step`` must be tried as well;
    a proposal that the projection leaves identical to the image's best point is not sent. Each image walks its
    own random order of DCT directions; after all of them it starts the order again. An image leaves the search,
    and is never queried again, once it succeeds; ``_last_queries`` holds what each image spent (the first query
    scores the clean image).

    Args:
        eps: the L∞ budget on [0, 1] images (at least 1/255: candidates are on the 8-bit grid).
        queries: model queries per image, the first included.
        step: each proposal's length along its unit DCT direction (the paper's ε, an L2 length: 0.2 in its
            ImageNet runs). None: ``eps·√(H·W)/2``, so that a direction's largest values move by about eps, and
            a first accepted proposal already reaches the corners of the ball that the projection then keeps.
        freq_dims: side of the low-frequency block drawn first, in coefficients (capped at the image's sides).
            None: an eighth of each side, as the paper's 28 at 224 px.
        order: ``"strided"``: after the block, bands that widen it by a quarter of its side (the authors' default
            order); ``"random"``: after the block, all other coefficients in one random order.
        loss: ``"margin"`` (logit margin) or ``"ce"``; ``"ce"`` makes the paper's decisions, which compare the
            probability of the true or target class.
        norm: ``"linf"`` only (see the module's note on the projection).
        seed: seeds the orders; None draws a fresh seed.
    """

    needs: ClassVar[Needs] = "scores"

    def __init__(
        self,
        eps: float | str = "8/255",
        *,
        queries: int = 1000,
        step: float | None = None,
        freq_dims: int | None = None,
        order: Order = "strided",
        loss: LossName = "margin",
        norm: Literal["linf"] = "linf",
        seed: int | None = 0,
    ) -> None:
        if norm != "linf":
            raise ConfigError(
                f"norm must be 'linf' for simba, which projects into an L∞ ball; got {norm!r} (for an L2 budget "
                "use the square attack with norm='l2')"
            )
        self.eps = parse_budget(eps, norm)
        if self.eps * 255 < 1 - 1e-6:
            raise ConfigError(f"eps must be at least 1/255 for simba, which searches the 8-bit grid; got {eps}")
        if int(queries) != queries or queries < 1:
            raise ConfigError(f"queries (the model queries per image) must be a whole number ≥ 1; got {queries}")
        if step is not None and not step > 0:
            raise ConfigError(
                f"step (each proposal's L2 length along its DCT direction) must be positive; got {step} "
                "(leave it None for eps·√(H·W)/2)"
            )
        if freq_dims is not None and (int(freq_dims) != freq_dims or freq_dims < 1):
            raise ConfigError(
                f"freq_dims (the side of the low-frequency DCT block searched first) must be a whole number ≥ 1; "
                f"got {freq_dims} (leave it None for an eighth of the image side)"
            )
        if order not in ("strided", "random"):
            raise ConfigError(f"order must be 'strided' or 'random'; got {order!r}")
        if loss not in ("margin", "ce"):
            raise ConfigError(f"loss must be 'margin' or 'ce'; got {loss!r}")
        self.queries = int(queries)
        self.step = float(step) if step is not None else None
        self.freq_dims = int(freq_dims) if freq_dims is not None else None
        self.order: Order = order
        self.loss: LossName = loss
        self.norm: Literal["linf"] = norm
        self.seed = seed

    def _loss(self, logits: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
        return -attack_gain(logits, classes, targeted=targeted, loss=self.loss)

    def _block(self, height: int, width: int) -> tuple[int, int]:
        if self.freq_dims is None:
            return max(1, round(height * _FREQ_SHARE)), max(1, round(width * _FREQ_SHARE))
        return min(self.freq_dims, height), min(self.freq_dims, width)

    def _step(self, height: int, width: int) -> float:
        step = self.step if self.step is not None else self.eps * math.sqrt(height * width) / 2
        # the largest value of a unit 2-D DCT direction is 2/√(H·W): below half a level, rounding undoes every step
        if step * 2 / math.sqrt(height * width) < 0.5 / 255:
            raise ConfigError(
                f"step {step} moves no value of a {height}×{width} image by half an 8-bit level, so no proposal "
                f"would change it; use a step of at least {math.sqrt(height * width) / 1020:.3g} or leave it None"
            )
        return step

    def _query(
        self,
        model: nn.Module,
        candidate: torch.Tensor,
        rows: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        classes: torch.Tensor,
        targeted: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Send the candidates (for the images ``rows``) that differ from those images' best points, in one call;
        keep each where the loss drops or the attack succeeds. Returns, per row, kept and succeeded."""
        best, best_loss, spent = state
        kept = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        won = torch.zeros_like(kept)
        moved = (candidate != best[rows]).flatten(1).any(1)
        if not bool(moved.any()):
            return kept, won
        sent, candidate = rows[moved], candidate[moved]
        logits = model(candidate)
        spent[sent] += 1
        loss = self._loss(logits, classes[sent], targeted)
        success = is_success(logits, classes[sent], targeted=targeted)
        keep = success | (loss < best_loss[sent])
        best[sent[keep]] = candidate[keep]
        best_loss[sent[keep]] = loss[keep]
        kept[moved], won[moved] = keep, success
        return kept, won

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        n, c, h, w = images.shape
        targeted = target is not None
        classes = class_tensor(images, labels=labels, target=target)
        step = self._step(h, w)
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        low, high = grid_bounds(images, self.eps)
        best = to_grid(images, low, high)
        total = c * h * w
        bands = frequency_bands(h, w, self._block(h, w), self.order)
        orders = coefficient_orders(n, c, bands, min(total, max(self.queries - 1, 1)), generator).to(images.device)
        cosines_h, cosines_w = dct_matrix(h).to(images), dct_matrix(w).to(images)

        with torch.no_grad():
            logits = model(best)
            best_loss = self._loss(logits, classes, targeted)
            spent = torch.ones(n, dtype=torch.long, device=images.device)
            state = (best, best_loss, spent)
            active = (~is_success(logits, classes, targeted=targeted)).nonzero().squeeze(1)
            # every iteration costs each image still searching at least one query (+step and -step cannot both be
            # undone by the projection while eps > 0), so this many iterations exhaust every budget
            for iteration in range(self.queries - 1):
                active = active[spent[active] < self.queries]
                if active.numel() == 0:
                    break
                coefficient = orders[active, iteration % orders.shape[1]]
                channel, frequency = coefficient // (h * w), coefficient % (h * w)
                plane = cosines_h[frequency // w][:, :, None] * cosines_w[frequency % w][:, None, :]
                direction = torch.zeros(len(active), c, h, w, dtype=images.dtype, device=images.device)
                direction[torch.arange(len(active), device=images.device), channel] = plane * step

                plus = to_grid(best[active] + direction, low[active], high[active])
                kept, won = self._query(model, plus, active, state, classes, targeted)
                retry = ~kept & (spent[active] < self.queries)
                if bool(retry.any()):
                    rows = active[retry]
                    minus = to_grid(best[rows] - direction[retry], low[rows], high[rows])
                    won[retry] = self._query(model, minus, rows, state, classes, targeted)[1]
                active = active[~won]
        self._last_queries = spent
        return best

"""Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack via
random search", ECCV): score-based random search over square-shaped updates, with counted queries, L∞ or L2.

L∞ is Algorithm 1 of the paper with its p-schedule and vertical-stripe initialisation, on the 8-bit grid, since the
audited model may be a black box that only ever receives 8-bit PNGs. L2 is the paper's L2 attack (§3.2, Algorithm 3)
as the authors' code runs it (github.com/max-andr/square-attack, ``square_attack_l2``): stacked
"meta-pseudo-Gaussian" windows to start, then updates that move mass from one window to another at the full norm.
Both are batched: every image draws its own windows, and the images still searching go to the model in one call
per iteration.
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

Norm = Literal["linf", "l2"]

#: the iterations, out of the paper's 10 000, after which p is halved; shorter runs rescale the schedule
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: new signs drawn at most this often for a square that would leave an image unchanged
_MAX_REDRAWS = 16
#: the smallest image side the L2 attack takes: its start tiles the image with 5×5 windows of at least 1 pixel
_L2_MIN_SIDE = 5


def default_p_init(height: int, width: int, norm: Norm = "linf") -> float:
    """The first square's share of the image, log-linear in the image side between two published settings.

    L∞: 0.05 at 224 px and above (the paper's ImageNet setting), 0.8 at 32 px and below (AutoAttack's CIFAR-10
    setting): about 0.3 at 64 px, 0.17 at 96 px (measured on the demo classifier at 64 px, 0.2–0.5 moved 64–72% to
    nv in 300 queries, 0.05 44%). L2: 0.1 at 224 px (the paper's L2 ImageNet setting), 0.8 at 32 px (AutoAttack's).
    """
    smallest = 0.05 if norm == "linf" else 0.1
    t = min(1.0, max(0.0, (math.log(min(height, width)) - math.log(32)) / (math.log(224) - math.log(32))))
    return math.exp(math.log(0.8) + t * (math.log(smallest) - math.log(0.8)))


def p_selection(p_init: float, iteration: int, iterations: int) -> float:
    """The share of the image that the square drawn at ``iteration`` (of ``iterations``) covers (paper, §3.1)."""
    rescaled = int(iteration / iterations * 10000)
    return p_init / 2 ** sum(rescaled > h for h in _HALVINGS)


def grid_bounds(images: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per value, the lowest and highest 8-bit level (0–255) an L∞ candidate may take.

    Within ``k = floor(eps·255)`` levels of the clean image rounded to the grid, in [0, 255], and for an image off
    the grid also within eps of it. The tolerances absorb rounding: ``8/255 * 255`` is 7.999…, and a float32 image
    on the grid is its level / 255 only to about 3e-5 levels.
    """
    levels = images.detach().double() * 255
    e = eps * 255
    k = math.floor(e + 1e-6)
    clean = levels.round()
    low = torch.maximum((levels - e - 1e-4).ceil(), clean - k).clamp_(min=0)
    high = torch.minimum((levels + e + 1e-4).floor(), clean + k).clamp_(max=255)
    return low.to(images.dtype), high.to(images.dtype)


def to_grid(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the 8-bit grid and clamped into the :func:`grid_bounds` budget: for an image on the grid,
    ``clean + clamp(round((x - clean)·255), -k, k) / 255`` clamped to [0, 1]."""
    return torch.maximum(torch.minimum((x * 255).round(), high), low) / 255


def pseudo_gaussian_rectangle(rows: int, cols: int) -> torch.Tensor:
    """A ``rows``×``cols`` bump of unit L2 norm: centred nested rectangles, the k-th from the centre adding
    1/(k+1)² (the reference code's ``pseudo_gaussian_pert_rectangles``); its mass sits at the centre, as an image's
    most informative perturbation of a window tends to."""
    centre_row, centre_col = rows // 2, cols // 2
    rings = max(centre_row, centre_col) + 1
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2
    # a value at Chebyshev distance d from the centre lies in rectangles d, d + 1, …, rings - 1
    tail = weights.flip(0).cumsum(0).flip(0)
    row_distance = (torch.arange(rows) - centre_row).abs()
    col_distance = (torch.arange(cols) - centre_col).abs()
    bump = tail[torch.maximum(row_distance[:, None], col_distance[None, :])]
    return (bump / bump.norm()).float()


def meta_pseudo_gaussian(side: int) -> torch.Tensor:
    """A ``side``×``side`` window of unit L2 norm: a bump on its upper half and a negative one on its lower half
    (the reference code's ``meta_pseudo_gaussian_pert`` before its random transpose, which callers draw)."""
    pattern = torch.cat(
        [pseudo_gaussian_rectangle(side // 2, side), -pseudo_gaussian_rectangle(side - side // 2, side)]
    )
    return pattern / pattern.norm()


def _random_windows(
    m: int, h: int, w: int, side: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """One random ``side``×``side`` window per image, as an m×1×h×w mask (never touching the last row or column,
    as in the paper's code)."""
    top = torch.randint(0, h - side, (m, 1), generator=generator).to(device)
    left = torch.randint(0, w - side, (m, 1), generator=generator).to(device)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows, in_cols = (rows >= top) & (rows < top + side), (cols >= left) & (cols < left + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _random_signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(like) * 2 - 1


@register_attack("square")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), L∞ or L2: at most ``queries`` model queries per image.

    L∞ (``norm="linf"``): each iteration sets a random square of every unfinished image to ``±eps`` (one sign per
    channel) and keeps the change where the loss drops. Every image sent to the model is on the 8-bit grid, within
    ``floor(eps·255)`` steps of the clean image rounded to that grid.

    L2 (``norm="l2"``, ``eps`` an L2 radius on [0, 1] images): each iteration empties one random window, refills
    another with a new ±bump plus its old content, and rescales the perturbation to norm eps; candidates are
    clipped to [0, 1], which only shortens them, so ``‖adv − images‖₂ ≤ eps``. They are not on the 8-bit grid:
    rounding could push the norm past eps (saving one as a PNG moves each value by at most 0.5/255).

    Either way an image leaves the search, and is never queried again, once it succeeds; ``_last_queries`` holds
    what each image spent (the first query scores the starting point).

    ``_start``, when set to an N×3×H×W tensor before a call, replaces the initialisation (e.g. a transfer attack's
    output, to be refined by queries); it is projected into the budget first (the 8-bit eps-ball for L∞; for L2 it
    is shortened to norm eps if longer).
    """

    needs: ClassVar[Needs] = "scores"

    def __init__(
        self,
        eps: float | str | None = None,
        *,
        queries: int = 1000,
        # None: by image size (:func:`default_p_init`), from the paper's 0.05 (L∞) or 0.1 (L2) at ImageNet sizes to
        # AutoAttack's 0.8 at 32×32: on small images a square of 5% of the area is a few pixels
        p_init: float | None = None,
        loss: LossName = "margin",
        norm: Norm = "linf",
        seed: int | None = 0,
    ) -> None:
        if norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2' for the square attack; got {norm!r}")
        if eps is None:
            if norm == "l2":
                raise ConfigError(
                    "eps (the L2 radius on [0, 1] images) must be given for norm='l2'; the default 8/255 is an L∞ "
                    "budget: pass e.g. eps=0.5 (RobustBench's CIFAR-10 radius) or eps=5 (the paper's at 224 px)"
                )
            eps = "8/255"
        self.eps = parse_budget(eps, norm)
        if norm == "linf" and self.eps * 255 < 1 - 1e-6:
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
        self.norm: Norm = norm
        self.seed = seed
        self._start: torch.Tensor | None = None

    def _bounds(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`grid_bounds` at this attack's eps."""
        return grid_bounds(images, self.eps)

    @staticmethod
    def _to_grid(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return to_grid(x, low, high)

    def _loss(self, logits: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
        # minimised: margin max_{j≠t} z_j − z_t (targeted) or z_y − max_{j≠y} z_j; or ±cross-entropy
        return -attack_gain(logits, classes, targeted=targeted, loss=self.loss)

    def _propose(
        self, best: torch.Tensor, low: torch.Tensor, high: torch.Tensor, side: int, generator: torch.Generator
    ) -> torch.Tensor:
        """L∞: each image's best point with one random ``side``×``side`` square set to ``±eps`` per channel.

        As in the paper's code, an image whose square would not change it (a sign already in place
        everywhere in it) draws new signs; at most one sign per channel can be in place, so a few redraws
        suffice (the cap only guards against a budget too small to move any value).
        """
        m, c, h, w = best.shape
        window = _random_windows(m, h, w, side, generator, best.device)
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

    def _at_radius(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """L2: ``images + delta`` with ``delta`` rescaled to norm eps, clipped to [0, 1] (which only shortens it)."""
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (images + delta * (self.eps / norm)).clamp(0, 1)

    def _l2_start(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """L2 initialisation (paper, §3.2): a grid of windows of a fifth of the image side, each a meta-pseudo-Gaussian
        bump with a random orientation and one random sign per channel, the whole at norm eps."""
        n, c, h, w = images.shape
        side = min(h, w) // 5
        tiles_h, tiles_w = h // side, w // side
        top, left = (h - tiles_h * side) // 2, (w - tiles_w * side) // 2
        pattern = meta_pseudo_gaussian(side).to(images)
        delta = torch.zeros_like(images)
        for i in range(tiles_h):
            for j in range(tiles_w):
                flip = torch.randint(0, 2, (n, 1, 1, 1), generator=generator).to(images.device, torch.bool)
                tile = torch.where(flip, pattern.T, pattern) * _random_signs((n, c, 1, 1), generator, images)
                rows, cols = slice(top + i * side, top + (i + 1) * side), slice(left + j * side, left + (j + 1) * side)
                delta[:, :, rows, cols] = tile
        return self._at_radius(images, delta)

    def _propose_l2(
        self, images: torch.Tensor, best: torch.Tensor, side: int, generator: torch.Generator
    ) -> torch.Tensor:
        """L2: per image, window 2 emptied and window 1 refilled with a new ±bump plus its old content, per channel
        at the norm both windows held plus the share of the budget left unused (lost to clipping), the whole then
        rescaled to norm eps (the reference's ``square_attack_l2`` update; each image draws its own windows).
        AutoAttack and torchattacks take the windows' norm over all channels instead, a bolder refill."""
        m, c, h, w = images.shape
        delta = best - images
        first = _random_windows(m, h, w, side, generator, images.device)
        second = _random_windows(m, h, w, side, generator, images.device)
        in_first = first.expand(-1, c, -1, -1)
        old = delta[in_first].view(m, c, side, side)
        old_norm = old.square().sum((2, 3), keepdim=True).sqrt()
        image_norm = delta.flatten(1).norm(dim=1).view(m, 1, 1, 1)
        windows_norm = (delta * (first | second)).square().sum((2, 3), keepdim=True).sqrt()

        pattern = meta_pseudo_gaussian(side).to(images)
        flip = torch.randint(0, 2, (m, 1, 1, 1), generator=generator).to(images.device, torch.bool)
        bump = torch.where(flip, pattern.T, pattern) * _random_signs((m, c, 1, 1), generator, images)
        new = bump + old / (old_norm + 1e-10)
        mass = ((self.eps**2 - image_norm**2).clamp_min(0) / c + windows_norm**2).sqrt()
        new = new / new.square().sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * mass
        delta = delta.masked_fill(second, 0).masked_scatter(in_first, new.contiguous())
        return self._at_radius(images, delta)

    def _l2_side(self, p: float, h: int, w: int) -> int:
        """The L2 window's side for share ``p``: at least 3 and odd, so that its bumps have a centre (paper's code)."""
        side = max(round(math.sqrt(p * h * w)), 3)
        side += 1 - side % 2
        return min(side, min(h, w) - 1)

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        n, c, h, w = images.shape
        smallest = 2 if self.norm == "linf" else _L2_MIN_SIDE
        if min(h, w) < smallest:
            raise ValueError(
                f"the {self.norm} square attack needs images of at least {smallest}×{smallest} pixels; got {h}×{w}"
            )
        targeted = target is not None
        classes = class_tensor(images, labels=labels, target=target)
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        if self._start is not None and self._start.shape != images.shape:
            raise ValueError(
                f"the start must have the images' shape {tuple(images.shape)}; got {tuple(self._start.shape)}"
            )

        if self.norm == "linf":
            low, high = self._bounds(images)
            if self._start is None:  # vertical stripes: one random sign per column and channel (paper, §3.1)
                up = torch.randint(0, 2, (n, c, 1, w), generator=generator).to(images.device, torch.bool)
                start = torch.where(up, high, low) / 255
            else:
                start = self._start.detach().to(images)
            best = self._to_grid(start, low, high)
        elif self._start is None:
            best = self._l2_start(images, generator)
        else:
            delta = self._start.detach().to(images) - images
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            best = (images + delta * (self.eps / norm.clamp_min(1e-12)).clamp(max=1)).clamp(0, 1)

        p_init = self.p_init if self.p_init is not None else default_p_init(h, w, self.norm)
        with torch.no_grad():
            logits = model(best)
            best_loss = self._loss(logits, classes, targeted)
            spent = torch.ones(n, dtype=torch.long, device=images.device)
            active = (~is_success(logits, classes, targeted=targeted)).nonzero().squeeze(1)
            for iteration in range(self.queries - 1):  # the first query scored the start
                if active.numel() == 0:
                    break
                p = p_selection(p_init, iteration, self.queries)
                if self.norm == "linf":
                    side = min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)
                    candidate = self._propose(best[active], low[active], high[active], side, generator)
                else:
                    candidate = self._propose_l2(images[active], best[active], self._l2_side(p, h, w), generator)
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

"""HopSkipJump, L∞ (Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: a query-efficient decision-based attack",
IEEE S&P): a decision-based attack that sees the model's labels only, run through ART with counted, bounded queries.

ART's ``HopSkipJump`` does the search; dermadv stands between it and the model (:class:`LabelOracle`), so that it
sees argmax labels only, every image it sends is counted against the image's budget, the best adversarial point is
kept, and the search ends as soon as the budget is spent or a point within eps is found.
"""

from __future__ import annotations

import math
import zlib
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from dermadv.attacks.base import Attack, Needs
from dermadv.attacks.common import class_tensor, numpy_seed, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError


class _SearchOver(Exception):
    """Raised inside ART's search to end it: the image's queries are spent, or a point within eps was found."""


class LabelOracle:
    """One clean image's view of ``model`` for ART's ``BlackBoxClassifier``: labels only, at most ``budget`` images.

    Every image sent is counted in :attr:`spent`. A batch larger than what is left of the budget is truncated: its
    first rows are sent, the rest never are, and the search ends. The adversarial point nearest the clean image in
    L∞ seen so far is kept in :attr:`best`; the search ends once it is within ``eps`` (no query after success).
    ``known`` answers images already classified (the clean image, the start) from memory, at no cost: ART asks for
    both again when it starts.
    """

    def __init__(
        self, model: nn.Module, clean: torch.Tensor, goal: int, *, targeted: bool, budget: int, eps: float
    ) -> None:
        self.model, self.clean, self.goal, self.targeted = model, clean, goal, targeted
        self.budget, self.eps = budget, eps
        self.spent = 0
        self.num_classes = 0
        self.best: torch.Tensor | None = None
        self.best_distance = math.inf
        self.known: dict[bytes, int] = {}

    @property
    def done(self) -> bool:
        return self.spent >= self.budget or self.best_distance <= self.eps

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Labels of ``images`` (N×3×H×W), counted; the first ``budget - spent`` only, if there are more."""
        if self.done:
            raise _SearchOver
        x = images[: self.budget - self.spent].to(self.clean)
        with torch.no_grad():
            logits = self.model(x)
        self.spent += len(x)
        self.num_classes = int(logits.shape[1])
        labels = logits.argmax(1)
        hit = labels == self.goal if self.targeted else labels != self.goal
        if bool(hit.any()):
            distance = (x[hit] - self.clean).abs().flatten(1).amax(1)
            j = int(distance.argmin())
            if float(distance[j]) < self.best_distance:
                self.best, self.best_distance = x[hit][j].detach().clone(), float(distance[j])
        return labels

    def is_adversarial(self, label: int) -> bool:
        return label == self.goal if self.targeted else label != self.goal

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """ART's ``predict_fn``: one-hot labels of a float N×3×H×W batch; raises :class:`_SearchOver` to stop."""
        if len(batch) == 1 and (label := self.known.get(batch[0].tobytes())) is not None:
            return np.eye(self.num_classes, dtype=np.float32)[[label]]
        labels = self.classify(torch.from_numpy(np.ascontiguousarray(batch)))
        if len(labels) < len(batch) or self.done:
            raise _SearchOver
        return np.eye(self.num_classes, dtype=np.float32)[labels.cpu().numpy()]


@register_attack("hopskipjump")
class HopSkipJump(Attack):
    """HopSkipJump (Chen et al. 2020), L∞, on labels only: at most ``queries`` model queries per image.

    Per image: one query classifies the clean image (an image already adversarial is done). The search starts from
    an adversarial image: for a targeted attack, the image of ``_start_pool`` (K×3×H×W, images the model classifies
    as the target, set by the caller: the pipeline takes them from the training split) nearest in L2 — it is
    classified again here, one query, and the next nearest is tried if the model disagrees; for an untargeted one,
    uniform noise drawn until the model calls it anything but the label (ART's own initialisation, seeded here), at
    most ``init_size`` draws. ART's ``HopSkipJump`` then searches (``max_eval``/``init_eval``: its gradient
    estimation sizes; ``batch_size``: the most images per model call). Every image sent counts; a batch that would
    exceed the budget is cut to what is left and ends the search, so ``_last_queries`` ≤ ``queries``. The search also
    ends, with no further query, once an adversarial point within eps of the clean image is found.

    The result is the adversarial point nearest the clean image in L∞ seen by any query, projected onto the eps-ball
    (and [0, 1]): unchanged, and adversarial, when it was within eps; a failure otherwise. ``seed`` seeds numpy for
    each image from the seed and the image's pixels, so an image's result does not depend on its batch.
    """

    needs: ClassVar[Needs] = "labels"

    def __init__(
        self,
        eps: float | str = "8/255",
        *,
        queries: int = 10000,
        max_eval: int = 10000,
        init_eval: int = 100,
        init_size: int = 100,
        batch_size: int = 256,
        seed: int | None = 0,
    ) -> None:
        self.eps = parse_budget(eps, "linf")
        for name, value in (
            ("queries", queries),
            ("max_eval", max_eval),
            ("init_eval", init_eval),
            ("init_size", init_size),
            ("batch_size", batch_size),
        ):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a whole number ≥ 1; got {value}")
        if init_eval > max_eval:
            raise ConfigError(f"init_eval ({init_eval}) must not exceed max_eval ({max_eval})")
        self.queries = int(queries)
        self.max_eval, self.init_eval, self.init_size = int(max_eval), int(init_eval), int(init_size)
        self.batch_size = int(batch_size)
        self.seed = seed
        self._start_pool: torch.Tensor | None = None

    def _image_seed(self, clean: torch.Tensor) -> int | None:
        if self.seed is None:
            return None
        pixels = zlib.crc32(clean.detach().cpu().numpy().tobytes())
        return int(np.random.SeedSequence([int(self.seed), pixels]).generate_state(1)[0])

    def _start(self, oracle: LabelOracle, clean: torch.Tensor, pool: torch.Tensor | None) -> torch.Tensor | None:
        """An image the model classifies as adversarial, from the pool (nearest first) or from noise; None if none."""
        if pool is not None:
            candidates = pool[(pool - clean).flatten(1).norm(dim=1).argsort()]
        else:
            shape = (self.init_size, *clean.shape)
            candidates = torch.from_numpy(np.random.uniform(0, 1, size=shape).astype(np.float32)).to(clean)
        for candidate in candidates:
            label = int(oracle.classify(candidate[None])[0])
            if oracle.is_adversarial(label):
                oracle.known[candidate.cpu().numpy().astype(np.float32).tobytes()] = label
                return candidate
        return None

    def _attack_one(self, model: nn.Module, clean: torch.Tensor, goal: int, pool: torch.Tensor | None) -> LabelOracle:
        from art.attacks.evasion import HopSkipJump as ArtHopSkipJump
        from art.estimators.classification import BlackBoxClassifier

        targeted = pool is not None
        oracle = LabelOracle(model, clean, goal, targeted=targeted, budget=self.queries, eps=self.eps)
        x = clean[None].cpu().numpy().astype(np.float32)
        with numpy_seed(self._image_seed(clean)):
            try:
                oracle.known[x[0].tobytes()] = int(oracle.classify(clean[None])[0])
                start = self._start(oracle, clean, pool)
                if start is None:
                    return oracle
                classifier = BlackBoxClassifier(oracle, tuple(clean.shape), oracle.num_classes, clip_values=(0.0, 1.0))
                search = ArtHopSkipJump(
                    classifier,
                    batch_size=self.batch_size,
                    targeted=targeted,
                    norm=np.inf,
                    # never the limit: every iteration costs at least two queries, so the budget ends the search
                    max_iter=self.queries,
                    max_eval=self.max_eval,
                    init_eval=self.init_eval,
                    init_size=self.init_size,
                    verbose=False,
                )
                y = np.eye(oracle.num_classes, dtype=np.float32)[[goal]]
                search.generate(x=x, y=y, x_adv_init=start[None].cpu().numpy().astype(np.float32))
            except _SearchOver:
                pass
        return oracle

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        try:
            import art  # noqa: F401
        except ImportError:
            raise ConfigError(
                "hopskipjump needs the Adversarial Robustness Toolbox; install it with pip install 'dermadv[art]'"
            ) from None
        pool = None
        if target is not None:
            pool = self._start_pool
            if pool is None or len(pool) == 0:
                raise ConfigError(
                    "a decision-based targeted attack needs images the model classifies as the target to start "
                    "from: set _start_pool (`dermadv attack run` takes them from the training split), or attack "
                    "untargeted"
                )
            if pool.ndim != 4 or tuple(pool.shape[1:]) != tuple(images.shape[1:]):
                raise ValueError(
                    f"the start pool must be K×{'×'.join(map(str, images.shape[1:]))}; got {tuple(pool.shape)}"
                )
            pool = pool.detach().to(images)
        classes = class_tensor(images, labels=labels, target=target)
        adv = images.detach().clone()
        spent = torch.zeros(len(images), dtype=torch.long, device=images.device)
        for i, clean in enumerate(images.detach()):
            oracle = self._attack_one(model, clean, int(classes[i]), pool)
            spent[i] = oracle.spent
            if oracle.best is not None:
                adv[i] = torch.minimum(torch.maximum(oracle.best, clean - self.eps), clean + self.eps).clamp(0, 1)
        self._last_queries = spent
        return adv

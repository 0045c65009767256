"""Transfer attacks: adversarial images made on surrogate models, never on the target (threat model ``transfer``).

``mi-di``: momentum iterative FGSM (Dong et al. 2018) with input diversity (Xie et al. 2019) — torchattacks'
``DIFGSM`` with ``decay=1`` — on the mean logits of one or more surrogates (dermadv classifiers of other
architectures or seeds, or any model source). The target model is queried only to score the result.

``transfer-square``: the transfer image refined by Square Attack (score-based), so that queries are spent only on
the images the transfer did not move (an image already moved spends the one query that scores it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dermadv.attacks.base import Attack, Needs
from dermadv.attacks.common import class_tensor, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.attacks.square import Square
from dermadv.errors import ConfigError


class SurrogateEnsemble(nn.Module):
    """Mean logits of several surrogates, each fed at its own input size."""

    def __init__(self, surrogates: Sequence[nn.Module], sizes: Sequence[tuple[int, int] | None]) -> None:
        super().__init__()
        self.members = nn.ModuleList(surrogates)
        self.sizes = list(sizes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = 0
        for member, size in zip(self.members, self.sizes, strict=True):
            x = images
            if size is not None and tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            out = out + member(x)
        return out / len(self.members)  # type: ignore[return-value]


def load_surrogates(surrogates: Sequence[str | nn.Module] | str) -> SurrogateEnsemble:
    """Surrogates by model spec (any white-box source: a dermadv checkpoint, TorchScript, ONNX, …) or as modules."""
    from dermadv.models.sources import load_model

    if isinstance(surrogates, str):
        surrogates = [s for s in surrogates.split(",") if s]
    if not surrogates:
        raise ConfigError("a transfer attack needs at least one surrogate: --param surrogates=[path, ...]")
    members: list[nn.Module] = []
    sizes: list[tuple[int, int] | None] = []
    for s in surrogates:
        if isinstance(s, nn.Module):  # the caller's module: used as it is, its weights left as they were
            members.append(s.eval())
            sizes.append(None)
            continue
        model = load_model(s)
        if not model.gradients:
            raise ConfigError(
                f"surrogate {s} offers no gradients ({', '.join(model.info.offers)}); use a white-box one"
            )
        for p in model.parameters():  # loaded here, used here only: no weight gradient is ever needed
            p.requires_grad_(False)
        members.append(model.eval())
        sizes.append(model.info.image_size)
    return SurrogateEnsemble(members, sizes).eval()


@register_attack("mi-di")
class MIDI(Attack):
    """MI-DI-FGSM on surrogates (transfer): ``steps`` momentum steps of ``eps / steps`` with input diversity."""

    needs: ClassVar[Needs] = "surrogate"

    def __init__(
        self,
        eps: float | str = "8/255",
        *,
        surrogates: Sequence[str | nn.Module] | str = (),
        steps: int = 20,
        decay: float = 1.0,
        diversity: float = 0.5,
        resize_rate: float = 0.9,
        seed: int = 0,
    ) -> None:
        self.eps = parse_budget(eps, "linf")
        if steps < 1 or not 0 <= diversity <= 1 or not decay >= 0:
            raise ConfigError(
                f"mi-di needs steps ≥ 1, diversity in [0, 1], decay ≥ 0; got {steps}, {diversity}, {decay}"
            )
        self.surrogates = [s if isinstance(s, str) else type(s).__name__ for s in _as_list(surrogates)]
        self._ensemble = load_surrogates(_as_list(surrogates))
        self.steps, self.decay, self.diversity, self.resize_rate, self.seed = steps, decay, diversity, resize_rate, seed

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        try:
            import torchattacks
        except ImportError:
            raise ConfigError("mi-di needs torchattacks; install it with pip install torchattacks") from None
        attack = torchattacks.DIFGSM(
            self._ensemble.to(images.device),
            eps=self.eps,
            alpha=self.eps / self.steps,
            steps=self.steps,
            decay=self.decay,
            resize_rate=self.resize_rate,
            diversity_prob=self.diversity,
        )
        if target is not None:
            attack.set_mode_targeted_by_label(quiet=True)
        classes = class_tensor(images, labels=labels, target=target)
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(self.seed)
            return attack(images, classes)


@register_attack("transfer-square")
class TransferSquare(Attack):
    """MI-DI-FGSM on the surrogates, then Square Attack on the target from that image (transfer-then-query)."""

    needs: ClassVar[Needs] = "scores"

    def __init__(
        self,
        eps: float | str = "8/255",
        *,
        surrogates: Sequence[str | nn.Module] | str = (),
        steps: int = 20,
        queries: int = 1000,
        p_init: float | None = None,
        seed: int = 0,
    ) -> None:
        self.transfer = MIDI(eps, surrogates=surrogates, steps=steps, seed=seed)
        self.square = Square(eps, queries=queries, p_init=p_init, seed=seed)
        self.eps, self.queries = self.transfer.eps, queries

    def perturb(
        self, model: nn.Module, images: torch.Tensor, *, labels: torch.Tensor | None, target: int | None
    ) -> torch.Tensor:
        start = self.transfer.perturb(model, images, labels=labels, target=target).clamp(0, 1)
        self.square._start = start
        try:
            adv = self.square.perturb(model, images, labels=labels, target=target)
        finally:
            self.square._start = None
        self._last_queries = self.square._last_queries
        return adv


def _as_list(surrogates: Sequence[str | nn.Module] | str) -> list[str | nn.Module]:
    if isinstance(surrogates, str):
        return [s for s in surrogates.split(",") if s]
    return list(surrogates)

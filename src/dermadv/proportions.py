"""A share of images, ``k`` of ``n``, and the worst class among per-class shares (shared by every stage)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Share:
    """``k`` of ``n`` images; stored as counts, so that a reader can put any interval on it."""

    k: int
    n: int

    @classmethod
    def of(cls, mask: Any) -> Share:
        """The share of true values in a boolean array or tensor."""
        return cls(int(mask.sum()), int(mask.numel() if hasattr(mask, "numel") else len(mask)))

    @property
    def estimate(self) -> float:
        return self.k / self.n if self.n else math.nan


def worst_class(fooled: Mapping[str, Share]) -> str | None:
    """The class with the smallest share fooled among the classes with images (the first such, in order); the
    paper's worst-class fooling ratio. None when no class has images."""
    present = [c for c, share in fooled.items() if share.n]
    return min(present, key=lambda c: fooled[c].estimate) if present else None

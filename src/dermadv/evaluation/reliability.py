"""Reliability checks before trusting an attack's figures (after AutoAttack's ``checks``, Croce & Hein 2020).

Each check is one line with its figure, never a silent pass: a randomised model, probabilities where logits were
promised, vanishing or zero input gradients (gradient masking), a black-box attack beating the white-box one
(masking again), an ONNX conversion that disagrees with onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Status = Literal["pass", "warn", "skip"]


@dataclass(frozen=True)
class Check:
    """One reliability check: what it looked at, the figure it measured, and whether it is a concern."""

    name: str
    status: Status
    figure: str
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.name}: {self.figure} — {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(**{k: d[k] for k in ("name", "status", "figure", "detail")})


@torch.no_grad()
def check_randomised(model: nn.Module, images: torch.Tensor) -> Check:
    """The same input twice must give the same output, else attacks need EOT and figures vary run to run."""
    a, b = model(images), model(images)
    diff = float((a - b).abs().max())
    if diff > 1e-5:
        return Check("randomised", "warn", f"max |Δscore| = {diff:.2e}", "same input twice gave different outputs")
    return Check("randomised", "pass", f"max |Δscore| = {diff:.1e}", "deterministic on the same input")


@torch.no_grad()
def check_probabilities(model: nn.Module, images: torch.Tensor, *, declared: str) -> Check:
    """Scores that are already probabilities (rows in [0, 1] summing to 1) although the card says logits."""
    scores = model(images).float()
    sums = scores.sum(1)
    probs_like = bool(((scores >= -1e-6) & (scores <= 1 + 1e-6)).all() and (sums - 1).abs().max() < 1e-3)
    if declared == "logits" and probs_like:
        return Check(
            "outputs",
            "warn",
            "every row in [0, 1], summing to 1",
            "the card says logits but these are probabilities; set `output: probabilities` so attacks use their log",
        )
    return Check("outputs", "pass", f"declared {declared}", "consistent with the scores returned")


def check_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, white_box: bool) -> Check:
    """Share of images whose input gradient of the cross-entropy is zero or vanishing (< 1e-8 in L1 per pixel)."""
    if not white_box:
        return Check("gradients", "skip", "no gradients", "black-box model: gradient masking cannot be checked")
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    per_image = grad.abs().flatten(1).mean(1)
    vanishing = int((per_image < 1e-8).sum())
    n = len(images)
    figure = f"{vanishing}/{n} images with vanishing gradients (median mean |∇| {float(per_image.median()):.1e})"
    if vanishing:
        return Check("gradients", "warn", figure, "gradient masking: trust a black-box attack's figure over PGD's")
    return Check("gradients", "pass", figure, "gradients flow to every image")


def check_black_beats_white(white_success: float | None, black_success: float | None, *, n: int) -> Check:
    """A score-based attack that succeeds more often than the white-box one on the same images means masking."""
    if white_success is None or black_success is None:
        return Check("black vs white", "skip", "not run", "run both a white-box and a score-based attack to compare")
    figure = f"white-box {white_success:.1%}, score-based {black_success:.1%} on {n} images"
    if black_success > white_success + 1e-9:
        return Check("black vs white", "warn", figure, "the black-box attack did better: gradients mislead (masking)")
    return Check("black vs white", "pass", figure, "the white-box attack is at least as strong")


def check_conversion(notes: tuple[str, ...], *, kind: str) -> Check:
    """An ONNX model's onnx2torch conversion against onnxruntime (from the model's load notes)."""
    if kind != "onnx":
        return Check("conversion", "skip", "not an ONNX model", "nothing converted")
    for note in notes:
        if "disagrees" in note or "cannot convert" in note:
            return Check("conversion", "warn", note.split(": ", 1)[-1], "white-box refused; black-box only")
        if "agrees" in note:
            return Check("conversion", "pass", note.split(": ", 1)[-1], "white-box through onnx2torch")
    return Check("conversion", "skip", "not checked", "the conversion was not compared")

"""Inference helpers shared by every stage: mixed precision and batched logits of uint8 images."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dermadv.data.load import to_float


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast when ``amp`` asks for it ("bf16", or "auto" on CUDA); otherwise a no-op context."""
    # bf16 on CPUs without AMX is slower than fp32, so "auto" means "on CUDA only".
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images_uint8: np.ndarray | torch.Tensor,
    *,
    indices: np.ndarray | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: str = "auto",
    tta: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits for uint8 N×H×W×3 images (optionally averaged over flips: test-time augmentation)."""
    device = torch.device(device)
    model.eval()
    if indices is None:
        indices = np.arange(len(images_uint8))
    src = images_uint8 if isinstance(images_uint8, torch.Tensor) else None
    out = []
    it = range(0, len(indices), batch_size)
    for s in tqdm(it, desc="predict", disable=not progress, leave=False):
        idx = indices[s : s + batch_size]
        chunk = src[torch.from_numpy(idx)] if src is not None else torch.from_numpy(np.asarray(images_uint8[idx]))
        x = to_float(chunk.to(device, non_blocking=True))
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x).float()
            if tta:
                logits = logits + model(x.flip(3)).float() + model(x.flip(2)).float() + model(x.flip(2, 3)).float()
                logits = logits / 4
        out.append(logits)
    return torch.cat(out).cpu() if out else torch.empty(0)


__all__ = ["autocast", "predict_logits"]

"""The start every resumable fit shares (classifier, generator), and the training set's home on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dermadv import distributed as dd
from dermadv.errors import RunError
from dermadv.runs import read_manifest


def start_fit(
    out: Path, state_name: str, *, seed: int, resume: bool, what: str, command: str
) -> tuple[torch.device, Path]:
    """Common start of a resumable fit: join the process group, seed, pick the device, guard the run folder.

    Without ``resume``, a folder that holds a fit's state or a complete run is refused: a run folder is one run.
    """
    dd.init_from_env()
    torch.manual_seed(seed)
    device = dd.default_device()
    if device.type == "cuda":
        # one input size throughout: cuDNN times its convolution algorithms once and keeps the fastest
        torch.backends.cudnn.benchmark = True
    state_path = Path(out) / state_name
    previous = read_manifest(out)
    held = state_path.exists() or (previous is not None and previous.get("status") == "complete")
    # Rank 0 decides for all: a rank that looked later could see the state file rank 0 just wrote.
    if dd.broadcast_object(held) and not resume:
        if previous is not None and previous.get("command") not in (None, command):
            what = f"a `dermadv {previous['command']}` run"
        raise RunError(f"{out} already holds {what}; pass --resume to continue it or choose another --out")
    return device, state_path


def device_images(images: np.ndarray, device: torch.device, *, share: float = 0.3) -> torch.Tensor:
    """The uint8 N×H×W×3 set as a tensor, on the GPU when it takes under ``share`` of the GPU's memory.

    On the GPU, a training step gathers its batch there and copies nothing from the host; otherwise
    the set stays in host memory, pinned when a GPU is used so batch copies can overlap compute.
    """
    tensor = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # a copy of a read-only memmap
    if device.type != "cuda":
        return tensor
    if tensor.numel() < share * torch.cuda.get_device_properties(device).total_memory:
        return tensor.to(device)
    return tensor.pin_memory()

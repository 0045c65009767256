"""The training set's home on the device and the order each epoch visits it, shared by the classifier and the
generator."""

from __future__ import annotations

import numpy as np
import torch

from dermadv import distributed as dd


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


def epoch_sampler(n: int, *, seed: int) -> torch.utils.data.DistributedSampler[int]:
    """A seeded shuffle of ``range(n)``, this rank's share of it in a process group (all of it otherwise)."""
    return torch.utils.data.DistributedSampler(
        range(n),  # type: ignore[arg-type]
        num_replicas=dd.world_size(),
        rank=dd.rank(),
        shuffle=True,
        seed=seed,
    )


def epoch_order(
    sampler: torch.utils.data.DistributedSampler[int], indices: np.ndarray, epoch: int, device: torch.device
) -> torch.Tensor:
    """``indices`` in the sampler's order for ``epoch``, as a tensor on ``device`` (the images' device): batches are
    then sliced there, with no host copy and no host sync inside the step loop."""
    sampler.set_epoch(epoch)
    return torch.from_numpy(indices[np.fromiter(iter(sampler), dtype=np.int64)]).to(device)

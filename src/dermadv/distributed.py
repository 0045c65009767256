"""torch.distributed helpers: works unchanged under torchrun (DDP) and in a single process."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env() -> None:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    log.info("process group %s: rank %d of %d", backend, rank(), world_size())


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() if is_distributed() else torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        # name the device, or NCCL guesses one and can hang when ranks share a node
        dist.barrier(device_ids=[local_rank()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. to fill a cache the others read).

    Every rank must enter it: it holds a barrier.
    """
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard_indices(n: int) -> np.ndarray:
    """This rank's share of ``range(n)``, strided and without padding, so gathered results need no de-duplication."""
    return np.arange(rank(), n, world_size())


def gather_rows(indices: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gather per-rank (indices, arrays) to every rank, sorted by index and de-duplicated."""
    if not is_distributed():
        order = np.argsort(indices, kind="stable")
        return (indices[order], *(a[order] for a in arrays))
    gathered: list[object] = [None] * world_size()
    dist.all_gather_object(gathered, (indices, arrays))
    all_idx = np.concatenate([g[0] for g in gathered])  # type: ignore[index]
    all_arrays = [np.concatenate([g[1][k] for g in gathered]) for k in range(len(arrays))]  # type: ignore[index]
    uniq, first = np.unique(all_idx, return_index=True)
    return (uniq, *(a[first] for a in all_arrays))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. batch-norm statistics) to every rank, in place.

    DDP broadcasts buffers before each forward, but the last training step still leaves every rank
    with statistics of its own batch; evaluating after this makes each rank hold rank 0's model.
    """
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def broadcast_tensor_attributes(obj: object) -> None:
    """Copy rank 0's values of ``obj``'s tensor attributes to every rank, in place (e.g. a fitted perturbation)."""
    if not is_distributed():
        return
    for value in vars(obj).values():
        if not isinstance(value, torch.Tensor):
            continue
        if dist.get_backend() == "nccl" and value.device.type != "cuda":  # NCCL moves GPU tensors only
            on_gpu = value.data.to(default_device())
            dist.broadcast(on_gpu, src=0)
            value.data.copy_(on_gpu)
        else:
            dist.broadcast(value.data, src=0)


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box: list[object] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()

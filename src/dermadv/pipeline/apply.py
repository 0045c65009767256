"""Apply any attack to a split and write the attack output folder (see docs/DESIGN.md).

Adversarial images are saved as lossless 8-bit PNG and **scored from the saved files**: the images a
person or a hospital system would see. In-memory predictions are kept beside them for comparison.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dermadv import distributed as dd
from dermadv.attacks.base import Attack
from dermadv.data.load import to_float
from dermadv.evaluation.attack_run import IMAGE_KINDS, PREDICTIONS_FILE, prediction_rows, read_png, save_png
from dermadv.models.sources import QueryCounter
from dermadv.runs import write_csv

log = logging.getLogger(__name__)


@dataclass
class AttackTask:
    attack: Attack
    model: nn.Module  # the attacked pipeline: [0, 1] images at the attack size -> logits
    classes: tuple[str, ...]
    images: np.ndarray  # uint8 N×H×W×3 at the attack size
    image_ids: list[str]
    labels: np.ndarray
    indices: np.ndarray  # which images to attack
    target: int | None
    eps: float | None
    batch_size: int = 64
    device: torch.device | str = "cpu"
    score_model: nn.Module | None = None  # what judges the images, if not ``model`` (a defence without its EOT)
    counter: QueryCounter | None = None  # the attacked model's, for the progress bar of a query-based attack


def quantise(adv: torch.Tensor, clean_uint8: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Round to 8 bits, keeping every pixel within ``floor(eps·255)`` steps of the clean image."""
    q = torch.round(adv.clamp(0, 1) * 255)
    if eps is not None:
        k = float(np.floor(eps * 255 + 1e-6))
        c = clean_uint8.float()
        q = torch.maximum(torch.minimum(q, c + k), c - k)
    return q.clamp_(0, 255).to(torch.uint8)


def amplified(clean: np.ndarray, adv: np.ndarray, eps: float | None) -> np.ndarray:
    """Perturbation made visible: mid-grey is zero, ±eps maps to black/white."""
    diff = adv.astype(np.float32) - clean.astype(np.float32)
    scale = (eps * 255) if eps else max(1.0, float(np.abs(diff).max()))
    return np.clip(127.5 + diff * (127.5 / scale), 0, 255).astype(np.uint8)


@torch.no_grad()
def predict_probs(model: nn.Module, batch_uint8: np.ndarray, device: torch.device | str) -> torch.Tensor:
    x = to_float(torch.from_numpy(np.ascontiguousarray(batch_uint8)).to(device))
    return torch.softmax(model(x).float(), 1).cpu()


class _QueryProgress:
    """Queries spent (and replayed from a journal), successes so far and queries per second as the bar's postfix,
    updated on every model call (at most five times a second) through the counter's listener."""

    def __init__(self, bar: Any, counter: QueryCounter) -> None:
        self.bar, self.counter = bar, counter
        self.start, self.base, self.base_replayed = time.perf_counter(), counter.queries, counter.replayed
        self.successes, self.last = 0, 0.0
        counter.listener = self.update

    def update(self, *, force: bool = False) -> None:
        now = time.perf_counter()
        if self.bar.disable or (not force and now - self.last < 0.2):
            return
        self.last = now
        spent, replayed = self.counter.queries - self.base, self.counter.replayed - self.base_replayed
        postfix = {"queries": spent, "successes": self.successes, "q/s": f"{spent / max(now - self.start, 1e-9):.1f}"}
        if replayed:
            postfix["replayed"] = replayed
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self.counter.listener == self.update:
            self.counter.listener = None


def run_attack(task: AttackTask, out: Path, *, progress: bool = True) -> np.ndarray | None:
    """Attack ``task.indices``, write PNGs and ``predictions.csv`` into ``out``; return the queries the attack spent
    per image (in the order of ``predictions.csv``) for a query-based attack, else None.

    Under torchrun the indices are sharded across ranks (strided, no padding) and gathered on
    rank 0 with their indices, so counts equal a single-process run exactly.
    """
    dirs = {k: out / "images" / k for k in IMAGE_KINDS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    model = task.model.eval()
    scorer = task.score_model.eval() if task.score_model is not None else model
    device = task.device
    mine = task.indices[dd.shard_indices(len(task.indices))]
    rows_idx, clean_probs, adv_probs, inmem, spent = [], [], [], [], []
    bar = tqdm(
        range(0, len(mine), task.batch_size),
        desc=f"attack {task.attack.name}",
        disable=not (progress and dd.is_main()),
        leave=False,
    )
    shown = _QueryProgress(bar, task.counter) if task.counter is not None and task.attack.needs != "gradients" else None
    # PNG coding releases the GIL: threads keep a fast GPU from waiting on one core for the files
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    for s in bar:
        idx = mine[s : s + task.batch_size]
        clean_u8 = torch.from_numpy(np.ascontiguousarray(task.images[idx])).to(device)
        x = to_float(clean_u8)
        labels = torch.from_numpy(task.labels[idx]).to(device)
        result = task.attack(model, x, labels=labels, target=task.target)
        if shown is not None:
            shown.successes += int(result.success.sum())
        if result.queries is not None:
            spent.append(result.queries.cpu().numpy().astype(np.int64))
        with torch.no_grad():
            inmem.append(scorer(result.adv_images).argmax(1).cpu())
        adv_u8 = quantise(result.adv_images, clean_u8.permute(0, 3, 1, 2), task.eps).permute(0, 2, 3, 1).cpu().numpy()
        clean_np = clean_u8.cpu().numpy()
        names = [f"{task.image_ids[i]}.png" for i in idx]
        writes = [(dirs["clean"] / n, clean_np[j]) for j, n in enumerate(names)]
        writes += [(dirs["adv"] / n, adv_u8[j]) for j, n in enumerate(names)]
        writes += [(dirs["perturbation"] / n, amplified(clean_np[j], adv_u8[j], task.eps)) for j, n in enumerate(names)]
        list(pool.map(lambda w: save_png(*w), writes))
        # Score the files as saved, not the tensors in memory.
        clean_back = np.stack(list(pool.map(read_png, [dirs["clean"] / n for n in names])))
        adv_back = np.stack(list(pool.map(read_png, [dirs["adv"] / n for n in names])))
        clean_probs.append(predict_probs(scorer, clean_back, device).numpy())
        adv_probs.append(predict_probs(scorer, adv_back, device).numpy())
        rows_idx.append(idx)
        if shown is not None:
            shown.update(force=True)
    pool.shutdown()
    if shown is not None:
        shown.close()
    k = len(task.classes)
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
    n = sum(len(i) for i in rows_idx)
    gathered = dd.gather_rows(
        cat(rows_idx, (0,)).astype(np.int64),
        cat(clean_probs, (0, k)),
        cat(adv_probs, (0, k)),
        torch.cat(inmem).numpy() if inmem else np.zeros(0, dtype=np.int64),
        cat(spent, (0,)) if len(spent) == len(rows_idx) else np.full(n, -1, dtype=np.int64),
    )
    order, cp, ap, im, qs = gathered
    queries = qs if len(spent) and (qs >= 0).all() else None
    if dd.is_main():
        label_codes = [task.classes[task.labels[i]] for i in order]
        ids = [task.image_ids[i] for i in order]
        write_csv(out / PREDICTIONS_FILE, prediction_rows(ids, label_codes, task.classes, cp, ap, im, queries))
    dd.barrier()
    return queries

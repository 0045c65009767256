"""Shared fixtures: a fake attack output folder, studies built from it, and a real uvicorn server."""

from __future__ import annotations

import contextlib
import csv
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dermadv.data.classes import CLASSES
from dermadv.observer.study import Study, create_study
from dermadv.runs import write_json


def _lesion(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth brown blob on skin tone with mild noise: looks enough like dermoscopy for a screenshot."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = rng.uniform(0.4, 0.6) * h, rng.uniform(0.4, 0.6) * w, rng.uniform(0.2, 0.35) * min(h, w)
    dist = np.hypot((yy - cy) / r, (xx - cx) / (r * rng.uniform(0.8, 1.3)))
    inside = 1 / (1 + np.exp((dist - 1) * 6))[..., None]
    skin, lesion = np.array([226.0, 182.0, 160.0]), np.array([118.0, 72.0, 52.0]) * rng.uniform(0.7, 1.1)
    image = skin * (1 - inside) + lesion * inside + rng.normal(0, 6, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_attack_dir(root: Path, *, n_images: int = 24, size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    """A folder in the attack output format: synthetic clean images and +/-2-step adversarial ones."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("clean", "adv"):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        image_id = f"ISIC_{i:07d}"
        clean = _lesion(rng, h, w)
        delta = rng.integers(-2, 3, size=(h, w, 3))
        adv = np.clip(clean.astype(int) + delta, 0, 255).astype(np.uint8)
        Image.fromarray(clean).save(root / "images" / "clean" / f"{image_id}.png")
        Image.fromarray(adv).save(root / "images" / "adv" / f"{image_id}.png")
        label = CLASSES[i % len(CLASSES)]
        rows.append(
            {"image_id": image_id, "label": label, "clean_pred": label, "adv_pred": "nv", "inmem_adv_pred": "nv"}
        )
    with open(root / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(
        root / "attack.json",
        {
            "method": "generator",
            "params": {},
            "eps": 2 / 255,
            "target": "nv",
            "target_index": CLASSES.index("nv"),
            "checkpoint": "model.safetensors",
            "data": "synthetic",
            "split": "test",
            "classes": list(CLASSES),
            "image_size": [h, w],
            "attack_size": [h, w],
        },
    )
    write_json(root / "manifest.json", {"command": "attack run", "status": "complete"})
    return root


@pytest.fixture(scope="session")
def attack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_attack_dir(tmp_path_factory.mktemp("adv-test"))


@pytest.fixture()
def make_study(attack_dir: Path, tmp_path: Path) -> Callable[..., Study]:
    """Factory: ``make_study(n=10, design="single", ...)`` writes a fresh study under tmp_path."""
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Study:
        kwargs.setdefault("n", 10)
        kwargs.setdefault("seed", 1)
        return create_study(attack_dir, tmp_path / f"study{next(counter)}", **kwargs)

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 15 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def live_server() -> Callable[[Any], contextlib.AbstractContextManager[str]]:
    """``with live_server(app) as url: ...`` runs a real uvicorn server."""
    return running_server


@pytest.fixture()
def fake_attack_dir() -> Callable[..., Path]:
    """``fake_attack_dir(root, n_images=..., size=...)`` for tests that need their own attack folder."""
    return make_attack_dir

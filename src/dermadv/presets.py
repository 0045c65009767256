"""Presets: ``demo`` (synthetic, minutes on 2 cores), ``cpu-64`` (real data on 2 cores), ``paper`` (GPU)."""

from __future__ import annotations

from typing import Any

from dermadv.errors import ConfigError

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "train": dict(
            arch="resnet18",
            image_size=32,
            epochs=10,
            batch_size=64,
            lr=3e-3,
            class_balance="sqrt",
            ema_decay=0.0,
            patience=6,
            select="sum",
        ),
        "attack": dict(eps="8/255", epochs=8, batch_size=32, sweep_eps="2/255,4/255,8/255"),
    },
    "cpu-64": {
        "train": dict(
            arch="resnet18",
            image_size=64,
            epochs=30,
            batch_size=64,
            lr=2e-3,
            warmup_epochs=2,
            class_balance="sqrt",
            label_smoothing=0.1,
            ema_decay=0.998,
            patience=10,
            select="sum",
            calibrate_bias=True,
        ),
        "attack": dict(eps="8/255", epochs=8, batch_size=32, sweep_eps="1/255,2/255,4/255,8/255,16/255"),
    },
    "paper": {
        "train": dict(
            arch="densenet201",
            image_size=224,
            epochs=12,
            batch_size=128,
            lr=1e-3,
            warmup_epochs=1,
            class_balance="sqrt",
            label_smoothing=0.1,
            ema_decay=0.0,
            patience=6,
            select="sum",
            weights="imagenet",
            calibrate_bias=True,
        ),
        "attack": dict(eps="2/255", epochs=3, batch_size=64, attack_size="stored", sweep_eps=""),
    },
}


def _preset(name: str) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_train_config(name: str) -> dict[str, Any]:
    return dict(_preset(name)["train"])


def preset_attack_config(name: str) -> dict[str, Any]:
    return dict(_preset(name)["attack"])

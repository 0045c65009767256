"""The classifier's training options (:class:`TrainConfig`), torch-free so that ``dermadv train --help`` shows its
defaults without loading torch; :mod:`dermadv.training.classifier` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dermadv.config import check_at_least, check_at_most, check_positive, check_share, check_types, parse_eps
from dermadv.errors import ConfigError

AdversarialMethod = Literal["none", "pgd", "fgsm-rs", "generator"]
ADVERSARIAL_METHODS: tuple[str, ...] = ("none", "pgd", "fgsm-rs", "generator")


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of :func:`dermadv.training.augment.augment`."""

    flips: bool = True
    rotation: float = 180.0  # max degrees
    scale: tuple[float, float] = (0.7, 1.0)  # area share kept, as in RandomResizedCrop
    translate: float = 0.05  # share of the image
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue_shift: float = 0.0


def check_adversarial(method: str, eps: float | str, steps: int, generator: str | None) -> None:
    """Refuse inconsistent adversarial-training options with one line each."""
    if method not in ADVERSARIAL_METHODS:
        raise ConfigError(f"adversarial must be one of {', '.join(ADVERSARIAL_METHODS)}; got {method!r}")
    parse_eps(eps)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"adv_steps must be a whole number of at least 1; got {steps!r}")
    if method == "generator" and not generator:
        raise ConfigError(
            "adversarial=generator needs adv_generator: the generator.safetensors of `dermadv attack fit`"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Options of a classifier fit (:func:`dermadv.pipeline.train.fit`), each checked when the config is made."""

    out: Path
    data: str | None = None
    arch: str = "densenet201"
    image_size: int = 224
    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    class_balance: Literal["none", "sqrt", "inverse"] = "sqrt"
    label_smoothing: float = 0.1
    augment: bool = True
    ema_decay: float = 0.0  # 0 disables the weight average
    patience: int = 8  # epochs without validation balanced-accuracy gain before stopping
    # the epoch whose model is kept: best on clean validation, or "last" (adversarial training: clean validation
    # prefers the least-trained, least robust epoch)
    select: Literal["balanced_accuracy", "accuracy", "sum", "last"] = "balanced_accuracy"
    calibrate_bias: bool = False  # tune a per-class logit bias on the validation split
    weights: str | None = None  # None, "imagenet" or a path to ImageNet weights
    init: str | None = None  # a dermadv model.safetensors to fine-tune from (e.g. adversarially); overrides weights
    seed: int = 0
    split_file: str | None = None
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: bool | None = None  # None: on CUDA only (it slows CPU training at 64 px by ~10%)
    compile: bool = False
    sync_batchnorm: bool = False
    max_train_images: int | None = None
    resume: bool = False
    progress: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    adversarial: Literal["none", "pgd", "fgsm-rs", "generator"] = "none"  # see training.adversarial
    adv_eps: str | float = "2/255"
    adv_steps: int = 10
    adv_generator: str | None = None  # generator.safetensors for adversarial="generator"
    # share of each batch replaced by its adversarial version (Goodfellow et al. 2015 mix clean and adversarial
    # halves); 1: every image attacked. A clean half keeps more accuracy and less robustness
    # (recipes/ham10000-cpu-at-share.yaml takes 85%)
    adv_share: float = 1.0
    # Gaussian noise N(0, sigma²) added to every training image in [0, 1] (Cohen et al. 2019): the base classifier of
    # randomized smoothing (`dermadv defend certify --sigma` the same value); 0: none
    noise_sigma: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, before any work: a wrong value would otherwise fail minutes later, or train silently
        # with something else (an unknown optimizer would otherwise fall back to SGD silently).
        check_types(self)
        check_at_least(self, 1, "epochs", "batch_size", "max_train_images")
        check_at_least(self, 8, "image_size")
        # a batch of 1,400 images at 60000 px asks for terabytes; dermatoscopic classifiers train at 224–600 px
        check_at_most(self, 2048, "image_size", why=" pixels")
        check_at_least(self, 0, "seed", "weight_decay", "warmup_epochs", "patience")  # patience 0: one epoch
        check_positive(self, "lr")
        check_share(self, "label_smoothing", "ema_decay")
        if not 0 < self.adv_share <= 1:
            raise ConfigError(f"adv_share must be in (0, 1]; got {self.adv_share!r}")
        check_at_least(self, 0, "noise_sigma")
        check_adversarial(self.adversarial, self.adv_eps, self.adv_steps, self.adv_generator)
        if self.init is not None and not Path(self.init).is_file():
            raise ConfigError(f"init checkpoint {self.init} does not exist; pass the model.safetensors of a train run")

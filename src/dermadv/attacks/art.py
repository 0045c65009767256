"""Adapter to the Adversarial Robustness Toolbox: run any of its evasion attacks on our classifier.

ART (Nicolae et al. 2018) is imported here, inside functions, and only when an ``art:<ClassName>``
attack is created.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from dermadv.attacks.base import Attack
from dermadv.attacks.common import class_tensor, parse_budget
from dermadv.attacks.registry import register_attack
from dermadv.errors import ConfigError

log = logging.getLogger(__name__)

_NORMS: dict[str, float] = {"linf": np.inf, "inf": np.inf, "l2": 2.0, "2": 2.0, "l1": 1.0, "1": 1.0}


def _evasion_module() -> Any:
    try:
        import art.attacks.evasion as evasion
    except ImportError:
        raise ConfigError(
            "art: attacks need the Adversarial Robustness Toolbox; install it with pip install 'dermadv[art]'"
        ) from None
    return evasion


def list_art_attacks() -> list[str]:
    """Class names of ART's evasion attacks (importing ART)."""
    from art.attacks.attack import EvasionAttack

    evasion = _evasion_module()
    return sorted(
        name
        for name, obj in vars(evasion).items()
        if inspect.isclass(obj) and issubclass(obj, EvasionAttack) and not inspect.isabstract(obj)
    )


def _art_class(class_name: str) -> type:
    evasion = _evasion_module()
    cls = getattr(evasion, class_name, None)
    if cls is None or class_name not in list_art_attacks():
        raise ConfigError(
            f"art:{class_name} is not an evasion attack of the Adversarial Robustness Toolbox; "
            f"choose one of {', '.join(list_art_attacks())}"
        )
    return cls


@register_attack("art:")
class ArtAttack(Attack):
    """Any ART evasion attack by class name, e.g. ``ArtAttack("SquareAttack", eps=4/255, max_iter=100)``.

    Our model is wrapped in ART's ``PyTorchClassifier`` (clip values (0, 1), cross-entropy loss, class
    count from the model's output). ``eps`` and ``targeted`` are passed where the attack accepts them;
    ``norm`` may be given as ``"linf"``/``"l2"``/``"l1"``. Targeted attacks get one-hot targets, untargeted
    ones one-hot true labels. Other ``params`` go to the attack's constructor unchanged (ART's defaults
    otherwise, e.g. its ``eps_step``; ``verbose`` is off and ``batch_size`` is the batch given).
    """

    def __init__(self, class_name: str, eps: float | str | None = None, **params: Any) -> None:
        self._cls = _art_class(class_name)
        self._signature = inspect.signature(self._cls)
        accepted = [p for p in self._signature.parameters if p not in ("self", "estimator", "classifier")]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(f"art:{class_name} does not take {', '.join(unknown)}; it accepts {', '.join(accepted)}")
        norm = params.get("norm")
        if isinstance(norm, str):
            if norm.lower() not in _NORMS:
                raise ConfigError(f"norm {norm!r} is not one of linf, l2, l1 (or ART's inf, 2, 1)")
            params["norm"] = _NORMS[norm.lower()]
        norm_name = "linf" if params.get("norm", np.inf) == np.inf else "l2"
        self.class_name = class_name
        self.name = f"art:{class_name}"
        self.eps = None if eps is None else parse_budget(eps, norm_name)
        self.params = params

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"ArtAttack({self.class_name!r}, eps={self.eps!r}{extra})"

    def _attack_kwargs(self, *, targeted: bool, batch_size: int) -> dict[str, Any]:
        accepts = self._signature.parameters
        kwargs = dict(self.params)
        if self.eps is not None:
            if "eps" in accepts:
                kwargs.setdefault("eps", self.eps)
            else:
                log.info("art:%s has no eps; ignoring eps=%s", self.class_name, self.eps)
        if "targeted" in accepts:
            kwargs.setdefault("targeted", targeted)
        elif targeted:
            raise ConfigError(f"art:{self.class_name} has no targeted mode; run it without a target")
        if "verbose" in accepts:
            kwargs.setdefault("verbose", False)
        if "batch_size" in accepts:
            kwargs.setdefault("batch_size", batch_size)
        return kwargs

    def perturb(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        labels: torch.Tensor | None,
        target: int | None,
    ) -> torch.Tensor:
        from art.estimators.classification import PyTorchClassifier
        from art.exceptions import EstimatorError

        with torch.no_grad():
            num_classes = int(model(images[:1]).shape[1])
        classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(images.shape[1:]),
            nb_classes=num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if images.is_cuda else "cpu",
        )
        kwargs = self._attack_kwargs(targeted=target is not None, batch_size=images.shape[0])
        try:
            attack = self._cls(classifier, **kwargs)
        except (EstimatorError, ValueError) as exc:
            raise ConfigError(f"art:{self.class_name} cannot run on this classifier: {exc}") from None
        classes = class_tensor(images, labels=labels, target=target).cpu().numpy()
        one_hot = np.eye(num_classes, dtype=np.float32)[classes]
        adv = attack.generate(x=images.detach().cpu().numpy().astype(np.float32), y=one_hot)
        return torch.from_numpy(np.asarray(adv, dtype=np.float32)).to(device=images.device, dtype=images.dtype)

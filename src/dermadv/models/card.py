"""A model card: what a model expects (size, value range, normalisation, channel order, layout) and returns.

dermadv attacks images in [0, 1], RGB, N×3×H×W. A model that others trained may expect 0–255 BGR NHWC at
224×224 with ImageNet mean/std applied outside the network, and may return probabilities or only a label. The
card says so, and :class:`CardAdapter` turns dermadv's images into what the model expects and its outputs into
scores over the HAM10000 classes, so that every attack and metric works unchanged on any model.

Without a card the defaults are dermadv's own convention: RGB in [0, 1], NCHW, no normalisation outside the
model, logits in the order of :data:`dermadv.data.classes.CLASSES`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dermadv.data.classes import CLASSES
from dermadv.errors import ConfigError, ModelError

Output = Literal["logits", "probabilities", "label"]
OUTPUTS: tuple[str, ...] = ("logits", "probabilities", "label")
#: the threat models, strongest first: what a model offers decides which an audit can use
THREAT_MODELS: tuple[str, ...] = ("white-box", "score-based", "decision-based", "transfer")


@dataclass(frozen=True)
class HttpSettings:
    """How to talk to an HTTP endpoint. Secrets are named by environment variable, never stored."""

    protocol: Literal["v2", "plain"] = "v2"  # v2: the Open Inference Protocol (KServe, Triton, MLServer, TorchServe)
    model_name: str = ""  # v2: the model's name in /v2/models/<name>/infer ("" = read from the URL)
    input_name: str = "input"  # v2: the name of the input tensor
    datatype: Literal["FP32", "UINT8"] = "FP32"  # v2: the input tensor's datatype
    request: Literal["json", "image"] = "json"  # plain: POST a JSON array or an image file (PNG)
    response_path: str = ""  # plain: dotted path of the scores or label in the JSON answer ("" = the answer itself)
    batch_size: int = 16  # images per request the endpoint accepts
    concurrency: int = 4  # requests in flight at once
    rate_limit: float = 0.0  # requests per second (0 = no limit)
    timeout: float = 30.0  # seconds per request
    retries: int = 4  # on 429, 5xx, timeouts and connection errors, with exponential backoff and jitter
    headers_env: dict[str, str] = field(default_factory=dict)  # header name -> environment variable holding its value

    def headers(self) -> dict[str, str]:
        """The request headers, read from the environment now (never kept in a file or a log)."""
        out = {}
        for header, var in self.headers_env.items():
            value = os.environ.get(var)
            if value is None:
                raise ConfigError(
                    f"the model card names header {header} from environment variable {var}, which is not set; "
                    f"export {var}=... before running"
                )
            out[header] = value
        return out


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and returns. Mean and std are in the units of ``value_range`` (0–1 or 0–255) and in the
    model's channel order (B, G, R for a BGR model): they apply after the channels are reordered."""

    input_size: tuple[int, int] | None = None  # (height, width); None: the model's declared size or the stored size
    resize: Literal["bilinear", "none"] = "bilinear"  # how images reach input_size (none: they must already match)
    value_range: Literal[1, 255] = 1
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    output: Output = "logits"
    classes: tuple[str, ...] = CLASSES  # the model's output order, by name
    mapping: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model class -> HAM10000 codes (default: itself)
    http: HttpSettings | None = None

    def __post_init__(self) -> None:
        checks = {
            "resize": ("bilinear", "none"),
            "value_range": (1, 255),
            "channel_order": ("RGB", "BGR"),
            "layout": ("NCHW", "NHWC"),
            "output": OUTPUTS,
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model card: {name} must be one of {', '.join(map(str, allowed))}; got {getattr(self, name)!r}"
                )
        if self.input_size is not None and (
            len(self.input_size) != 2 or not all(isinstance(s, int) and 8 <= s <= 4096 for s in self.input_size)
        ):
            raise ConfigError(f"model card: input_size must be [height, width] in 8..4096; got {self.input_size!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise ConfigError(f"model card: {name} must be three finite numbers; got {v!r}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"model card: std must be positive; got {self.std!r}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"model card: classes must name at least two distinct outputs; got {list(self.classes)}")
        unknown = [c for c in self.mapping if c not in self.classes]
        if unknown:
            raise ConfigError(f"model card: mapping names {', '.join(unknown)}, which are not among classes")
        groups = self.groups()
        seen: dict[str, str] = {}
        for name, codes in groups.items():
            for code in codes:
                if code not in CLASSES:
                    raise ConfigError(
                        f"model card: class {name!r} maps to {code!r}, not a HAM10000 code ({', '.join(CLASSES)}); "
                        "add a mapping such as `mapping: {melanoma: [mel]}`"
                    )
                if code in seen:
                    raise ConfigError(f"model card: {code} is mapped by both {seen[code]!r} and {name!r}")
                seen[code] = name
        missing = [c for c in CLASSES if c not in seen]
        if missing:
            raise ConfigError(
                f"model card: no model class covers {', '.join(missing)}; map every HAM10000 code to one class "
                "(e.g. `mapping: {benign: [bkl, df, nv, vasc], malignant: [akiec, bcc, mel]}`)"
            )

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Each model class with the HAM10000 codes it stands for."""
        return {c: tuple(self.mapping.get(c, (c,))) for c in self.classes}

    @property
    def grouped(self) -> bool:
        """Whether some model class stands for several HAM10000 codes (a binary malignant/benign model)."""
        return any(len(v) != 1 for v in self.groups().values())

    def model_class_of(self, code: str) -> str:
        """The model class whose group holds the HAM10000 ``code``."""
        return next(name for name, codes in self.groups().items() if code in codes)


def card_from_dict(raw: dict[str, Any], *, where: str = "model card") -> ModelCard:
    """Build a card from parsed YAML, naming any unknown key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a YAML mapping; got {type(raw).__name__}")
    known = {f.name for f in fields(ModelCard)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kw: dict[str, Any] = dict(raw)
    for name in ("input_size", "mean", "std", "classes"):
        if kw.get(name) is not None:
            if not isinstance(kw[name], (list, tuple)):
                raise ConfigError(f"{where}: {name} must be a list; got {kw[name]!r}")
            kw[name] = tuple(kw[name])
    if "mapping" in kw:
        if not isinstance(kw["mapping"], dict):
            raise ConfigError(f"{where}: mapping must be a mapping of class -> [codes]; got {kw['mapping']!r}")
        kw["mapping"] = {str(k): tuple(v if isinstance(v, (list, tuple)) else [v]) for k, v in kw["mapping"].items()}
    if kw.get("http") is not None:
        http = kw["http"]
        known_http = {f.name for f in fields(HttpSettings)}
        if not isinstance(http, dict) or set(http) - known_http:
            bad = sorted(set(http) - known_http) if isinstance(http, dict) else [repr(http)]
            raise ConfigError(f"{where}: unknown http key(s) {', '.join(bad)}; known: {', '.join(sorted(known_http))}")
        kw["http"] = HttpSettings(**http)
    try:
        return ModelCard(**kw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """A plain mapping of the card (lists, not tuples), as written to YAML and to run folders."""
    raw = asdict(card)
    for name in ("input_size", "mean", "std", "classes"):
        if raw[name] is not None:
            raw[name] = list(raw[name])
    raw["mapping"] = {k: list(v) for k, v in raw["mapping"].items()}
    if raw["http"] is None:
        del raw["http"]
    return raw


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model card {path} does not exist; write one with `dermadv model card MODEL --out {path}`")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model card {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return card_from_dict(raw or {}, where=f"model card {path}")


def save_card(card: ModelCard, path: str | os.PathLike[str]) -> None:
    import yaml

    from dermadv.runs import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(card_to_dict(card), sort_keys=False))


def card_beside(model_path: str | os.PathLike[str]) -> Path | None:
    """``<model>.card.yaml`` next to a model file, as ``dermadv model card`` writes it."""
    p = Path(str(model_path) + ".card.yaml")
    return p if p.is_file() else None


class CardAdapter(nn.Module):
    """dermadv's images ([0, 1], RGB, N×3×H×W) -> what the model expects; its outputs -> scores over its classes.

    Scores are logits, log-probabilities (for a model that returns probabilities: a softmax of them gives the
    model's probabilities back, and gradient attacks on them are those of a cross-entropy) or, for a label-only
    model, a one-hot. When the card's classes are the HAM10000 codes in another order, scores are put in
    dermadv's order, so every metric and table works as for a dermadv checkpoint.
    """

    mean: torch.Tensor
    std: torch.Tensor
    order: torch.Tensor

    def __init__(self, model: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.model = model
        self.card = card
        scale = float(card.value_range)
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.scale = scale
        order = output_order(card)
        self.register_buffer(
            "order", torch.tensor(order if order is not None else [], dtype=torch.long), persistent=False
        )
        self.reorder = order is not None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        card = self.card
        if card.input_size is not None and tuple(images.shape[-2:]) != tuple(card.input_size):
            if card.resize == "none":
                raise ConfigError(
                    f"the model takes {card.input_size[0]}x{card.input_size[1]} images and its card says resize: "
                    f"none, but the images are {images.shape[-2]}x{images.shape[-1]}; set input_size or resize"
                )
            images = F.interpolate(images, size=card.input_size, mode="bilinear", antialias=True, align_corners=False)
        if card.channel_order == "BGR":
            images = images.flip(1)
        x = images * self.scale if self.scale != 1 else images
        if card.mean != (0.0, 0.0, 0.0) or card.std != (1.0, 1.0, 1.0):
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if card.layout == "NHWC":
            x = x.permute(0, 2, 3, 1).contiguous()
        return x

    def scores(self, raw: torch.Tensor) -> torch.Tensor:
        card = self.card
        k = len(card.classes)
        if card.output == "label":
            raw = raw.reshape(-1).long()
            raw = F.one_hot(raw.clamp(0, k - 1), k).float()
        elif raw.ndim != 2 or raw.shape[1] != k:
            raise ConfigError(
                f"the model returned shape {tuple(raw.shape)}; its card names {k} classes "
                f"({', '.join(card.classes)}): fix `classes` in the card"
            )
        elif card.output == "probabilities":
            raw = torch.log(raw.float().clamp_min(1e-12))
        if self.reorder:
            raw = raw[:, self.order]
        return raw

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scores(score_tensor(self.model(self.prepare(images))))


def score_tensor(answer: Any) -> torch.Tensor:
    """The scores in a model's answer: the tensor itself; a Hugging Face output's ``.logits``; a dict's
    ``"logits"`` (or its only tensor); the first element of a tuple or list (models that return features or
    auxiliary heads beside their scores)."""
    if isinstance(answer, torch.Tensor):
        return answer
    logits = getattr(answer, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(answer, Mapping):
        if "logits" in answer:
            return score_tensor(answer["logits"])
        tensors = [v for v in answer.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ModelError(
            f"the model answered a dict of {', '.join(map(str, answer))}, none named 'logits'; "
            "wrap it to return its scores as one tensor"
        )
    if isinstance(answer, tuple | list) and answer:
        return score_tensor(answer[0])
    raise ModelError(f"the model answered a {type(answer).__name__}, not scores; wrap it to return one tensor")


def output_order(card: ModelCard) -> list[int] | None:
    """Indices that put a model's outputs in dermadv's class order, when its classes are the HAM codes renamed or
    reordered; None when no reordering is needed or the model groups classes (then its own order is kept)."""
    if card.grouped:
        return None
    codes = [card.groups()[c][0] for c in card.classes]
    order = [codes.index(c) for c in CLASSES]
    return None if order == list(range(len(CLASSES))) else order


def scored_classes(card: ModelCard) -> tuple[str, ...]:
    """The classes the adapter's scores stand for: HAM10000 codes, or the model's own groups."""
    return tuple(card.classes) if card.grouped else CLASSES


def with_size(card: ModelCard, size: tuple[int, int] | None) -> ModelCard:
    return card if size is None or card.input_size is not None else replace(card, input_size=(size[0], size[1]))

"""Any model is a model: a dermadv checkpoint, a state dict for a torchvision/timm/user architecture, TorchScript,
ONNX (white-box through onnx2torch, black-box through onnxruntime) or an HTTP endpoint.

:func:`load_model` turns a ``--model`` spec into a :class:`SourceModel`: one ``nn.Module`` that maps dermadv's
images ([0, 1], RGB, N×3×H×W) to scores over the HAM10000 classes (through the model card), declares which
threat models it offers, and counts every query it answers and the time the model itself took. No attack asks
what file a model came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermadv.data.classes import CLASSES
from dermadv.errors import CheckpointError, ConfigError, ModelError
from dermadv.models.card import (
    THREAT_MODELS,
    CardAdapter,
    ModelCard,
    card_beside,
    card_to_dict,
    load_card,
    scored_classes,
)
from dermadv.models.journal import QueryJournal, image_keys

log = logging.getLogger(__name__)

DEFAULT_SIZE = (224, 224)
#: onnx2torch's conversion is used for gradients only when it agrees with onnxruntime this closely (logits)
ONNX_TOLERANCE = 1e-4
#: … and for a float16 graph, whose two runtimes round differently (float16's step near 1 is 1e-3)
ONNX_TOLERANCE_FP16 = 1e-2
SPEC_HELP = (
    "a dermadv .safetensors, torchvision:<arch> or timm:<arch> or python:<module>:<factory> with --weights FILE, "
    "a TorchScript file, a torch.export .pt2 file, an .onnx file or an http(s):// URL"
)


#: every model's time and queries in this process, for a pipeline that times many stages (the audit)
PROCESS_TOTAL = {"queries": 0, "model_seconds": 0.0}


@dataclass
class QueryCounter:
    """Images the model answered and the seconds it took: one counter per model, shared by every attack.

    ``replayed`` counts the queries a :class:`~dermadv.models.journal.QueryJournal` answered instead of the model
    (not in ``queries``: nothing was sent). ``listener``, when set, is called after every change (a progress bar).
    """

    queries: int = 0
    calls: int = 0
    seconds: float = 0.0
    replayed: int = 0
    listener: Callable[[], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int, seconds: float) -> None:
        with self._lock:
            self.queries += n
            self.calls += 1
            self.seconds += seconds
            PROCESS_TOTAL["queries"] += n
            PROCESS_TOTAL["model_seconds"] += seconds
        if self.listener is not None:
            self.listener()

    def replay(self, n: int) -> None:
        with self._lock:
            self.replayed += n
        if self.listener is not None:
            self.listener()

    def snapshot(self) -> dict[str, float]:
        return {
            "queries": self.queries,
            "calls": self.calls,
            "model_seconds": round(self.seconds, 4),
            "replayed": self.replayed,
        }


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, as a run folder records it (no secret: a URL keeps no credentials or query string)."""

    spec: str
    kind: str
    classes: tuple[str, ...]  # the classes the scores stand for (HAM10000 codes, or the model's own groups)
    image_size: tuple[int, int] | None  # the size images are prepared at; None: the files' stored size
    fingerprint: str  # sha256 of the model file(s) and weights, or of the URL for an endpoint
    offers: tuple[str, ...]  # threat models the model allows, strongest first
    card: ModelCard
    weights: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def threat_model(self) -> str:
        return self.offers[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "weights": self.weights,
            "classes": list(self.classes),
            "image_size": list(self.image_size) if self.image_size else None,
            "fingerprint": self.fingerprint,
            "offers": list(self.offers),
            "threat_model": self.threat_model,
            "card": card_to_dict(self.card),
            "notes": list(self.notes),
        }


class BlackBox(nn.Module):
    """A callable on numpy arrays (onnxruntime, an HTTP client) as a module without gradients."""

    def __init__(self, backend: Callable[[np.ndarray], np.ndarray], *, name: str) -> None:
        super().__init__()
        self.backend = backend
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backend(np.ascontiguousarray(x.detach().float().cpu().numpy()))
        out = np.asarray(out)
        if not np.isfinite(out.astype(np.float64)).all():
            raise ModelError(f"{self.name} answered NaN or inf scores; check the model and its card's output kind")
        return torch.from_numpy(out.astype(np.float32)).to(x.device)


class SourceModel(nn.Module):
    """Images in [0, 1] (RGB, N×3×H×W) -> scores over :attr:`info.classes`; every call counted.

    ``quantise`` (black-box models) rounds each image to 8 bits first: what an endpoint receives is a PNG, so
    attacks are scored on the exact bytes sent.
    """

    def __init__(self, net: nn.Module, info: ModelInfo, *, quantise: bool = False) -> None:
        super().__init__()
        self.net = net
        self.info = info
        self.quantise = quantise
        self.counter = QueryCounter()
        self.fallback: SourceModel | None = None  # ONNX: the onnxruntime model, when onnx2torch is refused
        self.journal: QueryJournal | None = None  # see :meth:`open_journal`

    @property
    def gradients(self) -> bool:
        return self.info.threat_model == "white-box"

    def open_journal(self, path: str | os.PathLike[str]) -> QueryJournal | None:
        """Record every answer of this black-box model in ``path`` and answer from it what an earlier run there
        was answered (see :mod:`dermadv.models.journal`); a white-box model, whose gradients no journal holds,
        opens none (returns None)."""
        if self.gradients:
            return None
        card = card_to_dict(self.info.card)
        http = card.get("http") or {}
        # what the answers depend on; how they travel (batch size, concurrency, rate, retries) may change
        transport = ("batch_size", "concurrency", "rate_limit", "timeout", "retries", "headers_env")
        card["http"] = {k: v for k, v in http.items() if k not in transport}
        identity = json.dumps([self.info.fingerprint, card, self.quantise], sort_keys=True, default=str)
        self.journal = QueryJournal(path, width=len(self.info.classes), identity=identity)
        return self.journal

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.quantise:
            images = torch.round(images.clamp(0, 1) * 255) / 255
        if self.journal is not None and not self.gradients:
            return self._journaled(images, self.journal)
        return self._query(images)

    def _journaled(self, images: torch.Tensor, journal: QueryJournal) -> torch.Tensor:
        # keyed on what the model receives: 8-bit levels of a quantised black box (exact), else the floats
        inputs = torch.round(images * 255).to(torch.uint8) if self.quantise else images.float()
        keys = image_keys(inputs.detach().cpu().numpy())
        found, rows = journal.replay(keys)
        out = torch.from_numpy(rows).to(images.device)
        missing = np.flatnonzero(~found)
        if len(missing):
            live = self._query(images[torch.from_numpy(missing).to(images.device)]).float()
            if live.shape[1:] != (journal.width,):
                raise ModelError(
                    f"{self.info.spec} answered {tuple(live.shape[1:])} scores per image; expected {journal.width}"
                )
            journal.record([keys[i] for i in missing], live.cpu().numpy())
            out[torch.from_numpy(missing).to(images.device)] = live
        if len(missing) < len(keys):
            self.counter.replay(len(keys) - len(missing))
        return out

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        backend = getattr(self, "backend", None)
        codec = getattr(backend, "codec_seconds", 0.0)
        start = time.perf_counter()
        if self.gradients:
            out = self.net(images)
        else:
            with torch.no_grad():
                out = self.net(images)
        elapsed = time.perf_counter() - start
        if backend is not None:  # an endpoint's time is the wait for its answers, not dermadv's JSON coding
            elapsed -= getattr(backend, "codec_seconds", 0.0) - codec
        self.counter.add(int(images.shape[0]), max(0.0, elapsed))
        return out


def _sha256(*parts: bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(part)
    return h.hexdigest()[:16]


def redact_url(url: str) -> str:
    """The URL without user:password, query string or fragment (where tokens hide)."""
    from dermadv.models.http import display_url

    return display_url(url)


def load_model(
    spec: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    card: ModelCard | str | os.PathLike[str] | None = None,
    threat_model: str | None = None,
    device: str | torch.device = "cpu",
) -> SourceModel:
    """Load ``spec`` (see :data:`SPEC_HELP`) with its card; ``threat_model`` caps what the model offers.

    Every problem is one :class:`ModelError` or :class:`ConfigError` line naming the fix, raised before any
    long work.
    """
    spec = str(spec)
    if threat_model is not None and threat_model not in THREAT_MODELS[:3]:
        raise ConfigError(f"--threat-model must be one of {', '.join(THREAT_MODELS[:3])}; got {threat_model!r}")
    card_obj, card_given = _resolve_card(spec, card)
    is_url = spec.startswith(("http://", "https://"))
    prefixed = spec.startswith(("torchvision:", "timm:", "python:"))
    path = Path(spec)
    if weights is not None and not prefixed:
        raise ConfigError(
            f"--weights goes with torchvision:<arch>, timm:<arch> or python:<module>:<factory>, not with {spec}; "
            "a checkpoint, TorchScript, ONNX file or URL carries its own weights"
        )
    if is_url:
        model = _load_http(spec, card_obj)
    elif prefixed:
        model = _load_architecture(spec, weights, card_obj, card_given)
    elif not path.exists():
        raise ModelError(f"model {spec} does not exist; pass {SPEC_HELP}")
    elif path.is_dir():
        raise ModelError(f"model {spec} is a folder; pass the model file in it (e.g. {path / 'model.safetensors'})")
    elif path.suffix == ".safetensors":
        model = _load_dermadv(path, card_obj, card_given)
    elif path.suffix == ".onnx":
        model = _load_onnx(path, card_obj)
    elif path.suffix == ".pt2":
        model = _load_exported_program(path, card_obj)
    else:
        model = _load_torchscript(path, card_obj)
    if threat_model is not None:
        model = _cap(model, threat_model)
    return model.to(device).eval()


def _resolve_card(spec: str, card: ModelCard | str | os.PathLike[str] | None) -> tuple[ModelCard, bool]:
    if isinstance(card, ModelCard):
        return card, True
    if card is not None:
        return load_card(card), True
    if not spec.startswith(("http://", "https://", "torchvision:", "timm:", "python:")):
        beside = card_beside(spec)
        if beside is not None:
            log.info("using the model card %s", beside)
            return load_card(beside), True
    return ModelCard(), False


def _offers(card: ModelCard, *, gradients: bool) -> tuple[str, ...]:
    black = ("score-based", "decision-based") if card.output != "label" else ("decision-based",)
    return (("white-box",) if gradients and card.output != "label" else ()) + black + ("transfer",)


def _card_info(
    card: ModelCard, *, spec: str, kind: str, fingerprint: str, gradients: bool, weights: str | None = None
) -> ModelInfo:
    """What a model described by its card offers: the card's scored classes and input size."""
    return ModelInfo(
        spec=spec,
        kind=kind,
        classes=scored_classes(card),
        image_size=card.input_size,
        fingerprint=fingerprint,
        offers=_offers(card, gradients=gradients),
        card=card,
        weights=weights,
    )


def _cap(model: SourceModel, threat_model: str) -> SourceModel:
    offers = model.info.offers
    if threat_model not in offers:
        raise ConfigError(
            f"{model.info.spec} offers {', '.join(offers)}; --threat-model {threat_model} is not among them"
        )
    if threat_model != "white-box" and model.gradients:
        model = _as_black_box(model)
    info = replace(model.info, offers=offers[offers.index(threat_model) :])
    model.info = info
    return model


def _as_black_box(model: SourceModel) -> SourceModel:
    """The same model used through its outputs only (8-bit inputs, no gradients)."""
    if model.fallback is not None:
        return model.fallback
    black = SourceModel(model.net, replace(model.info, offers=model.info.offers[1:]), quantise=True)
    return black


def _finish(net: nn.Module, card: ModelCard, info: ModelInfo, *, quantise: bool = False) -> SourceModel:
    return SourceModel(CardAdapter(net, card), info, quantise=quantise)


def _load_dermadv(path: Path, card: ModelCard, card_given: bool) -> SourceModel:
    from dermadv.models.checkpoints import load_checkpoint, load_state

    _, raw = load_state(path)
    if "kind" not in raw:  # a dermadv file of another kind (a generator) is named as such by load_checkpoint
        raise ModelError(
            f"{path} is a .safetensors without dermadv's classifier metadata; for a plain state dict pass "
            f"--model torchvision:<arch> (or timm:<arch>, python:<module>:<factory>) --weights {path}"
        )
    classifier, meta = load_checkpoint(path)
    unknown = [c for c in meta.classes if c not in CLASSES]
    if unknown:
        raise CheckpointError(
            f"{path} was trained on classes {','.join(meta.classes)}, not the HAM10000 classes {','.join(CLASSES)}; "
            "audit a classifier of those classes"
        )
    if card_given:
        raise ConfigError(f"{path} is a dermadv checkpoint, which records its own card; drop --model-card")
    size = (int(meta.image_size[0]), int(meta.image_size[1]))
    card = replace(card, input_size=size, classes=tuple(meta.classes))
    info = ModelInfo(
        spec=str(path),
        kind="dermadv",
        classes=tuple(meta.classes),
        image_size=size,
        fingerprint=_sha256(path),
        offers=_offers(card, gradients=True),
        card=card,
    )
    model = SourceModel(classifier, info)
    return model


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's ``module.`` and Lightning-style ``model.`` prefixes when every key carries one."""
    for prefix in ("module.", "model.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"--weights {path} does not exist; pass a state dict (.pt, .pth or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds
        raise ModelError(
            f"cannot read --weights {path} as a state dict: {str(exc).splitlines()[0][:200]}; save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):  # common training-script wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"--weights {path} holds no state dict of tensors; save it with torch.save(model.state_dict())"
        )
    return _strip_prefixes(dict(state))


def _build_architecture(spec: str, num_classes: int) -> nn.Module:
    kind, _, name = spec.partition(":")
    if kind == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"unknown torchvision architecture {name!r}; `dermadv models` lists them")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm architecture {name!r}; `dermadv models 'timm:*'` lists them")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    module_name, _, factory_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {spec}: {exc}; put its folder on PYTHONPATH") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no callable {factory_name!r}; pass python:<module>:<factory>")
    net = factory()
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{spec} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _load_architecture(spec: str, weights: Any, card: ModelCard, card_given: bool) -> SourceModel:
    if weights is None:
        raise ConfigError(f"{spec} needs --weights FILE (its trained state dict); dermadv never audits random weights")
    net = _build_architecture(spec, len(card.classes))
    state = read_state_dict(Path(weights))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        size = next((ln for ln in lines if "size mismatch" in ln), None)
        hint = (
            f"the head does not have the card's {len(card.classes)} classes ({', '.join(card.classes)}): {size}; "
            "set `classes` in the card"
            if size
            else (lines[1] if len(lines) > 1 else lines[0])[:300]
        )
        raise ModelError(f"--weights {weights} does not fit {spec}: {hint}") from None
    if not card_given:
        log.warning("no model card for %s: assuming RGB in [0, 1], logits in dermadv's class order", spec)
    card = card if card.input_size else replace(card, input_size=DEFAULT_SIZE)
    fingerprint = _sha256(spec.encode(), Path(weights))
    kind = spec.partition(":")[0]
    info = _card_info(card, spec=spec, kind=kind, fingerprint=fingerprint, gradients=True, weights=str(weights))
    return _finish(net, card, info)


def _load_torchscript(path: Path, card: ModelCard) -> SourceModel:
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # torch.jit.load raises RuntimeError or ValueError with pages of C++ context
        if _torch_save_archive(path) and not _loads_as_weights(path):
            raise ModelError(
                f"{path} is a pickled model (torch.save(model)), which dermadv does not load (unpickling runs the "
                "file's code): save model.state_dict() and pass --model torchvision:<arch> (or timm:, python:) "
                "--weights FILE, or export TorchScript, torch.export (.pt2) or ONNX"
            ) from None
        hint = (
            f"if it is a state dict, pass --model torchvision:<arch> (or timm:, python:) --weights {path}"
            if path.suffix in (".pt", ".pth", ".bin")
            else SPEC_HELP
        )
        raise ModelError(f"{path} is not a TorchScript file; {hint}") from None
    size = card.input_size or DEFAULT_SIZE
    if card.input_size is None:
        log.warning("TorchScript %s declares no input size: using %dx%d (set input_size in a card)", path, *size)
    card = replace(card, input_size=(int(size[0]), int(size[1])))
    info = _card_info(card, spec=str(path), kind="torchscript", fingerprint=_sha256(path), gradients=True)
    return _finish(net, card, info)


def _torch_save_archive(path: Path) -> bool:
    """A ``torch.save`` archive (``data.pkl``) without TorchScript's code: a state dict or a whole pickled model."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def _loads_as_weights(path: Path) -> bool:
    """Whether ``torch.load(weights_only=True)`` reads it (tensors and containers only: no code is run)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the weights-only unpickler refuses a pickled module with an UnpicklingError, or others
        return False
    return True


def _load_exported_program(path: Path, card: ModelCard) -> SourceModel:
    """A ``torch.export.save`` file (``.pt2``): its one image input's shape says the size and any fixed batch."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch.export.load raises RuntimeError, KeyError, … for other files and versions
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"{path} is not a torch.export program torch {torch.__version__} can load ({first}); "
            "save it again with torch.export.save, or export TorchScript or ONNX"
        ) from None
    user = set(program.graph_signature.user_inputs)
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    shapes = [tuple(n.meta["val"].shape) for n in inputs if "val" in n.meta]
    if len(inputs) != 1 or len(shapes) != 1 or len(shapes[0]) != 4:
        raise ModelError(
            f"{path} takes {len(inputs)} input(s) of shape(s) {[list(s) for s in shapes]}; dermadv feeds one image "
            "tensor N×C×H×W (or N×H×W×C with layout: NHWC in the card): export the model with that one input"
        )
    shape = shapes[0]
    batch = shape[0] if isinstance(shape[0], int) else None
    h, w = (shape[2], shape[3]) if card.layout == "NCHW" else (shape[1], shape[2])
    declared = (h, w) if isinstance(h, int) and isinstance(w, int) else None
    size = card.input_size or declared or DEFAULT_SIZE
    if card.input_size is None and declared is None:
        log.warning("%s has a dynamic input size: using %dx%d (set input_size in a card)", path, *size)
    card = replace(card, input_size=(int(size[0]), int(size[1])))
    info = _card_info(card, spec=str(path), kind="torch.export", fingerprint=_sha256(path), gradients=True)
    return _finish(ExportedGraph(program.module(), fixed_batch=batch), card, info)


def onnx_input_size(session: Any, card: ModelCard) -> tuple[int, int] | None:
    """The static (height, width) of an ONNX model's first input, read per the card's layout."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4:
        raise ModelError(f"the ONNX model's input has shape {shape}; dermadv audits image models (4-D input)")
    h, w = (shape[2], shape[3]) if card.layout == "NCHW" else (shape[1], shape[2])
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


class OnnxRuntime:
    """An ONNX file run by onnxruntime on the CPU (one session, threads as torch's): the output that holds the
    scores (:attr:`OnnxSession.scores_at`)."""

    def __init__(self, path: Path) -> None:
        from dermadv.models.onnx_session import OnnxSession

        self.onnx = OnnxSession(path, threads=torch.get_num_threads())
        self.session = self.onnx.session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.onnx.run(batch)[self.onnx.scores_at]


class ExportedGraph(nn.Module):
    """A graph exported by others (ONNX through onnx2torch, or a ``torch.export`` program), answering as one call
    on the whole batch would: a batch size fixed at export is run in slices of that size (see
    :func:`dermadv.models.onnx_session.padded_slices`; gradients flow to the real images only), and of several
    outputs the scores (``scores_at``) are kept. An exported graph is an inference graph: it is put in eval mode
    once and has no train/eval switch after (``torch.export`` modules refuse ``eval()``: they keep the mode they
    were exported in)."""

    def __init__(
        self,
        net: nn.Module,
        *,
        fixed_batch: int | None,
        scores_at: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dtype = dtype  # a float16 or float64 graph takes its inputs in that type; scores come back as float32
        with contextlib.suppress(NotImplementedError):  # raised by torch.export modules
            net.eval()  # onnx2torch builds modules in training mode: batch norm would use batch statistics
        self.net = net
        self.fixed_batch = fixed_batch
        self.scores_at = scores_at

    def train(self, mode: bool = True) -> ExportedGraph:
        self.training = mode
        return self

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        from dermadv.models.card import score_tensor

        out = self.net(x if self.dtype is None else x.to(self.dtype))
        out = out[self.scores_at] if self.scores_at is not None and isinstance(out, tuple | list) else out
        scores = score_tensor(out)
        return scores if self.dtype is None else scores.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from dermadv.models.onnx_session import padded_slices

        if self.fixed_batch is None:
            return self._scores(x)
        if len(x) == 0:  # the shape of an answer, from one padded slice
            return self._scores(x.new_zeros((self.fixed_batch, *x.shape[1:])))[:0]
        return torch.cat([self._scores(part)[:k] for part, k in padded_slices(x, self.fixed_batch, torch.cat)])


def _load_onnx(path: Path, card: ModelCard) -> SourceModel:
    runtime = OnnxRuntime(path)
    if runtime.onnx.datatype == "UINT8" and (
        card.value_range != 255 or card.mean != (0, 0, 0) or card.std != (1, 1, 1)
    ):
        raise ConfigError(
            f"{path.name} takes uint8 pixels: its card must say value_range: 255 with mean 0 and std 1 "
            "(the graph normalises them itself); fix the card"
        )
    declared = onnx_input_size(runtime.session, card)
    size = card.input_size or declared
    if size is None:
        size = DEFAULT_SIZE
        log.warning("%s has a dynamic input size: using %dx%d (set input_size in a card)", path, *size)
    card = replace(card, input_size=(int(size[0]), int(size[1])))
    base = _card_info(card, spec=str(path), kind="onnx", fingerprint=_sha256(path), gradients=False)
    black = _finish(BlackBox(runtime, name=f"onnxruntime({path.name})"), card, base, quantise=True)
    try:
        import onnx
        from onnx2torch import convert

        converted = convert(_for_onnx2torch(onnx.load(str(path))))
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, … for unsupported graphs
        note = f"onnx2torch cannot convert {path.name} ({type(exc).__name__}: {str(exc)[:120]}): black-box only"
        log.warning(note)
        black.info = replace(base, notes=(note,))
        return black
    dtype = {"FP16": torch.float16, "FP64": torch.float64}.get(runtime.onnx.datatype)
    converted = ExportedGraph(
        converted, fixed_batch=runtime.onnx.fixed_batch, scores_at=runtime.onnx.scores_at, dtype=dtype
    )
    white = _finish(converted, card, replace(base, offers=_offers(card, gradients=True)))
    white.fallback = black
    return white


def _for_onnx2torch(graph_model: Any) -> Any:
    """Prepare a graph for onnx2torch: Constant nodes become initializers (its Clip, Pad, Reshape … converters
    read their bounds and shapes from initializers only) and Identity nodes are rewired around (torch's exporter
    emits them for shared weights; onnx2torch converts Identity up to opset 16). onnxruntime still runs the
    original file, and :func:`verify_onnx` compares the two."""
    from onnx import numpy_helper

    g = graph_model.graph
    outputs = {o.name for o in g.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0])
            g.initializer.append(tensor)
        elif node.op_type == "Identity" and node.output[0] not in outputs:
            renamed[node.output[0]] = renamed.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del g.node[:]
    g.node.extend(kept)
    return graph_model


def verify_onnx(model: SourceModel, images: torch.Tensor) -> tuple[SourceModel, float | None]:
    """Check onnx2torch's conversion against onnxruntime on ``images``; refuse white-box beyond the tolerance.

    Returns the model to use and the largest |Δscore| (None when there was nothing to compare, or onnx2torch's
    module failed to run).
    """
    if model.fallback is None or not model.gradients:
        return model, None
    graph = getattr(model.net, "model", None)
    half = isinstance(graph, ExportedGraph) and graph.dtype == torch.float16
    tolerance = ONNX_TOLERANCE_FP16 if half else ONNX_TOLERANCE
    failure = ""
    with torch.no_grad():
        b = model.fallback.net(images)
        try:
            a = model.net(images)
        except Exception as exc:  # onnx2torch's module may fail where onnxruntime runs (an op, a dtype)
            a, failure = None, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
    diff = float("inf") if a is None else float((a - b).abs().max())
    if not diff <= tolerance:
        note = (
            f"onnx2torch disagrees with onnxruntime by max |Δlogit| = {diff:.2e} > {tolerance:g}: "
            "white-box refused, the run goes on black-box"
            if a is not None
            else f"onnx2torch cannot convert it to a module that runs ({failure}): white-box refused, the run goes "
            "on black-box"
        )
        log.warning(note)
        fallback = model.fallback
        fallback.info = replace(fallback.info, notes=(*fallback.info.notes, note))
        return fallback, (diff if a is not None else None)
    note = f"onnx2torch agrees with onnxruntime: max |Δlogit| = {diff:.2e} on {len(images)} images"
    model.info = replace(model.info, notes=(*model.info.notes, note))
    return model, diff


def _load_http(url: str, card: ModelCard) -> SourceModel:
    from dermadv.models.card import HttpSettings
    from dermadv.models.http import HttpBackend

    settings = card.http or HttpSettings()
    if card.output not in ("logits", "probabilities", "label"):
        raise ConfigError(f"unknown output kind {card.output!r}")
    backend = HttpBackend(url, settings, num_classes=len(card.classes), output=card.output, classes=card.classes)
    safe = redact_url(url)
    info = _card_info(card, spec=safe, kind="http", fingerprint=_sha256(safe.encode()), gradients=False)
    model = _finish(BlackBox(backend, name=safe), card, info, quantise=True)
    model.backend = backend  # type: ignore[assignment]
    return model


def label_map(info: ModelInfo, data_classes: tuple[str, ...]) -> np.ndarray:
    """For each class of the data, the index of the model's score class that stands for it."""
    groups = info.card.groups()
    out = []
    for code in data_classes:
        if info.card.grouped:
            owner = next((name for name, codes in groups.items() if code in codes), None)
            if owner is None:
                raise ModelError(f"{info.spec}'s card maps no class to {code!r}; add it to `mapping`")
            out.append(info.classes.index(owner))
        elif code in info.classes:
            out.append(info.classes.index(code))
        else:
            raise ModelError(
                f"{info.spec} predicts {','.join(info.classes)} but the data has class {code!r}; "
                "map the model's classes to the data's in its card"
            )
    return np.asarray(out, dtype=np.int64)

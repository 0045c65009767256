"""Classifier checkpoints in safetensors, with the metadata needed to use them safely."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dermadv.errors import CheckpointError
from dermadv.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, build_classifier
from dermadv.runs import atomic_path


@dataclass(frozen=True)
class CheckpointMeta:
    arch: str
    classes: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width) the model was trained at
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    data_fingerprint: str = ""
    weights: str = ""  # where the initial weights came from (WeightsInfo.source); "" in older checkpoints
    kind: str = "classifier"
    extra: str = "{}"  # JSON for anything else (epoch, metrics)
    # The ids of the images whose gradients trained the model (its train split, sorted), so that evaluating or
    # attacking it on them is refused. Stored in full, not as a hash set: ~7,000 HAM10000 ids are ~110 kB of header
    # beside 20-80 MB of weights, and a refusal can then count and name them. () in checkpoints of dermadv before
    # this record: nothing to check against.
    training_images: tuple[str, ...] = field(default=(), repr=False)
    training_images_fingerprint: str = ""  # fingerprint_of(training_images): two training splits told apart


def _meta_to_strings(meta: CheckpointMeta) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in asdict(meta).items()}


def broken_metadata(path: str | os.PathLike[str], what: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} has broken metadata ({what}); it was edited or not written by dermadv: use the file "
        "its run wrote, or train again"
    )


def metadata_fields(path: str | os.PathLike[str], raw: Mapping[str, str], kind: type[Any]) -> dict[str, Any]:
    """The JSON values of ``raw`` for the fields of the dataclass ``kind``; one line naming the file and the key
    for a value that is not JSON, or for a missing field that has no default."""
    fields: dict[str, Any] = {}
    for spec in fields_of(kind):
        name = spec.name
        if name not in raw:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise broken_metadata(path, f"no {name!r}")
            continue
        try:
            fields[name] = json.loads(raw[name])
        except (json.JSONDecodeError, TypeError):
            shown = raw[name] if len(raw[name]) <= 40 else raw[name][:37] + "..."
            raise broken_metadata(path, f"{name!r} is not JSON: {shown!r}") from None
    return fields


def sequence_field(
    path: str | os.PathLike[str], fields: dict[str, Any], name: str, kind: type, length: int | None
) -> None:
    """Make ``fields[name]`` a tuple, refusing (one line) a value that is not a list of ``length`` items of type
    ``kind`` (``length`` None: any number)."""
    value = fields[name]
    if kind is float and isinstance(value, list):  # a hand edit may write 1 for 1.0
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    fine = (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    )
    if not fine:
        items = f"a list of {length if length is not None else 'any number of'} {kind.__name__}"
        raise broken_metadata(path, f"{name!r} must be {items}; got {json.dumps(value)[:40]}")
    fields[name] = tuple(value)


def _meta_from_strings(raw: Mapping[str, str], path: str | os.PathLike[str] = "checkpoint") -> CheckpointMeta:
    fields = metadata_fields(path, raw, CheckpointMeta)
    fields.setdefault("mean", list(IMAGENET_MEAN))
    fields.setdefault("std", list(IMAGENET_STD))
    fields.setdefault("training_images", [])
    shapes = {"classes": (str, None), "image_size": (int, 2), "mean": (float, 3), "std": (float, 3)}
    shapes["training_images"] = (str, None)
    for name, (kind, length) in shapes.items():
        if name in fields:
            sequence_field(path, fields, name, kind, length)
    if not fields["classes"]:
        raise broken_metadata(path, "'classes' is empty")
    if min(fields["image_size"]) < 1:
        raise broken_metadata(path, f"'image_size' must be positive; got {list(fields['image_size'])}")
    texts = [spec.name for spec in fields_of(CheckpointMeta) if spec.type in ("str", str) and spec.name in fields]
    for name in texts:
        if not isinstance(fields[name], str) or (name == "arch" and not fields[name]):
            raise broken_metadata(path, f"{name!r} must be a{' non-empty' if name == 'arch' else ''} string")
    return CheckpointMeta(**fields)


def save_state(path: str | os.PathLike[str], state: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Atomically save a state dict with string metadata."""
    clean = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `dermadv train` first")
    if path.is_dir():
        inside = sorted(path.glob("*.safetensors"))
        example = inside[0] if inside else path / "model.safetensors"
        raise CheckpointError(f"checkpoint {path} is a folder; pass the .safetensors file in it (e.g. {example})")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}; is it a dermadv .safetensors file?") from None
    return state, meta


def read_training_images(path: str | os.PathLike[str]) -> frozenset[str] | None:
    """The image ids a dermadv checkpoint records it was trained on (its header only, no weights are read).

    None when it records none: a checkpoint of an older dermadv, or a file of another kind.
    """
    from safetensors import safe_open

    from dermadv.data.dataset import fingerprint_of

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}; is it a dermadv .safetensors file?") from None
    if raw.get("training_images", "[]") == "[]":  # no record: an older checkpoint, or one saved without it
        return None
    try:
        ids = json.loads(raw["training_images"])
        fingerprint = json.loads(raw.get("training_images_fingerprint", '""'))
    except json.JSONDecodeError:
        ids, fingerprint = None, None
    if not isinstance(ids, list) or fingerprint != fingerprint_of([str(i) for i in ids]):
        raise CheckpointError(
            f"{path} holds a damaged record of its training images (it does not match its fingerprint); "
            "use the model.safetensors its `dermadv train` run wrote"
        )
    return frozenset(str(i) for i in ids)


def save_checkpoint(path: str | os.PathLike[str], model: Classifier, meta: CheckpointMeta) -> None:
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v for k, v in model.state_dict().items()}
    save_state(path, state, _meta_to_strings(meta))


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[Classifier, CheckpointMeta]:
    """Load a classifier in eval mode with its metadata."""
    state, raw = load_state(path)
    if raw.get("kind") != json.dumps("classifier"):
        raise CheckpointError(
            f"{path} is not a dermadv classifier checkpoint (kind={raw.get('kind')}); this command takes the "
            "model.safetensors of a `dermadv train` run (`dermadv audit`, `evaluate`, `attack run` and `attack fit` "
            "take any model)"
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({len(broken)} tensors, first {broken[0]}): its training diverged; "
            "train again with a lower --lr"
        )
    meta = _meta_from_strings(raw, path)
    model = build_classifier(meta.arch, len(meta.classes))
    model.mean.copy_(torch.tensor(meta.mean).view(1, 3, 1, 1))
    model.std.copy_(torch.tensor(meta.std).view(1, 3, 1, 1))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {meta.arch}: {str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta


def check_fits(meta: CheckpointMeta, classes: tuple[str, ...], *, path: str | os.PathLike[str] = "checkpoint") -> None:
    """Refuse a checkpoint whose class list differs from the data's."""
    if tuple(meta.classes) != tuple(classes):
        raise CheckpointError(
            f"{path} was trained on classes {','.join(meta.classes)} but the data has {','.join(classes)}; "
            "use a checkpoint trained on this kind of data"
        )

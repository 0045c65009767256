"""An attack folder's ``attack.json``, typed: :class:`AttackInfo`, written by ``attack run`` and ``attack transfer``
and read by every view of the folder (evaluation, sweep, observer study, report)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from dermadv.errors import RunError
from dermadv.runs import read_json

INFO_FILE = "attack.json"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _names(value: Any) -> tuple[str, ...] | None:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    return tuple(value) if ok else None


def _size(value: Any) -> tuple[int, ...] | None:
    ok = isinstance(value, list) and all(_integer(v) is not None for v in value)
    return tuple(value) if ok else None


def _object(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


@dataclasses.dataclass(frozen=True)
class QueryCount:
    """``attack.json``'s ``queries``: what the attacked model answered over the attack (its query counter), what the
    attack itself spent on its images, and the attack's wall time."""

    queries: int | None = None  # images the model scored, the attack's and the start pool's
    calls: int | None = None  # forward calls (batches)
    model_seconds: float | None = None  # time spent inside the model
    replayed: int | None = None  # answers read back from an earlier run's query journal (``--resume``)
    attack_queries: int | None = None  # the attack's per-image queries summed; None: it counts none (gradients)
    wall_seconds: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QueryCount:
        return cls(**_read(d, _QUERY_READERS))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``attack_queries`` is written even when None (an attack that counts none)."""
        return _write(self, optional=_QUERY_READERS.keys() - {"attack_queries"})


_QUERY_READERS: dict[str, Callable[[Any], Any]] = {
    "queries": _integer,
    "calls": _integer,
    "model_seconds": _number,
    "replayed": _integer,
    "attack_queries": _integer,
    "wall_seconds": _number,
}


@dataclasses.dataclass(frozen=True)
class AttackInfo:
    """What was attacked, how, with which budget and target: an attack folder's ``attack.json``.

    Every field may be absent (an older version wrote fewer keys); a value of the wrong type reads as absent. The
    keys this class does not name, and the values of the wrong type, are kept in ``extra``, so that :meth:`to_dict`
    writes back what :meth:`from_dict` read.
    """

    method: str | None = None  # the registry name: pgd, advgan, square, hopskipjump, mi-di, …
    params: str | None = None  # the attack's repr: its hyperparameters
    eps: float | None = None  # the L∞ budget on images scaled to [0, 1]; None: an attack without one
    eps_255: float | None = None  # the same in 8-bit steps
    target: str | None = None  # the target class's code; None: untargeted
    target_index: int | None = None  # its index among the model's classes
    checkpoint: str | None = None  # the model spec scored (``attack transfer``: the model the images were moved to)
    model: dict[str, Any] | None = None  # the attacked model as ``dermadv.models.sources.ModelInfo.to_dict`` has it
    threat_model: str | None = None  # white-box, score-based, decision-based or transfer
    generator: str | None = None  # the fitted generator's file (advgan)
    data: str | None = None  # ``--data``; None: the built-in synthetic set
    data_source: str | None = None  # the data set's kind: ham10000, dermamnist, folders, synthetic
    split: str | None = None
    classes: tuple[str, ...] | None = None  # the model's classes, in the order of its scores
    image_size: tuple[int, ...] | None = None  # the size the images were attacked at
    classifier_input_size: tuple[int, ...] | None = None  # the size the model takes; None: the files' stored size
    attack_size: str | None = None  # "model" or "stored"
    n_images: int | None = None
    sampled: bool | None = None  # a class-stratified sample of the split (``--limit``)
    training_images_attacked: int | None = None  # images the classifier was trained on among those attacked
    defence: str | None = None  # the input transform the model was attacked behind
    adaptive: bool | None = None  # with a defence: attacked through it (BPDA/EOT) or ignoring it
    queries: QueryCount | None = None  # written once the attack has run
    transfer_from: str | None = None  # ``attack transfer``: the attack folder whose images were scored
    source_checkpoint: str | None = None  # ``attack transfer``: the model the images were made on
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def model_spec(self) -> str | None:
        """The spec of the attacked model: its record's, else ``checkpoint``."""
        spec = _text((self.model or {}).get("spec"))
        return spec or self.checkpoint

    @property
    def attack_queries(self) -> int | None:
        """The queries the attack spent on its images; None for an attack that counts none."""
        return self.queries.attack_queries if self.queries is not None else None

    @property
    def model_queries(self) -> int | None:
        """The images the model scored over the whole attack."""
        return self.queries.queries if self.queries is not None else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackInfo:
        """Read ``attack.json`` as parsed JSON."""
        return cls(**_read(d, _INFO_READERS))

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> AttackInfo:
        """The ``attack.json`` of an attack folder."""
        path = Path(folder) / INFO_FILE
        obj = read_json(path)
        if not isinstance(obj, dict):
            raise RunError(f"{path} must hold a JSON object; rerun `dermadv attack run --out {folder}`")
        return cls.from_dict(obj)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, key for key as ``attack run`` writes it: the keys of a value that may be missing
        (``training_images_attacked``, ``queries``, the transfer's) only when it is there."""
        return _write(self, optional=_INFO_OPTIONAL)


def _query_count(value: Any) -> QueryCount | None:
    return QueryCount.from_dict(value) if isinstance(value, Mapping) else None


_INFO_READERS: dict[str, Callable[[Any], Any]] = {
    "method": _text,
    "params": _text,
    "eps": _number,
    "eps_255": _number,
    "target": _text,
    "target_index": _integer,
    "checkpoint": _text,
    "model": _object,
    "threat_model": _text,
    "generator": _text,
    "data": _text,
    "data_source": _text,
    "split": _text,
    "classes": _names,
    "image_size": _size,
    "classifier_input_size": _size,
    "attack_size": _text,
    "n_images": _integer,
    "sampled": _flag,
    "training_images_attacked": _integer,
    "defence": _text,
    "adaptive": _flag,
    "queries": _query_count,
    "transfer_from": _text,
    "source_checkpoint": _text,
}
_INFO_OPTIONAL = {"training_images_attacked", "queries", "transfer_from", "source_checkpoint"}


def _read(d: Mapping[str, Any], readers: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Keyword arguments from ``d``: each named key through its reader (null reads as None); a value the reader
    refuses (of the wrong type) and every key not named go to ``extra``."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in d.items():
        read = readers.get(key)
        if read is None:
            extra[key] = value
        elif value is not None:
            typed = read(value)
            if typed is None:
                extra[key] = value
            else:
                kwargs[key] = typed
    return kwargs | {"extra": extra}


def _write(value: Any, *, optional: Collection[str]) -> dict[str, Any]:
    """The fields of ``value`` in their order, lists for tuples, a :class:`QueryCount` as its JSON; a field in
    ``optional`` only when it is not None; then ``extra``, whose keys take the place of a field of the same name."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if f.name == "extra" or (item is None and f.name in optional and f.name not in value.extra):
            continue
        if isinstance(item, tuple):
            item = list(item)
        elif isinstance(item, QueryCount):
            item = item.to_dict()
        elif isinstance(item, dict):
            item = dict(item)
        out[f.name] = item
    return out | value.extra

"""``attack.json`` typed: every kind of file ``attack run`` and ``attack transfer`` write reads into an
:class:`AttackInfo` and is written back key for key; a file of an older or a foreign writer loses nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dermadv.errors import RunError
from dermadv.evaluation.attack_info import AttackInfo, QueryCount
from dermadv.evaluation.attack_run import AttackRun, write_attack_info

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
CARD = {
    "input_size": [96, 96],
    "resize": "bilinear",
    "value_range": 1,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "channel_order": "RGB",
    "layout": "NCHW",
    "output": "logits",
    "classes": CLASSES,
    "mapping": {},
}


def _model(spec: str, kind: str, offers: list[str], **card: Any) -> dict[str, Any]:
    """The attacked model as ``ModelInfo.to_dict`` records it."""
    return {
        "spec": spec,
        "kind": kind,
        "weights": None,
        "classes": CLASSES,
        "image_size": [96, 96],
        "fingerprint": "0ba2b7f8a0670340",
        "offers": offers,
        "threat_model": offers[0],
        "card": {**CARD, **card},
        "notes": [],
    }


def _written(method: str, params: str, eps_255: float | None, model: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``attack.json`` as ``attack run`` writes it (the keys in its order), with ``changes`` on top."""
    info = {
        "method": method,
        "params": params,
        "eps": eps_255 / 255 if eps_255 is not None else None,
        "eps_255": eps_255,
        "target": "nv",
        "target_index": 5,
        "checkpoint": model["spec"],
        "model": model,
        "threat_model": model["threat_model"],
        "generator": None,
        "data": "../shared/data/HAM10000",
        "data_source": "ham10000",
        "split": "test",
        "classes": CLASSES,
        "image_size": [96, 96],
        "classifier_input_size": [96, 96],
        "attack_size": "model",
        "n_images": 244,
        "sampled": True,
        "training_images_attacked": 0,
        "defence": None,
        "adaptive": None,
        "queries": {
            "queries": 57276,
            "calls": 1004,
            "model_seconds": 226.2182,
            "replayed": 0,
            "attack_queries": 56300,
            "wall_seconds": 292.663,
        },
    }
    return {**info, **changes}


WHITE_BOX = _model(
    "runs/recipe/model.safetensors", "dermadv", ["white-box", "score-based", "decision-based", "transfer"]
)
ENDPOINT = "http://127.0.0.1:40473/v2/models/model/infer"
HTTP = {"protocol": "v2", "input_name": "input", "datatype": "UINT8", "batch_size": 64, "headers_env": {}}
SCORES = _model(ENDPOINT, "http", ["score-based", "decision-based", "transfer"], value_range=255, http=HTTP)
LABELS = _model(ENDPOINT, "http", ["decision-based", "transfer"], value_range=255, http=HTTP)
GRADIENT_QUERIES = {
    "queries": 1680,
    "calls": 72,
    "model_seconds": 7.2622,
    "replayed": 0,
    "attack_queries": None,
    "wall_seconds": 14.5,
}
OLDER_QUERIES = {k: v for k, v in GRADIENT_QUERIES.items() if k != "replayed"}  # before replays were counted
PGD = "PGD(eps=0.03137254901960784, steps=20, step_size=0.00392156862745098, norm='linf', random_start=True, seed=0)"
SQUARE = "Square(eps=0.01568627450980392, queries=1000, p_init=None, loss='margin', norm='linf', seed=0)"
MIDI = "MIDI(eps=0.03137254901960784, surrogates=['runs/surrogate/model.safetensors'], steps=20, seed=0)"

# one file of each kind the run folders hold (the values of real ones)
KINDS = {
    # an older dermadv: no training_images_attacked, no replayed answers counted
    "pgd": {
        k: v
        for k, v in _written("pgd", PGD, 8.0, WHITE_BOX, n_images=70, queries=OLDER_QUERIES).items()
        if k != "training_images_attacked"
    },
    "advgan": _written(
        "advgan",
        "GeneratorAttack(eps=0.03137, target='nv')",
        8.0,
        WHITE_BOX,
        generator="runs/demo/generator/generator.safetensors",
        data=None,
        data_source="synthetic",
        image_size=[64, 64],
        classifier_input_size=[64, 64],
        sampled=False,
        queries=GRADIENT_QUERIES,
    ),
    "square": _written("square", SQUARE, 4.0, SCORES),
    "hopskipjump": _written("hopskipjump", "HopSkipJump(eps=0.03137254901960784, queries=10000)", 8.0, LABELS),
    "mi-di": _written("mi-di", MIDI, 8.0, SCORES, threat_model="transfer", queries=GRADIENT_QUERIES),
    "transfer-square": _written("transfer-square", f"TransferSquare(transfer={MIDI}, square={SQUARE})", 4.0, SCORES),
    "defended": _written("pgd", PGD, 8.0, WHITE_BOX, defence="jpeg:75", adaptive=True),
    "untargeted, no budget": _written(
        "pixel", "OnePixel(pixels=1)", None, WHITE_BOX, target=None, target_index=None, queries=GRADIENT_QUERIES
    ),
    # written before the attack ran: no queries yet
    "unfinished": {k: v for k, v in _written("square", SQUARE, 4.0, SCORES).items() if k != "queries"},
    # ``attack transfer``: the source's file, scored on another model
    "attack transfer": _written(
        "pgd",
        PGD,
        8.0,
        WHITE_BOX,
        checkpoint="runs/other/model.safetensors",
        transfer_from="runs/recipe/adv-test",
        source_checkpoint="runs/recipe/model.safetensors",
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_file_is_written_back_key_for_key(kind: str) -> None:
    written = KINDS[kind]
    info = AttackInfo.from_dict(written)
    assert json.dumps(info.to_dict()) == json.dumps(written)  # same keys, same order, same values
    assert info.extra == {} and (info.queries is None or info.queries.extra == {})  # every key is a field's
    assert AttackInfo.from_dict(info.to_dict()) == info


@pytest.mark.parametrize("kind", list(KINDS))
def test_file_on_disk_round_trip(kind: str, tmp_path: Path) -> None:
    info = AttackInfo.from_dict(KINDS[kind])
    write_attack_info(tmp_path, info)
    assert AttackInfo.read(tmp_path) == info
    assert json.loads((tmp_path / "attack.json").read_text()) == KINDS[kind]


def test_fields_are_typed() -> None:
    info = AttackInfo.from_dict(KINDS["square"])
    assert info.classes == tuple(CLASSES) and info.image_size == (96, 96)
    assert info.queries == QueryCount(57276, 1004, 226.2182, 0, 56300, 292.663)
    assert (info.attack_queries, info.model_queries) == (56300, 57276)
    assert info.model_spec == ENDPOINT
    assert AttackInfo.from_dict(KINDS["pgd"]).attack_queries is None  # a gradient attack counts none
    assert AttackInfo(checkpoint="model.pt").model_spec == "model.pt"  # no model record: the spec given


def test_built_value_round_trips() -> None:
    info = AttackInfo(
        method="pgd",
        params=PGD,
        eps=8 / 255,
        eps_255=8.0,
        target="nv",
        target_index=5,
        classes=tuple(CLASSES),
        image_size=(96, 96),
        sampled=False,
        training_images_attacked=3,
        queries=QueryCount(queries=10, calls=1, model_seconds=0.5, replayed=0, wall_seconds=1.0),
        transfer_from="runs/a",
        extra={"note": "kept"},
    )
    assert AttackInfo.from_dict(info.to_dict()) == info
    assert AttackInfo.from_dict(AttackInfo().to_dict()) == AttackInfo()


def test_missing_keys_read_as_absent() -> None:
    info = AttackInfo.from_dict({"method": "generator", "eps": 2 / 255, "target": "nv", "image_size": [8, 8]})
    assert (info.method, info.target, info.image_size) == ("generator", "nv", (8, 8))
    assert info.classes is None and info.queries is None and info.training_images_attacked is None
    assert info.extra == {}
    # the keys attack run always writes are written, as null; the optional ones only when there
    written = info.to_dict()
    assert written["checkpoint"] is None and written["defence"] is None
    assert "queries" not in written and "training_images_attacked" not in written and "transfer_from" not in written


def test_unknown_keys_and_wrong_types_are_kept_in_place() -> None:
    read = {"method": "generator", "params": {}, "eps": "8/255", "attack_size": [8, 8], "sampled": 1, "new": [1]}
    info = AttackInfo.from_dict(read)
    assert info.params is None and info.eps is None and info.attack_size is None and info.sampled is None
    assert info.extra == {"params": {}, "eps": "8/255", "attack_size": [8, 8], "sampled": 1, "new": [1]}
    written = info.to_dict()
    assert {k: written[k] for k in read} == read
    assert list(written).index("params") == 1  # where the field stands, not appended
    assert AttackInfo.from_dict(written) == info
    assert AttackInfo.from_dict({"queries": [1, 2]}).to_dict()["queries"] == [1, 2]
    counts = QueryCount.from_dict({"queries": 5, "calls": "two", "retries": 3})
    assert counts.calls is None and counts.extra == {"calls": "two", "retries": 3}
    assert counts.to_dict() == {"queries": 5, "calls": "two", "attack_queries": None, "retries": 3}


def test_booleans_are_not_numbers() -> None:
    info = AttackInfo.from_dict({"eps": True, "n_images": False, "image_size": [True, 2]})
    assert info.eps is None and info.n_images is None and info.image_size is None
    assert set(info.extra) == {"eps", "n_images", "image_size"}


def test_read_refuses_a_file_without_an_object(tmp_path: Path) -> None:
    (tmp_path / "attack.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="must hold a JSON object"):
        AttackInfo.read(tmp_path)


def test_attack_run_reads_the_typed_value(tmp_path: Path) -> None:
    (tmp_path / "attack.json").write_text(json.dumps(KINDS["square"]))
    (tmp_path / "predictions.csv").write_text("image_id,label,clean_pred,adv_pred\na,mel,mel,nv\n")
    run = AttackRun.read(tmp_path, in_run=True)
    assert run.info == AttackInfo.from_dict(KINDS["square"])
    assert (run.method, run.target, run.target_index, run.classes) == ("square", "nv", 5, tuple(CLASSES))
    assert run.eps == pytest.approx(4 / 255) and run.image_size == (96, 96)


def test_attack_run_refuses_a_target_of_the_wrong_type(tmp_path: Path) -> None:
    (tmp_path / "attack.json").write_text(json.dumps({**KINDS["square"], "target": 5}))
    (tmp_path / "predictions.csv").write_text("image_id,label,clean_pred,adv_pred\na,mel,mel,nv\n")
    with pytest.raises(RunError, match="names target 5"):
        AttackRun.read(tmp_path, in_run=True)

"""``attack run`` and ``attack transfer``: the PNG round trip, stored-size attacks, transfer, refused generators."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermadv.attacks.generator import load_generator, save_generator
from dermadv.data.classes import CLASSES
from dermadv.data.load import to_float
from dermadv.errors import CheckpointError, ConfigError, RunError
from dermadv.evaluation.attack_info import AttackInfo
from dermadv.evaluation.attack_run import read_png
from dermadv.models.checkpoints import load_checkpoint
from dermadv.pipeline.apply import quantise
from dermadv.pipeline.attack import AttackRunConfig, attack_split, transfer
from dermadv.pipeline.generator import fit_generator
from dermadv.runs import read_json, run_complete
from dermadv.training.generator import GeneratorConfig

ATTACK_JSON_KEYS = (
    "method",
    "params",
    "eps",
    "eps_255",
    "target",
    "target_index",
    "checkpoint",
    "model",
    "threat_model",
    "generator",
    "data",
    "data_source",
    "split",
    "classes",
    "image_size",
    "classifier_input_size",
    "attack_size",
    "n_images",
    "sampled",
    "training_images_attacked",
    "defence",
    "adaptive",
    "queries",
)


def _predict(checkpoint: Path, folder: Path, kind: str, ids: list[str]) -> list[str]:
    model, _ = load_checkpoint(checkpoint)
    images = torch.from_numpy(np.stack([read_png(folder / "images" / kind / f"{i}.png") for i in ids]))
    with torch.no_grad():
        return [CLASSES[i] for i in model(to_float(images)).argmax(1).tolist()]


def test_transfer_scores_saved_images_on_another_model(pipeline, adv_folder: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "transfer"
    metrics = transfer(adv_folder, pipeline.other_checkpoint, out)
    assert "does not say complete" not in caplog.text  # the run evaluating its own folder is not "unfinished"

    source = pd.read_csv(adv_folder / "predictions.csv")
    preds = pd.read_csv(out / "predictions.csv")
    ids = source["image_id"].tolist()
    assert run_complete(out)
    for name in ("attack.json", "attack_metrics.json", "attack_metrics.csv", "per_image.csv"):
        assert (out / name).is_file(), name
    for kind in ("clean", "adv", "perturbation"):
        assert sorted(p.stem for p in (out / "images" / kind).glob("*.png")) == sorted(ids)
    info, written = read_json(out / "attack.json"), read_json(adv_folder / "attack.json")
    assert tuple(written) == ATTACK_JSON_KEYS  # attack run's attack.json, key for key
    assert list(info) == [*written, "transfer_from", "source_checkpoint"]  # the source's, written on
    for kept in (info, written):
        assert AttackInfo.from_dict(kept).to_dict() == kept and AttackInfo.from_dict(kept).extra == {}
    assert info["transfer_from"] == str(adv_folder)
    assert info["checkpoint"] == str(pipeline.other_checkpoint)
    assert info["source_checkpoint"] == str(pipeline.checkpoint)
    assert metrics.n == len(ids) == len(preds)
    assert preds["image_id"].tolist() == ids and preds["label"].tolist() == source["label"].tolist()
    # scored by the other model, from the copied PNGs
    assert preds["clean_pred"].tolist() == _predict(pipeline.other_checkpoint, out, "clean", ids)
    assert preds["adv_pred"].tolist() == _predict(pipeline.other_checkpoint, out, "adv", ids)
    assert metrics.size("linf_255", "max") <= 8  # the same images, the same budget


def test_transfer_onto_the_source_model_reproduces_its_predictions(pipeline, adv_folder: Path, tmp_path: Path) -> None:
    transfer(adv_folder, pipeline.checkpoint, tmp_path / "same")
    source = pd.read_csv(adv_folder / "predictions.csv")
    again = pd.read_csv(tmp_path / "same" / "predictions.csv")
    for column in ("clean_pred", "adv_pred"):
        assert again[column].tolist() == source[column].tolist()


def test_transfer_from_a_folder_that_is_not_an_attack_run(pipeline, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not an attack output folder"):
        transfer(tmp_path, pipeline.other_checkpoint, tmp_path / "out")


def test_saved_png_round_trip_reproduces_in_memory_predictions(pipeline, held_out, adv_folder: Path) -> None:
    preds = pd.read_csv(adv_folder / "predictions.csv")
    model, ids, images = held_out.model, held_out.image_ids, held_out.images
    assert preds["image_id"].tolist() == ids and len(ids) > 0

    # Deterministic: the generator's in-memory output, rounded to 8 bits, is bit for bit the saved PNG,
    # and the classifier's probabilities on it are the ones in predictions.csv.
    attack = load_generator(pipeline.generator)
    adv = attack(model, to_float(images), target=attack.spec.target_index).adv_images
    adv_u8 = quantise(adv, images.permute(0, 3, 1, 2), attack.eps).permute(0, 2, 3, 1)
    saved = torch.from_numpy(np.stack([read_png(adv_folder / "images" / "adv" / f"{i}.png") for i in ids]))
    assert torch.equal(adv_u8, saved)
    with torch.no_grad():
        probs = model(to_float(saved)).softmax(1).numpy()
    np.testing.assert_allclose(probs, preds[[f"adv_prob_{c}" for c in CLASSES]].to_numpy(), atol=2e-6)
    assert preds["adv_pred"].tolist() == [CLASSES[i] for i in probs.argmax(1)]

    # In memory (before rounding) and saved predictions agree for (nearly) every image, as reported.
    n_differ = int((preds["adv_pred"] != preds["inmem_adv_pred"]).sum())
    assert n_differ <= 0.05 * len(preds)
    metrics = read_json(adv_folder / "attack_metrics.json")
    assert metrics["inmem_agreement"]["n_differ"] == n_differ
    assert metrics["imperceptibility"]["linf_255"]["max"] <= 8
    assert metrics["n_over_budget"] == 0


def test_stored_size_attack_perturbs_the_non_square_file_resolution(pipeline, tmp_path: Path) -> None:
    """``--attack-size stored``: the generator works on the 60×80 stored images, the classifier's resize inside."""
    generator = fit_generator(
        GeneratorConfig(
            checkpoint=pipeline.checkpoint,
            out=tmp_path / "gen",
            data=str(pipeline.data),
            eps="2/255",
            attack_size="stored",
            epochs=1,
            batch_size=32,
            channels=4,
            res_blocks=1,
            progress=False,
        )
    )
    assert load_generator(generator).spec.image_size == (60, 80)
    out = tmp_path / "adv"
    metrics = attack_split(
        AttackRunConfig(
            checkpoint=pipeline.checkpoint, out=out, generator=generator, data=str(pipeline.data), progress=False
        )
    )
    info = read_json(out / "attack.json")
    assert info["attack_size"] == "stored"
    assert info["image_size"] == [60, 80] and info["classifier_input_size"] == [32, 32]
    preds = pd.read_csv(out / "predictions.csv")
    for image_id in preds["image_id"]:
        clean = read_png(out / "images" / "clean" / f"{image_id}.png").astype(int)
        adv = read_png(out / "images" / "adv" / f"{image_id}.png").astype(int)
        assert clean.shape == adv.shape == (60, 80, 3)
        assert np.abs(adv - clean).max() <= 2
    assert metrics is not None and metrics.n_over_budget == 0


def _run_generator(generator_run, out: Path, **changes) -> None:
    attack_split(replace(generator_run, out=out, **changes))


def test_generator_for_another_target_is_refused(pipeline, generator_run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fitted for target 'df', not 'nv'"):
        _run_generator(generator_run, tmp_path / "adv", target="nv")
    assert not (tmp_path / "adv").exists()


def test_generator_from_another_image_size_is_refused(pipeline, generator_run, tmp_path: Path) -> None:
    attack = load_generator(pipeline.generator)
    other = tmp_path / "generator-24px.safetensors"
    save_generator(other, attack.generator, replace(attack.spec, image_size=(24, 24)))
    with pytest.raises(CheckpointError, match="fitted at 24x24 but the images here are 32x32"):
        _run_generator(generator_run, tmp_path / "adv", generator=other)
    assert not (tmp_path / "adv").exists()


def test_generator_from_another_classifier_is_refused(pipeline, generator_run, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="fitted against another classifier"):
        _run_generator(generator_run, tmp_path / "adv", checkpoint=pipeline.other_checkpoint)
    assert not (tmp_path / "adv").exists()


def test_classifier_and_generator_swapped_are_refused(pipeline, generator_run, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a dermadv generator"):
        _run_generator(generator_run, tmp_path / "adv", generator=pipeline.checkpoint)
    with pytest.raises(CheckpointError, match="is not a dermadv classifier"):
        _run_generator(generator_run, tmp_path / "adv", checkpoint=pipeline.generator)
    with pytest.raises(CheckpointError, match="is not a dermadv classifier"):
        fit_generator(GeneratorConfig(checkpoint=pipeline.generator, out=tmp_path / "gen", data=str(pipeline.data)))
    assert not (tmp_path / "adv").exists() and not (tmp_path / "gen").exists()


def test_a_used_out_keeps_no_image_of_the_earlier_run(pipeline, tmp_path: Path) -> None:
    """``attack run`` into a used --out: the earlier run's PNGs go, so images and predictions.csv agree."""
    out = tmp_path / "adv"
    cfg = AttackRunConfig(
        pipeline.checkpoint, out, method="fgsm", eps="2/255", data=str(pipeline.data), limit=14, progress=False
    )
    attack_split(cfg)
    attack_split(replace(cfg, limit=7, evaluate=False))
    ids = sorted(pd.read_csv(out / "predictions.csv")["image_id"])
    assert len(ids) == 7
    for kind in ("clean", "adv", "perturbation"):
        assert sorted(p.stem for p in (out / "images" / kind).glob("*.png")) == ids, kind
    assert not (out / "attack_metrics.json").exists()  # the earlier run's scores went too
    assert run_complete(out)


def test_an_out_holding_other_files_is_refused(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cfg = AttackRunConfig(pipeline.checkpoint, out, method="fgsm", eps="2/255", data=str(pipeline.data), limit=7)
    with pytest.raises(RunError, match="holds files of no attack run \\(notes.txt\\)"):
        attack_split(cfg)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_outputs_of_unfinished_runs_are_refused_or_used_with_a_warning(
    pipeline, adv_folder: Path, tmp_path: Path, caplog
) -> None:
    import shutil

    from dermadv.runs import write_json

    generator = tmp_path / "gen"
    shutil.copytree(pipeline.generator.parent, generator)
    manifest = read_json(generator / "manifest.json")
    write_json(generator / "manifest.json", {**manifest, "status": "interrupted"})
    cfg = AttackRunConfig(
        pipeline.checkpoint,
        tmp_path / "adv",
        generator=generator / "generator.safetensors",
        data=str(pipeline.data),
        target=pipeline.target,
        limit=7,
        progress=False,
    )
    with pytest.raises(RunError, match="unfinished run .*says interrupted.*--allow-incomplete"):
        attack_split(cfg)
    assert not (tmp_path / "adv").exists()
    attack_split(replace(cfg, allow_incomplete=True))
    assert "UNFINISHED" in caplog.text and run_complete(tmp_path / "adv")

    half = tmp_path / "half"
    shutil.copytree(adv_folder, half)
    write_json(half / "manifest.json", {**read_json(half / "manifest.json"), "status": "running"})
    with pytest.raises(RunError, match="unfinished run"):
        transfer(half, pipeline.other_checkpoint, tmp_path / "transfer")
    assert not (tmp_path / "transfer").exists()


def _dermadv(*args: object) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("dermadv")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _assert_one_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["attack", "fit", "--eps", "8"], "did you mean 8/255?"),
        pytest.param(["attack", "fit", "--target", "melanoma"], "unknown class 'melanoma'", marks=pytest.mark.slow),
        (["attack", "run", "--generator", "{checkpoint}"], "is not a dermadv generator"),
    ],
    ids=["eps", "target", "classifier-as-generator"],
)
def test_cli_bad_input_gives_one_error_line(pipeline, tmp_path: Path, args: list[str], fragment: str) -> None:
    args = [a.format(checkpoint=pipeline.checkpoint) for a in args]
    out = tmp_path / "out"
    proc = _dermadv(*args, "--checkpoint", pipeline.checkpoint, "--data", pipeline.data, "--out", out)
    _assert_one_error(proc, fragment)
    assert not out.exists()

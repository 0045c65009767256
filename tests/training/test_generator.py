"""Fitting the generator (``fit_generator``): its loss, an interrupted fit resumed, bad inputs refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dermadv.errors import ConfigError, DataError, RunError
from dermadv.pipeline.attack import AttackRunConfig, attack_split
from dermadv.pipeline.generator import fit_generator
from dermadv.runs import run_complete
from dermadv.training.generator import GeneratorConfig, targeted_margin_loss


def test_targeted_margin_loss_is_zero_once_the_target_wins_by_kappa() -> None:
    logits = torch.tensor([[0.0, 1.0, 7.0], [0.0, 3.0, 1.0]])
    assert torch.allclose(targeted_margin_loss(logits, 2, 5.0), torch.tensor([0.0, 7.0]))


# --- resume ---


class _Interrupt(KeyboardInterrupt):
    pass


def _interrupt_at_epoch(epoch: int):
    """A stand-in for tqdm that raises when the given epoch starts, like Ctrl-C between epochs."""
    from tqdm.auto import tqdm

    def fake(iterable, *, desc: str = "", **kwargs):
        if desc == f"generator epoch {epoch}":
            raise _Interrupt
        return tqdm(iterable, desc=desc, **kwargs)

    return fake


def test_interrupted_fit_resumes_to_the_straight_fit(pipeline, tmp_path: Path, monkeypatch) -> None:
    base = GeneratorConfig(
        checkpoint=pipeline.checkpoint,
        out=tmp_path / "straight",
        data=str(pipeline.data),
        target="nv",
        eps="4/255",
        epochs=2,
        batch_size=32,
        channels=4,
        res_blocks=1,
        progress=False,
    )
    fit_generator(base)
    interrupted = replace(base, out=tmp_path / "resumed")
    with monkeypatch.context() as mp:
        mp.setattr("dermadv.training.generator.tqdm", _interrupt_at_epoch(1))
        with pytest.raises(_Interrupt):
            fit_generator(interrupted)
    assert not run_complete(interrupted.out)
    assert len(pd.read_csv(interrupted.out / "history.csv")) == 1

    with pytest.raises(RunError, match="--resume"):
        fit_generator(interrupted)  # a second fit into the folder must ask for --resume
    # The one-cycle schedule is planned over all epochs: resuming under another plan is refused, and the
    # refusal leaves the fit resumable (which is also why 1 epoch + 1 more cannot equal a 2-epoch fit).
    with pytest.raises(RunError, match="epochs: 2 there, 3 now"):
        fit_generator(replace(interrupted, epochs=3, resume=True))
    fit_generator(replace(interrupted, resume=True))

    assert run_complete(interrupted.out)
    straight, resumed = (
        load_file(base.out / "generator.safetensors"),
        load_file(interrupted.out / "generator.safetensors"),
    )
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    losses = ["epoch", "loss_adv", "loss_gan", "loss_d", "train_target_rate"]
    pd.testing.assert_frame_equal(
        pd.read_csv(base.out / "history.csv")[losses], pd.read_csv(interrupted.out / "history.csv")[losses]
    )


def test_eps_out_of_range_writes_nothing(pipeline, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        fit_generator(GeneratorConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "gen", eps="8"))
    with pytest.raises(ConfigError, match="eps"):
        attack_split(AttackRunConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "adv", method="pgd", eps="-1"))
    assert not (tmp_path / "gen").exists() and not (tmp_path / "adv").exists()


def test_unknown_target_class_is_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown class 'melanoma'; expected one of akiec"):
        fit_generator(GeneratorConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "gen", target="melanoma"))
    with pytest.raises(DataError, match="unknown class"):
        attack_split(
            AttackRunConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "adv", method="pgd", target="melanoma")
        )
    assert not (tmp_path / "gen").exists() and not (tmp_path / "adv").exists()


# --- stop_at ---


def test_stop_at_ends_the_fit_once_the_saved_attack_moves_every_class(pipeline, tmp_path: Path) -> None:
    """The fit stops at the first epoch whose 8-bit check meets stop_at, and that check is what `attack run`
    then measures with the saved generator on the same images (the paper protocol: fit on the test split); a
    stop_at never met runs every epoch."""
    cfg = GeneratorConfig(
        checkpoint=pipeline.checkpoint,
        out=tmp_path / "gen",
        data=str(pipeline.data),
        target="mel",
        eps="32/255",
        fit_on="test",
        epochs=8,
        batch_size=8,
        lr=1e-2,
        gan_weight=0.0,
        hinge_weight=0.0,
        channels=8,
        res_blocks=1,
        stop_at=0.5,
        progress=False,
    )
    path = fit_generator(cfg)
    history = pd.read_csv(cfg.out / "history.csv")
    checked = history["worst_class_rate_8bit"].dropna()
    manifest = json.loads((cfg.out / "manifest.json").read_text())
    assert manifest["stopped_early"] is True and manifest["epochs_run"] == len(history) < cfg.epochs
    assert checked.index[-1] == len(history) - 1 and checked.iloc[-1] >= 0.5  # the last epoch met it
    assert (checked.iloc[:-1] < 0.5).all()

    attack_split(
        AttackRunConfig(
            checkpoint=pipeline.checkpoint, out=tmp_path / "adv", data=str(pipeline.data), generator=path, target="mel"
        )
    )
    metrics = json.loads((tmp_path / "adv" / "attack_metrics.json").read_text())
    assert metrics["worst_class_fooling_ratio"]["estimate"] == pytest.approx(checked.iloc[-1])

    # every image of every class at 1/255 in 3 epochs: not met
    unmet = replace(cfg, out=tmp_path / "unmet", eps="1/255", epochs=3, stop_at=1.0)
    fit_generator(unmet)
    history = pd.read_csv(unmet.out / "history.csv")
    manifest = json.loads((unmet.out / "manifest.json").read_text())
    assert manifest["stopped_early"] is False and manifest["epochs_run"] == len(history) == unmet.epochs
    assert (history["worst_class_rate_8bit"].dropna() < 1.0).all()


def test_stop_at_outside_0_1_is_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stop_at is a share of images in \(0, 1\]"):
        GeneratorConfig(checkpoint=pipeline.checkpoint, out=tmp_path / "gen", stop_at=1.5)

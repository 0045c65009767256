"""Bad input through the ``dermadv`` entry point: checked before any work, told in one ``error:`` line.

Each case of ``BAD_INPUT`` is a command line, as a user would type it, that must exit 1 with exactly one
``error:`` line naming the problem (no traceback) and write nothing where the work would have gone. The cases cover
tracebacks, input accepted silently, misleading messages, options checked only after minutes of work, and outputs
of unfinished runs used as if complete. All cases run in one fresh interpreter that
calls the console script's ``main()`` once per case (a process per case would spend minutes importing torch);
tests/cli/test_exit_codes.py runs the installed script itself for every command.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermadv.runs import read_json, write_json

SCRIPT = Path(sys.executable).parent / "dermadv"

pytestmark = [
    pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script not installed at {SCRIPT}"),
    pytest.mark.timeout(300),
]


@dataclass(frozen=True)
class Case:
    """``dermadv ARGS`` and a fragment of its one error line; ``{name}`` in ARGS is a path of :class:`Workspace`."""

    args: str
    expect: str
    absent: str = "{tmp}/out"  # where the work would have written: must not exist afterwards
    unchanged: str | None = None  # a finished run folder the refusal must leave byte for byte as it was
    not_in: str | None = None  # a misleading fragment the old message had


#: Bad input, each refused with one `error:` line before any work, leaving nothing written.
BAD_INPUT: dict[str, Case] = {
    # --- train: options and config values, refused before any image is decoded
    "train --lr -1": Case("train --data {data} --out {tmp}/out --lr -1", "lr must be greater than 0; got -1.0"),
    "train --image-size 0": Case("train --data {data} --out {tmp}/out --image-size 0", "image_size must be at least 8"),
    "train --lr inf": Case("train --data {data} --out {tmp}/out --lr inf", "lr must be a finite number; got inf"),
    "train --lr nan": Case("train --data {data} --out {tmp}/out --lr nan", "lr must be a finite number; got nan"),
    "train --noise-sigma inf": Case(
        "train --data {data} --out {tmp}/out --noise-sigma inf", "noise_sigma must be a finite number"
    ),
    "attack fit --kappa nan": Case(
        "attack fit --checkpoint {ckpt} --data {data} --out {tmp}/out --kappa nan", "kappa must be a finite number"
    ),
    "attack fit --lr inf": Case(
        "attack fit --checkpoint {ckpt} --data {data} --out {tmp}/out --lr inf", "lr must be a finite number"
    ),
    "audit of a missing model": Case(
        "audit {tmp}/none.onnx --data {data} --out {tmp}/out", "does not exist; pass a dermadv .safetensors"
    ),
    "audit --weights without an architecture": Case(
        "audit {ckpt} --weights {ckpt} --data {data} --out {tmp}/out", "--weights goes with torchvision:<arch>"
    ),
    "audit of a folder": Case("audit {tmp} --data {data} --out {tmp}/out", "is a folder; pass the model file"),
    "train --lr 1e30 diverges": Case(
        "train --data {data} --out {tmp}/out --arch resnet18 --image-size 32 --epochs 1 --lr 1e30 --optimizer sgd",
        "training diverged in epoch 0",
        absent="{tmp}/nowhere",
    ),
    "train --seed -1": Case("train --data {data} --out {tmp}/out --seed -1", "seed must be at least 0; got -1"),
    "YAML lr: fast": Case("train --data {data} --out {tmp}/out --config {yaml_lr}", "lr must be a number; got 'fast'"),
    "YAML ema_decay: 1.5": Case("train --out {tmp}/out --config {yaml_ema}", "ema_decay must be in [0, 1); got 1.5"),
    "YAML syntax error": Case(
        "train --out {tmp}/out --config {yaml_syntax}", "is not valid YAML at line 2, column 5: mapping values"
    ),
    'YAML augment: "no"': Case("train --out {tmp}/out --config {yaml_augment}", "augment must be true or false"),
    "YAML label_smoothing: -3": Case("train --out {tmp}/out --config {yaml_smoothing}", "label_smoothing must be in"),
    "YAML scalar": Case(
        "train --out {tmp}/out --config {yaml_scalar}", "must hold option: value lines", not_in="unknown key"
    ),
    "YAML list": Case("train --out {tmp}/out --config {yaml_list}", "it holds a list"),
    "YAML augment_config key": Case("train --out {tmp}/out --config {yaml_nested}", "unknown key(s) blur"),
    "train --weight-decay via YAML -1": Case("train --out {tmp}/out --config {yaml_decay}", "weight_decay must be"),
    "train densenet at 16 px": Case(
        "train --data {data} --out {tmp}/out --arch densenet121 --image-size 16", "densenet121 cannot take 16×16"
    ),
    "train on 2 images per class": Case("train --data {tiny} --out {tmp}/out", "too few to split"),
    # --- attack run / fit / sweep / transfer
    "attack run --limit -5": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method fgsm --limit -5",
        "limit must be at least 1; got -5",
    ),
    "attack run --eps 1e-9": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method fgsm --eps 1e-9",
        "less than one 8-bit step",
    ),
    "attack run --eps 300/255": Case(
        "attack run --checkpoint {ckpt} --out {tmp}/out --method fgsm --eps 300/255",
        "got 300/255 = 1.18",
        not_in="/255/255",
    ),
    "attack run --seed -1": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method fgsm --seed -1", "seed must be at"
    ),
    "attack run --steps 0": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method pgd --steps 0", "steps must be at"
    ),
    "attack run --generator of a killed fit": Case(
        "attack run --checkpoint {ckpt} --generator {killed_fit}/generator.safetensors --data {data} "
        "--target df --out {tmp}/out",
        "unfinished run",
    ),
    "attack sweep --eps 1/255,2/0": Case(
        "attack sweep --checkpoint {ckpt} --data {data} --out {tmp}/out --methods fgsm --eps 1/255,2/0",
        "--eps 1/255,2/0: eps '2/0' is not a number",
    ),
    "attack sweep --methods fgsm,nope": Case(
        "attack sweep --checkpoint {ckpt} --data {data} --out {tmp}/out --methods fgsm,nope --eps 1/255",
        "unknown attack 'nope'",
    ),
    "attack sweep --limit 0": Case(
        "attack sweep --checkpoint {ckpt} --data {data} --out {tmp}/out --methods fgsm --limit 0", "limit must be"
    ),
    "attack fit --eps 1e-9": Case("attack fit --checkpoint {ckpt} --out {tmp}/out --eps 1e-9", "8-bit step"),
    "attack fit --lr -1": Case("attack fit --checkpoint {ckpt} --out {tmp}/out --lr -1", "lr must be greater than 0"),
    "attack fit --stop-at 1.5": Case(
        "attack fit --checkpoint {ckpt} --out {tmp}/out --stop-at 1.5", "stop_at is a share of images in (0, 1]"
    ),
    "attack fit --epochs 0": Case("attack fit --checkpoint {ckpt} --out {tmp}/out --epochs 0", "epochs must be at"),
    "attack fit --checkpoint of a killed train": Case(
        "attack fit --checkpoint {killed_train}/model.safetensors --data {data} --out {tmp}/out", "unfinished run"
    ),
    "attack fit --resume with another checkpoint": Case(
        "attack fit --checkpoint {other_ckpt} --data {data} --out {finished_fit} --target df --resume "
        "--epochs 3 --batch-size 16 --lr 5e-3 --channels 8",
        "classifier: '",
        absent="{tmp}/nothing",
        unchanged="{finished_fit}",
    ),
    "attack transfer from a half-written folder": Case(
        "attack transfer --from {half_adv} --to {other_ckpt} --out {tmp}/out", "unfinished run"
    ),
    "evaluate-attack on a half-written folder": Case("evaluate-attack {half_adv}", "unfinished run"),
    "evaluate-attack --ci bogus": Case("evaluate-attack {half_adv} --ci bogus", "--ci must be one of wald"),
    # --- train --resume and reproduce: a run folder is one run
    "train --resume with another --image-size": Case(
        "train --data {data} --out {finished_train} --arch resnet18 --image-size 48 --epochs 4 --batch-size 32 "
        "--lr 3e-3 --resume",
        "image_size: 32 there, 48 now",
        absent="{tmp}/nothing",
        unchanged="{finished_train}",
    ),
    "reproduce into a finished folder with other data": Case(
        "reproduce --data {data} --out {finished_repro}",
        "data: '0000000000000000' there",
        absent="{finished_repro}/classifier",
        unchanged="{finished_repro}",
    ),
    "reproduce --sweep-eps 1/255,abc": Case(
        "reproduce --data {data} --out {tmp}/out --sweep --sweep-eps 1/255,abc",
        "--sweep-eps 1/255,abc: eps 'abc' is not a number",
    ),
    "reproduce --target xyz": Case("reproduce --data {data} --out {tmp}/out --target xyz", "unknown class 'xyz'"),
    "reproduce --seed -1": Case("reproduce --data {data} --out {tmp}/out --seed -1", "seed must be at least 0"),
    "reproduce --eps 1e-9": Case("reproduce --data {data} --out {tmp}/out --eps 1e-9", "8-bit step"),
    "reproduce --sweep-limit 0": Case("reproduce --data {data} --out {tmp}/out --sweep-limit 0", "sweep_limit must"),
    # --- options that would be ignored or contradict another
    "attack run --generator with another --eps": Case(
        "attack run --checkpoint {ckpt} --generator {finished_fit}/generator.safetensors --data {data} "
        "--out {tmp}/out --eps 2/255",
        "was fitted at eps 8/255; --eps 2/255 cannot change it",
    ),
    "attack run --method fgsm --generator": Case(
        "attack run --checkpoint {ckpt} --generator {finished_fit}/generator.safetensors --data {data} "
        "--out {tmp}/out --method fgsm",
        "--generator is not used by --method fgsm",
    ),
    "attack run --param eps with --eps": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method pgd --eps 2/255 --param eps=0.5",
        "--param eps=… repeats --eps",
    ),
    "attack run --param steps=abc": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method cw --param binary_search_steps=abc",
        "--param binary_search_steps must be a whole number",
    ),
    "attack run --queries with pgd": Case(
        "attack run --checkpoint {ckpt} --data {data} --out {tmp}/out --method pgd --queries 100",
        "--queries is not used by --method pgd",
    ),
    "train --adv-eps without --adversarial": Case(
        "train --data {data} --out {tmp}/out --adv-eps 2/255", "training is not adversarial"
    ),
    "train --image-size 60000": Case("train --data {data} --out {tmp}/out --image-size 60000", "at most 2048"),
    "train --seed 2**66": Case(
        "train --data {data} --out {tmp}/out --seed 99999999999999999999", "seed must be below 2**63"
    ),
    "attack fit --channels 100000": Case(
        "attack fit --checkpoint {ckpt} --data {data} --out {tmp}/out --channels 100000", "channels must be at most"
    ),
    "defend transforms --batch-size 0": Case(
        "defend transforms --checkpoint {ckpt} --data {data} --out {tmp}/out --batch-size 0", "batch_size must be"
    ),
    "defend certify --seed -3": Case(
        "defend certify --checkpoint {ckpt} --data {data} --out {tmp}/out --seed -3", "seed must be at least 0"
    ),
    "defend card --limit -5": Case(
        "defend card --checkpoint {ckpt} --data {data} --out {tmp}/out --limit -5", "limit must be at least 1"
    ),
    # --- operating-system faults (the full disk, the read-only --out and the busy port are in
    # tests/cli/test_faults.py): each file named in the one line
    "a 200-megapixel JPEG": Case(
        "evaluate --checkpoint {ckpt} --data {bomb_jpeg} --split all --out {tmp}/out",
        "BOMB_00004.jpg is too large to decode safely (Image size (200000000 pixels) exceeds limit",
    ),
    "a JPEG between Pillow's pixel limit and twice it": Case(
        "evaluate --checkpoint {ckpt} --data {big_jpeg} --split all --out {tmp}/out",
        "BIG_00004.jpg is too large to decode safely",
    ),
    "a JPEG cut short after its header": Case(
        "evaluate --checkpoint {ckpt} --data {truncated_jpeg} --split all --out {tmp}/out",
        "TRUNC_00004.jpg: image file is truncated",
    ),
    "a JPEG whose body is noise": Case(
        "evaluate --checkpoint {ckpt} --data {noisy_jpeg} --split all --out {tmp}/out", "NOISE_00004.jpg: "
    ),
    "a checkpoint whose metadata is not JSON": Case(
        "evaluate --checkpoint {garbled_meta_ckpt} --data {data} --out {tmp}/out",
        "garbled-meta.safetensors has broken metadata ('classes' is not JSON: '[\"akiec\", ",
    ),
    "a checkpoint whose metadata lacks keys": Case(
        "attack run --checkpoint {keyless_meta_ckpt} --data {data} --out {tmp}/out --method fgsm --eps 2/255",
        "keyless-meta.safetensors has broken metadata (no 'arch')",
    ),
    "a checkpoint whose image_size is a word": Case(
        "evaluate --checkpoint {wordy_meta_ckpt} --data {data} --out {tmp}/out",
        "'image_size' must be a list of 2 int",
    ),
    "evaluate --checkpoint of a folder": Case(
        "evaluate --checkpoint {finished_train} --data {data} --out {tmp}/out", "is a folder; pass the model file in it"
    ),
    "attack run --generator of a folder": Case(
        "attack run --checkpoint {ckpt} --generator {finished_fit} --data {data} --target df --out {tmp}/out",
        "is a folder; pass the .safetensors file in it",
    ),
    "model serve --port 70000": Case("model serve {tmp}/model.onnx --port 70000", "--port must be in 1..65535"),
    "observer serve --port 70000": Case("observer serve {study} --port 70000", "--port must be in 1..65535"),
    "observer serve --port 0": Case("observer serve {study} --port 0", "--port must be in 1..65535; got 0"),
    # --- data
    "empty lesion_id": Case("data info --data {no_lesion}", "empty lesion_id in 2 row(s) (first at row 3)"),
    "2 images per class": Case("data split --data {tiny} --out {tmp}/out", "the test split would be empty"),
    "data split --seed -1": Case("data split --data {data} --out {tmp}/out --seed -1", "seed must be at least 0"),
    "broken .npz": Case("data info --data {broken_npz}", "is not a .npz archive", not_in="allow_pickle"),
    # --- evaluate and the observer study
    "evaluate on an empty test split": Case(
        "evaluate --checkpoint {ckpt} --data {data} --split-file {no_test_split} --out {tmp}/out", "test split"
    ),
    "evaluate --ci bogus": Case("evaluate --checkpoint {ckpt} --out {tmp}/out --ci bogus", "ci must be one of"),
    "evaluate --checkpoint of a killed train": Case(
        "evaluate --checkpoint {killed_train}/model.safetensors --data {data} --out {tmp}/out", "unfinished run"
    ),
    "observer create from a half-written folder": Case(
        "observer create {half_adv} --out {tmp}/out --n 4", "unfinished run"
    ),
    "observer create --seed -1": Case(
        "observer create {adv} --out {tmp}/out --n 4 --seed -1", "seed must be at least 0"
    ),
    # --- no score on training images, no model of one class, no empty sweep, no partial output
    "evaluate on a split whose test images trained the checkpoint": Case(
        "evaluate --checkpoint {ckpt} --data {data} --split-file {leaky_split} --out {tmp}/out",
        "test images were in the classifier's training split; pass the split the checkpoint was trained with",
    ),
    "attack run on a split whose test images trained the checkpoint": Case(
        "attack run --checkpoint {ckpt} --data {data} --split-file {leaky_split} --out {tmp}/out --method fgsm "
        "--eps 2/255",
        "test images were in the classifier's training split; pass the split the checkpoint was trained with",
    ),
    "train on images of one class": Case(
        "train --data {one_class} --out {tmp}/out --arch resnet18 --image-size 32 --epochs 1",
        "the training split holds images of one class only (nv: ",
    ),
    "attack sweep --methods advgan without generators": Case(
        "attack sweep --checkpoint {ckpt} --data {data} --out {tmp}/out --methods advgan --eps 2/255",
        "--methods advgan has no generator to run (no --generators folder given)",
    ),
    "defend certify --checkpoint of a killed train": Case(
        "defend certify --checkpoint {killed_train}/model.safetensors --data {data} --out {tmp}/out", "unfinished run"
    ),
    "defend card --checkpoint of a killed train": Case(
        "defend card --checkpoint {killed_train}/model.safetensors --data {data} --out {tmp}/out", "unfinished run"
    ),
    "defend detect on a half-written attack folder": Case(
        "defend detect --checkpoint {ckpt} --data {data} --attack-folder {half_adv} --out {tmp}/out", "unfinished run"
    ),
    "report of a half-written attack folder": Case(
        "report {half_adv}", "--allow-incomplete to report it marked unfinished", absent="{half_adv}/report"
    ),
}


class Workspace:
    """The paths the cases name, each made on first use in the test's folder."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.tmp, self.request = tmp, request

    def __getitem__(self, name: str) -> str:
        return str(getattr(self, name))

    @cached_property
    def data(self) -> Path:
        return self.request.getfixturevalue("synthetic_root")

    @cached_property
    def pipeline(self):  # noqa: ANN201 - tests/conftest.py's Pipeline
        return self.request.getfixturevalue("pipeline")

    @cached_property
    def ckpt(self) -> Path:
        return self.pipeline.checkpoint

    @cached_property
    def other_ckpt(self) -> Path:
        return self.pipeline.other_checkpoint

    @cached_property
    def adv(self) -> Path:
        return self.request.getfixturevalue("adv_folder")

    def _yaml(self, name: str, text: str) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(text)
        return path

    yaml_lr = cached_property(lambda self: self._yaml("lr", "lr: fast\n"))
    yaml_ema = cached_property(lambda self: self._yaml("ema", "epochs: 2\nema_decay: 1.5\n"))
    yaml_syntax = cached_property(lambda self: self._yaml("syntax", "epochs: 2\n  lr: 0.1\nseed: 0\n"))
    yaml_augment = cached_property(lambda self: self._yaml("augment", 'augment: "no"\n'))
    yaml_smoothing = cached_property(lambda self: self._yaml("smoothing", "label_smoothing: -3\n"))
    yaml_scalar = cached_property(lambda self: self._yaml("scalar", "fast\n"))
    yaml_list = cached_property(lambda self: self._yaml("list", "- epochs: 2\n- lr: 0.1\n"))
    yaml_nested = cached_property(lambda self: self._yaml("nested", "augment_config:\n  rotation: 90\n  blur: 1\n"))
    yaml_decay = cached_property(lambda self: self._yaml("decay", "weight_decay: -1\n"))

    def _ham_copy(self, name: str, n_per_class: int, *, prefix: str | None = None) -> tuple[Path, pd.DataFrame]:
        """A HAM10000-layout folder of the first ``n_per_class`` images of each class of the synthetic set
        (renamed ``<prefix>00000``… when a prefix is given: images of another data set)."""
        meta = pd.read_csv(self.data / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
        meta = meta.groupby("dx", sort=False).head(n_per_class).reset_index(drop=True)
        root = self.tmp / name
        (root / "images").mkdir(parents=True)
        sources = [next(self.data.rglob(f"{image_id}.jpg")) for image_id in meta["image_id"]]
        if prefix is not None:
            meta["image_id"] = [f"{prefix}{i:05d}" for i in range(len(meta))]
        for source, image_id in zip(sources, meta["image_id"], strict=True):
            shutil.copy(source, root / "images" / f"{image_id}.jpg")
        meta.to_csv(root / "HAM10000_metadata.csv", index=False)
        return root, meta

    @cached_property
    def tiny(self) -> Path:
        return self._ham_copy("tiny", 2)[0]

    @cached_property
    def no_lesion(self) -> Path:
        root, meta = self._ham_copy("no-lesion", 3)
        meta.loc[[1, 4], "lesion_id"] = ""
        meta.to_csv(root / "HAM10000_metadata.csv", index=False)
        return root

    @cached_property
    def broken_npz(self) -> Path:
        path = self.tmp / "dermamnist.npz"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return path

    @cached_property
    def one_class(self) -> Path:
        """A HAM10000-layout folder of the synthetic set's nv images only."""
        meta = pd.read_csv(self.data / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
        meta = meta[meta["dx"] == "nv"].reset_index(drop=True)
        root = self.tmp / "one-class"
        (root / "images").mkdir(parents=True)
        for image_id in meta["image_id"]:
            shutil.copy(next(self.data.rglob(f"{image_id}.jpg")), root / "images" / f"{image_id}.jpg")
        meta.to_csv(root / "HAM10000_metadata.csv", index=False)
        return root

    @cached_property
    def leaky_split(self) -> Path:
        """The checkpoint's own split with train and test swapped: its test images are the ones it learnt from."""
        split = pd.read_csv(self.ckpt.parent / "split.csv", dtype=str, keep_default_na=False)
        split["split"] = split["split"].replace({"train": "test", "test": "train"})
        split.to_csv(self.tmp / "leaky.csv", index=False)
        return self.tmp / "leaky.csv"

    @cached_property
    def no_test_split(self) -> Path:
        split = pd.read_csv(self.ckpt.parent / "split.csv")
        split.loc[split["split"] == "test", "split"] = "val"
        split.to_csv(self.tmp / "no-test.csv", index=False)
        return self.tmp / "no-test.csv"

    def _copy(self, source: Path, name: str, status: str | None = None) -> Path:
        folder = self.tmp / name
        shutil.copytree(source, folder)
        if status is not None:
            write_json(folder / "manifest.json", {**read_json(folder / "manifest.json"), "status": status})
        return folder

    killed_train = cached_property(lambda self: self._copy(self.ckpt.parent, "killed-train", "interrupted"))
    killed_fit = cached_property(lambda self: self._copy(self.pipeline.generator.parent, "killed-fit", "interrupted"))
    finished_train = cached_property(lambda self: self._copy(self.ckpt.parent, "finished-train"))
    finished_fit = cached_property(lambda self: self._copy(self.pipeline.generator.parent, "finished-fit"))

    @cached_property
    def half_adv(self) -> Path:
        """An attack folder cut short: manifest still running, predictions.csv not yet written, a third of the PNGs."""
        folder = self._copy(self.adv, "half-adv", "running")
        (folder / "predictions.csv").unlink()
        for kind in ("clean", "adv", "perturbation"):
            for png in sorted((folder / "images" / kind).glob("*.png"))[::3]:
                png.unlink()
        return folder

    @cached_property
    def finished_repro(self) -> Path:
        """A finished reproduce folder made from other data (its data fingerprint is not the synthetic set's)."""
        folder = self.tmp / "finished-repro"
        folder.mkdir()
        config = {"out": str(folder), "data": "/elsewhere/HAM10000", "preset": "demo", "target": "nv", "seed": 0}
        manifest = {"command": "reproduce", "config": config, "data_fingerprint": "0" * 16, "status": "complete"}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    # --- files the operating system or a decoder refuses

    def _damaged_jpeg(self, name: str, prefix: str, damage: Callable[[bytes], bytes]) -> Path:
        """A HAM10000-layout copy (3 images per class, renamed ``<prefix>00000``…) whose fifth JPEG is damaged."""
        root, _ = self._ham_copy(name, 3, prefix=prefix)
        path = root / "images" / f"{prefix}00004.jpg"
        path.write_bytes(damage(path.read_bytes()))
        return root

    bomb_jpeg = cached_property(lambda self: self._damaged_jpeg("bomb-jpeg", "BOMB_", _claiming(10_000, 20_000)))
    big_jpeg = cached_property(lambda self: self._damaged_jpeg("big-jpeg", "BIG_", _claiming(10_000, 10_000)))
    truncated_jpeg = cached_property(
        lambda self: self._damaged_jpeg("truncated-jpeg", "TRUNC_", lambda data: data[: data.index(b"\xff\xda") + 40])
    )
    noisy_jpeg = cached_property(lambda self: self._damaged_jpeg("noisy-jpeg", "NOISE_", _noisy_body))

    def _ckpt_with_meta(self, name: str, edit: Callable[[dict[str, str]], dict[str, str]]) -> Path:
        """The checkpoint's weights with edited metadata: a valid safetensors file that dermadv did not write."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(self.ckpt), framework="pt") as f:
            meta = f.metadata()
        path = self.tmp / f"{name}.safetensors"
        save_file(load_file(str(self.ckpt)), str(path), metadata=edit(dict(meta)))
        return path

    garbled_meta_ckpt = cached_property(
        lambda self: self._ckpt_with_meta("garbled-meta", lambda meta: {**meta, "classes": meta["classes"][:-3]})
    )
    keyless_meta_ckpt = cached_property(
        lambda self: self._ckpt_with_meta("keyless-meta", lambda meta: {k: v for k, v in meta.items() if k != "arch"})
    )
    wordy_meta_ckpt = cached_property(
        lambda self: self._ckpt_with_meta("wordy-meta", lambda meta: {**meta, "image_size": '"large"'})
    )

    @cached_property
    def study(self) -> Path:
        """A 4-item observer study of a small attack folder."""
        from PIL import Image

        from dermadv.observer.study import create_study

        rng = np.random.default_rng(0)
        folder = self.tmp / "adv-for-study"
        for kind in ("clean", "adv"):
            (folder / "images" / kind).mkdir(parents=True)
        for i in range(4):
            clean = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(clean).save(folder / "images" / "clean" / f"ISIC_{i:07d}.png")
            Image.fromarray(clean ^ 1).save(folder / "images" / "adv" / f"ISIC_{i:07d}.png")
        return create_study(folder, self.tmp / "study", n=4).path


def _claiming(height: int, width: int) -> Callable[[bytes], bytes]:
    """A JPEG's bytes with the frame header saying ``height`` × ``width``: a decompression bomb, as a small file."""

    def edit(data: bytes) -> bytes:
        start = data.index(b"\xff\xc0")  # baseline frame: marker, length (2), precision (1), height (2), width (2)
        return data[: start + 5] + struct.pack(">HH", height, width) + data[start + 9 :]

    return edit


def _noisy_body(data: bytes) -> bytes:
    """The JPEG's headers, then noise where the entropy-coded scan was."""
    scan = data.index(b"\xff\xda") + 20
    noise = np.random.default_rng(0).integers(0, 256, len(data) - scan, dtype=np.uint8).tobytes()
    return data[:scan] + noise


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "DERMADV_CACHE": str(cache), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def run_dermadv(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``dermadv`` script in a process of its own."""
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=_env(cache), timeout=240, cwd=cwd)


#: Runs each command line through ``dermadv.cli.main`` (what the console script calls) and records its exit code
#: and output; logging goes to whichever stderr is current, so warnings land with their case. A case still working
#: after two minutes has started the work it should have refused: it is stopped and counted as a crash.
DRIVER = """
import contextlib, io, json, logging, signal, sys
from dermadv.cli import main

def too_long(signum, frame):
    raise TimeoutError(f"still working after {LIMIT_S} s: the input was not refused before the work")

LIMIT_S = 120
signal.signal(signal.SIGALRM, too_long)

class CurrentStderr:
    def write(self, text): return sys.stderr.write(text)
    def flush(self): sys.stderr.flush()

logging.basicConfig(stream=CurrentStderr(), level=logging.WARNING)
cases, results_path, results = sys.argv[1], sys.argv[2], {}
for name, argv in json.load(open(cases)).items():
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["dermadv", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        signal.alarm(LIMIT_S)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # a crash: recorded as a traceback line, as a user would see one
            code = 1
            print("Traceback (most recent call last): " + type(exc).__name__ + ": " + str(exc), file=sys.stderr)
        finally:
            signal.alarm(0)
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
json.dump(results, open(results_path, "w"))
"""


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr: str
    absent: Path  # must not exist
    unchanged: tuple[Path, dict[str, bytes]] | None  # a folder and its files before the command


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, session_cache: Path
) -> dict[str, Outcome]:
    """Every case of ``BAD_INPUT``, each in a folder of its own, run in one interpreter."""
    root = tmp_path_factory.mktemp("bad-input")
    argvs, expected = {}, {}
    for i, (name, case) in enumerate(BAD_INPUT.items()):
        tmp = root / f"case{i:02d}"
        tmp.mkdir()
        space = Workspace(tmp, request)
        fill = lambda text, space=space: text.format_map(space)  # noqa: E731
        argvs[name] = [fill(a) for a in shlex.split(case.args)]
        unchanged = Path(fill(case.unchanged)) if case.unchanged else None
        expected[name] = (Path(fill(case.absent)), (unchanged, _files(unchanged)) if unchanged else None)
    (root / "cases.json").write_text(json.dumps(argvs))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root / "cases.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
        env=_env(session_cache),
        timeout=3600,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return {name: Outcome(results[name]["code"], results[name]["stderr"], *expected[name]) for name in BAD_INPUT}


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_is_one_error_line_before_any_work(name: str, outcomes: dict[str, Outcome]) -> None:
    case, outcome = BAD_INPUT[name], outcomes[name]
    assert outcome.code == 1, f"exit code {outcome.code}\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, outcome.stderr[-3000:]
    assert case.expect in errors[0], errors[0]
    if case.not_in:
        assert case.not_in not in errors[0], errors[0]
    assert not outcome.absent.exists(), "work was done before the input was refused"
    if outcome.unchanged is not None:
        folder, before = outcome.unchanged
        assert _files(folder) == before, "the refused rerun changed the finished run folder"


def test_an_unfinished_runs_output_is_used_with_a_warning_when_allowed(
    tmp_path: Path, request: pytest.FixtureRequest, session_cache: Path
) -> None:
    space = Workspace(tmp_path, request)
    args = ["observer", "create", space["half_adv"], "--out", str(tmp_path / "study"), "--n", "4"]
    result = run_dermadv([*args, "--allow-incomplete"], tmp_path, session_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "USING AN UNFINISHED RUN'S OUTPUT" in result.stderr and (tmp_path / "study" / "study.json").is_file()


def test_evaluate_all_of_external_data_needs_no_split(
    tmp_path: Path, request: pytest.FixtureRequest, session_cache: Path
) -> None:
    """``evaluate --split all`` on another HAM10000-layout folder (e.g. the ISIC 2018 test images) just works."""
    space = Workspace(tmp_path, request)
    root, _ = space._ham_copy("external", 3, prefix="EXT_")  # images the checkpoint never saw
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", space["ckpt"], "--data", str(root), "--split", "all", "--out", str(out)]
    result = run_dermadv(args, tmp_path, session_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "external data: none of the 21 images was used to train" in result.stderr
    assert read_json(out / "metrics.json")["n"] == 21
    assert read_json(out / "manifest.json")["config"]["external_data"] is True


def test_reproduce_with_a_missing_model_trains_nothing(tmp_path: Path) -> None:
    """The model named is the model audited: a missing --model stops with one line, never trains a new one."""
    script = Path(sys.executable).parent / "dermadv"
    missing = tmp_path / "clf" / "best.safetensors"
    result = subprocess.run(
        [str(script), "reproduce", "--model", str(missing), "--out", str(tmp_path / "repro")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "is not a file" in result.stderr, result.stderr[-1500:]
    assert not (tmp_path / "repro" / "classifier").exists()


def test_a_diverged_training_is_failed_not_complete(tmp_path: Path, synthetic_root: Path) -> None:
    """NaN weights are never called complete: the run stops with one line, its manifest says failed, and its
    checkpoint (if one was saved) is refused as the output of an unfinished run."""
    out = tmp_path / "run"
    args = ["train", "--data", str(synthetic_root), "--out", str(out), "--arch", "resnet18", "--image-size", "32"]
    args += ["--epochs", "2", "--lr", "1e30", "--optimizer", "sgd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DERMADV_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 1 and "error: training diverged" in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert read_json(out / "manifest.json")["status"] == "failed"
    if (out / "model.safetensors").exists():
        again = subprocess.run(
            [str(SCRIPT), "evaluate", "--model", str(out / "model.safetensors"), "--data", str(synthetic_root)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert again.returncode == 1 and "unfinished run" in again.stderr

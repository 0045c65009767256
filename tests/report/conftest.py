"""A small reproduce-style run folder written with the library's own writers (no training: seconds, not minutes)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermadv.data.classes import CLASSES
from dermadv.defences import results as r
from dermadv.defences.card import ClassRobustness, RobustnessCard
from dermadv.defences.detection import DetectionScores
from dermadv.defences.smoothing import CertifiedAccuracy
from dermadv.evaluation.attack_eval import evaluate_attack_folder
from dermadv.evaluation.attack_metrics import AttackMetrics
from dermadv.evaluation.metrics import classification_metrics, write_classification_outputs
from dermadv.observer.storage import StudyDB
from dermadv.observer.study import create_study, invite_observer, load_answer_key
from dermadv.pipeline.apply import amplified
from dermadv.pipeline.sweep import sweep_row
from dermadv.proportions import Proportion
from dermadv.runs import Run, write_csv, write_json

EPS = 8 / 255
SIZE = 16
PER_CLASS = 4  # test images per class


def _lesion(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = (np.hypot(yy - SIZE / 2, xx - SIZE / 2) < rng.uniform(3, 6))[..., None]
    image = np.where(inside, [120, 70, 50], [225, 180, 160]) + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _probs(rng: np.random.Generator, pred: int) -> np.ndarray:
    p = rng.dirichlet(np.ones(len(CLASSES)))
    p[pred] += 1.0
    return p / p.sum()


def write_split(path: Path) -> pd.DataFrame:
    rows = []
    for k in range(len(CLASSES) * 12):
        split = ("train", "train", "train", "val", "test", "test")[k % 6]
        rows.append({"image_id": f"ISIC_{k:07d}", "lesion_id": f"L{k:05d}", "dx": CLASSES[k % 7], "split": split})
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False)
    return frame


def write_classifier(folder: Path, rng: np.random.Generator) -> None:
    config = {"arch": "resnet18", "weights": None, "image_size": SIZE, "epochs": 3, "batch_size": 8, "seed": 0}
    run = Run(folder, command="train", config=config, seed=0, data_fingerprint="fp-test")
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 - 0.3 * e,
            "val_loss": 2.1 - 0.2 * e,
            "val_acc": 0.3 + 0.1 * e,
            "val_balanced_acc": 0.2 + 0.1 * e,
            "lr": 1e-3,
            "seconds": 1.0,
            "images_per_s": 100.0,
        }
        for e in range(3)
    ]
    write_csv(folder / "history.csv", history)
    write_split(folder / "split.csv")
    run.finish(epochs_run=3)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    preds = np.where(rng.random(labels.size) < 0.6, labels, rng.integers(0, len(CLASSES), labels.size))
    probs = np.stack([_probs(rng, p) for p in preds])
    test = folder / "test"
    eval_run = Run(test, command="evaluate", config={"split": "test"}, data_fingerprint="fp-test")
    report = classification_metrics(labels, probs)
    ids = [f"ISIC_{k:07d}" for k in range(labels.size)]
    write_classification_outputs(report, test, image_ids=ids, labels=labels, probs=probs)
    eval_run.finish()


def write_attack(folder: Path, rng: np.random.Generator, *, inmem_differ: int = 1) -> AttackMetrics:
    run = Run(folder, command="attack run", config={"method": "advgan"}, seed=0, data_fingerprint="fp-test")
    for sub in ("clean", "adv", "perturbation"):
        (folder / "images" / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    nv = CLASSES.index("nv")
    for k in range(len(CLASSES) * PER_CLASS):
        image_id = f"ISIC_{k:07d}"
        label = k // PER_CLASS
        clean = _lesion(rng)
        delta = rng.integers(-8, 9, clean.shape)
        adv = np.clip(clean.astype(int) + delta, 0, 255).astype(np.uint8)
        for sub, image in (("clean", clean), ("adv", adv), ("perturbation", amplified(clean, adv, EPS))):
            Image.fromarray(image).save(folder / "images" / sub / f"{image_id}.png")
        clean_pred = label if rng.random() < 0.7 else int(rng.integers(0, len(CLASSES)))
        adv_pred = nv if rng.random() < 0.6 else clean_pred
        inmem = adv_pred if k >= inmem_differ else (adv_pred + 1) % len(CLASSES)
        pc, pa = _probs(rng, clean_pred), _probs(rng, adv_pred)
        row = {
            "image_id": image_id,
            "label": CLASSES[label],
            "clean_pred": CLASSES[clean_pred],
            "adv_pred": CLASSES[adv_pred],
            "inmem_adv_pred": CLASSES[inmem],
        }
        row.update({f"clean_prob_{c}": pc[j] for j, c in enumerate(CLASSES)})
        row.update({f"adv_prob_{c}": pa[j] for j, c in enumerate(CLASSES)})
        rows.append(row)
    write_csv(folder / "predictions.csv", rows)
    write_json(
        folder / "attack.json",
        {
            "method": "advgan",
            "params": "GeneratorAttack(eps=0.03137, target='nv')",
            "eps": EPS,
            "eps_255": 8.0,
            "target": "nv",
            "target_index": nv,
            "checkpoint": "classifier/model.safetensors",
            "data": None,
            "data_source": "synthetic",
            "split": "test",
            "classes": list(CLASSES),
            "image_size": [SIZE, SIZE],
            "classifier_input_size": [SIZE, SIZE],
            "attack_size": "model",
            "n_images": len(rows),
            "sampled": False,
        },
    )
    metrics = evaluate_attack_folder(folder, in_run=True)
    run.finish(n_images=len(rows))
    return metrics


def write_generator(folder: Path) -> None:
    config = {
        "target": "nv",
        "eps": "8/255",
        "fit_on": "train",
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "kappa": 5.0,
        "gan_weight": 0.05,
        "hinge_weight": 1.0,
        "hinge_ratio": 0.8,
        "channels": 32,
        "res_blocks": 4,
        "eps_value": EPS,
    }
    run = Run(folder, command="attack fit", config=config, seed=0, data_fingerprint="fp-test")
    write_csv(
        folder / "history.csv",
        [
            {
                "epoch": e,
                "loss_adv": 5.0 - e,
                "loss_gan": 0.3,
                "loss_d": 0.25,
                "train_target_rate": 0.3 + 0.2 * e,
                "seconds": 1.0,
                "images_per_s": 50.0,
            }
            for e in range(2)
        ],
    )
    run.finish(epochs_run=2)


def write_sweep(folder: Path, metrics: AttackMetrics) -> None:
    rows = []
    for method in ("pgd", "fgsm"):
        for k, eps in enumerate((2 / 255, 4 / 255, 8 / 255)):
            m = replace(metrics, accuracy_adv=replace(metrics.accuracy_adv, estimate=0.5 - 0.1 * k))
            tag = f"{method}-eps{round(eps * 255)}_255"
            rows.append(sweep_row(m, method=method, eps=eps, protocol="held-out", folder=tag))
            write_json(folder / tag / "attack_metrics.json", m.as_dict())
    write_csv(folder / "sweep.csv", rows)


def write_defences(folder: Path) -> None:
    """One folder per ``dermadv defend`` command, as the library's result dataclasses write them."""
    classes = [c for c in CLASSES if c != "nv"]

    def outcome(k: int) -> r.TargetedOutcome:
        return r.TargetedOutcome(
            {c: Proportion.counted(min(PER_CLASS, k + j % 2), PER_CLASS) for j, c in enumerate(classes)}
        )

    rows = [r.TransformRow("none", e, Proportion.counted(20, 28), outcome(4), None) for e in (2 / 255, 8 / 255)]
    rows += [
        r.TransformRow(d, e, Proportion.counted(18, 28), outcome(1), outcome(3))
        for d in ("jpeg:75", "bits:5")
        for e in (2 / 255, 8 / 255)
    ]
    transforms = r.TransformsResult("nv", "PGD-20 (L∞, seeded random start), targeted", 8, 28, tuple(rows))
    certify = r.CertifyResult(
        CertifiedAccuracy((0.0, 0.25, 0.5), (0.5, 0.25, 0.0), 28, 0.25, 500, 0.001),
        50,
        Proportion.counted(20, 28),
        Proportion.counted(3, 28),
    )
    scores = DetectionScores(0.9, 0.6, 12.0, 28, 28)
    detect = r.DetectResult(
        "mahalanobis",
        70,
        11.5,
        (r.DetectionOutcome("pgd (adv-test)", scores, Proportion.counted(20, 28), Proportion.counted(9, 28)),),
    )
    budgets = (1 / 255, 2 / 255, 4 / 255)
    card = RobustnessCard(
        "nv",
        budgets,
        "PGD(eps=4/255)",
        tuple(ClassRobustness(c, PER_CLASS, (0.25, 0.5, 1.0), 2 / 255, 4 / 255) for c in classes),
    )
    results = {
        "transforms": transforms,
        "certify": certify,
        "detect": detect,
        "card": r.CardResult((r.DefendedCard("none", False, card), r.DefendedCard("jpeg:75", True, card))),
    }
    for name, result in results.items():
        run = Run(folder / name, command=f"defend {name}", config={"limit": 28}, seed=0, data_fingerprint="fp-test")
        write_json(folder / name / f"{name}.json", result)
        run.finish(n_images=28)


def answer_study(study_dir: Path, rng: np.random.Generator, observers: int = 2) -> None:
    key = load_answer_key(study_dir)
    for o in range(observers):
        invitation = invite_observer(study_dir, f"Observer {'AB'[o]}")
        db = StudyDB(study_dir / "answers.sqlite")
        design = db.design()
        while (item := db.serve_next(invitation.observer_id)) is not None:
            answer = (("yes", "no") if design == "single" else ("left", "right"))[int(rng.integers(0, 2))]
            diagnosis = key[item].label if design == "single" else None
            db.record_answer(invitation.observer_id, item, answer=answer, confidence=3, diagnosis=diagnosis)


def make_run(root: Path, *, seed: int = 0) -> Path:
    """A complete reproduce-style folder: classifier, test evaluation, generator, attack, sweep, defences, answered study."""
    rng = np.random.default_rng(seed)
    run = Run(root, command="reproduce", config={"preset": "demo", "data": None}, seed=seed)
    write_split(root / "split.csv")
    write_classifier(root / "classifier", rng)
    write_generator(root / "generator")
    metrics = write_attack(root / "adv-test", rng)
    write_sweep(root / "sweep", metrics)
    write_defences(root / "defences")
    create_study(root / "adv-test", root / "observer", n=10, seed=seed)
    answer_study(root / "observer", rng)
    write_json(root / "paper_table.json", [{"measure": "accuracy", "paper": "84%", "this_run": "x", "source": "y"}])
    run.finish()
    return root


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run folder shared by the tests; tests that change it copy it first."""
    return make_run(tmp_path_factory.mktemp("report") / "repro")


@pytest.fixture()
def helpers() -> dict[str, Callable[..., None]]:
    """The writers above, for tests that build their own folders."""
    return {"write_classifier": write_classifier, "answer_study": answer_study}


@pytest.fixture()
def run_copy(run_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """``run_copy(drop=("sweep", ...))``: a private copy of the run folder without some parts."""

    def copy(drop: tuple[str, ...] = ()) -> Path:
        dst = tmp_path / "run"
        shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("report"))
        for part in drop:
            target = dst / part
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return dst

    return copy

"""``dermadv evaluate``: a classifier checkpoint on a split, into a run folder (metrics, per class, predictions)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from dermadv import distributed as dd
from dermadv.data.load import prepare
from dermadv.data.splits import SPLITS
from dermadv.defences.transforms import parse_defence
from dermadv.errors import ConfigError
from dermadv.evaluation.metrics import ClassificationReport, classification_metrics, write_classification_outputs
from dermadv.evaluation.stats import CI_METHODS
from dermadv.models.inference import predict_logits
from dermadv.models.sources import label_map
from dermadv.pipeline.models import ModelSpec, as_spec, check_unseen, checked, open_model, training_split
from dermadv.runs import Run

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    checkpoint: str | Path | ModelSpec,
    *,
    data: str | None = None,
    split: str = "test",
    split_file: str | None = None,
    out: str | Path | None = None,
    tta: bool = False,
    ci_method: str = "wald",
    batch_size: int = 256,
    defence: str | None = None,
    allow_incomplete: bool = False,
    allow_training_images: bool = False,
) -> ClassificationReport:
    """Predict ``split`` with the checkpoint and write metrics/predictions into ``out``.

    The split defaults to the ``split.csv`` written by the training run, so the test images are the
    ones the classifier never saw. ``split="all"`` without a split file takes every image of ``data`` and needs no
    split: on data the checkpoint was not trained on (an external test set) the log says so. With a ``defence`` (``jpeg:75``…) the
    images pass through it first. A checkpoint that records its training images is refused on a split holding
    any of them (but ``train``), unless ``allow_training_images``.
    """
    spec = as_spec(checkpoint)
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, all; got {split!r}")
    if ci_method not in CI_METHODS:
        raise ConfigError(f"ci must be one of {', '.join(CI_METHODS)}; got {ci_method!r}")
    device = dd.default_device()
    defence_spec = parse_defence(defence) if defence else None
    source = open_model(spec, device=device, allow_incomplete=allow_incomplete)
    info = source.info
    checkpoint = spec.config()["model"] or spec.model  # an endpoint's URL without credentials or query string
    beside = training_split(source, spec)
    if out is None and info.kind != "dermadv":
        raise ConfigError(f"pass --out for the evaluation of {info.spec} (only a dermadv run folder has a default)")
    external: bool | None = None  # None: not known
    if split == "all" and split_file is None:
        prep = prepare(data, image_size=info.image_size, unsplit=True)
        n = len(prep.frame)
        if beside is None:
            log.warning("no split.csv beside %s: cannot tell whether these %d images trained it", checkpoint, n)
        else:
            seen = _training_images(beside, prep.dataset.image_ids)
            external = seen == 0
            if external:
                log.warning("external data: none of the %d images was used to train %s", n, checkpoint)
            else:
                log.warning("%d of the %d images were in the checkpoint's train or val split", seen, n)
    else:
        split_file = split_file or beside
        prep = prepare(data, image_size=info.image_size, split_file=split_file)
    to_model = label_map(info, prep.dataset.classes)
    idx = prep.indices(split)
    if len(idx) == 0:
        raise ConfigError(f"the {split} split of {data or 'the synthetic set'} is empty; choose another --split")
    image_ids = [prep.dataset.image_ids[i] for i in idx]
    trained = check_unseen(source, spec, image_ids, split=split, allow=allow_training_images)
    source = checked(source, prep.images[idx[:32]], device=device)
    info = source.info
    model: nn.Module = defence_spec(source) if defence_spec is not None else source
    suffix = ("-tta" if tta else "") + (f"-{defence_spec.name}{defence_spec.value:g}" if defence_spec else "")
    out = Path(out) if out else Path(spec.model).parent / f"eval-{split}{suffix}"
    run = Run(
        out,
        command="evaluate",
        config={
            "checkpoint": str(checkpoint),
            **spec.config(),
            "data": data,
            "split": split,
            "split_file": split_file,
            "tta": tta,
            "ci_method": ci_method,
            "external_data": external,
            "defence": str(defence_spec) if defence_spec is not None else None,
            "allow_training_images": allow_training_images,
        },
        data_fingerprint=prep.dataset.fingerprint,
        fingerprints={"model": info.fingerprint},
    )
    torch.manual_seed(0)  # a randomised defence draws the same noise on every run
    with run.stage("predict"):
        logits = predict_logits(
            model, prep.images, indices=idx, device=device, tta=tta, batch_size=batch_size, progress=True
        )
    probs = torch.softmax(logits, 1).numpy()
    labels = to_model[prep.dataset.labels[idx]]
    report = classification_metrics(labels, probs, classes=info.classes, ci_method=ci_method)  # type: ignore[arg-type]
    write_classification_outputs(
        report,
        out,
        image_ids=image_ids,
        labels=labels,
        probs=probs,
        classes=info.classes,
    )
    run.update(model=info.to_dict(), queries=source.counter.snapshot())
    # scores on images the checkpoint was trained on are no held-out measure: the manifest counts them
    run.finish(n_images=int(len(idx)), training_images_evaluated=trained)
    log.info("wrote %s", out)
    return report


def _training_images(split_file: str, image_ids: list[str]) -> int:
    """How many of ``image_ids`` the checkpoint's split file puts in train or val."""
    frame = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    trained = set(frame.loc[frame["split"].isin(["train", "val"]), "image_id"])
    return sum(i in trained for i in image_ids)

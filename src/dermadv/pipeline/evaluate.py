"""``dermadv evaluate``: a classifier checkpoint on a split, into a run folder (metrics, per class, predictions)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dermadv import distributed as dd
from dermadv.data.load import prepare, split_beside
from dermadv.evaluation.metrics import ClassificationReport, classification_metrics, write_classification_outputs
from dermadv.models.checkpoints import check_fits, load_checkpoint
from dermadv.runs import Run
from dermadv.training.classifier import predict_logits

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    split_file: str | None = None,
    out: str | Path | None = None,
    tta: bool = False,
    ci_method: str = "wald",
    batch_size: int = 256,
) -> ClassificationReport:
    """Predict ``split`` with the checkpoint and write metrics/predictions into ``out``.

    The split defaults to the ``split.csv`` written by the training run, so the test images are the
    ones the classifier never saw.
    """
    checkpoint = Path(checkpoint)
    device = dd.default_device()
    model, meta = load_checkpoint(checkpoint, device=device)
    split_file = split_file or split_beside(checkpoint)
    prep = prepare(data, image_size=meta.image_size, split_file=split_file)
    check_fits(meta, prep.dataset.classes, path=checkpoint)
    out = Path(out) if out else checkpoint.parent / f"eval-{split}{'-tta' if tta else ''}"
    run = Run(
        out,
        command="evaluate",
        config={
            "checkpoint": str(checkpoint),
            "data": data,
            "split": split,
            "split_file": split_file,
            "tta": tta,
            "ci_method": ci_method,
        },
        data_fingerprint=prep.dataset.fingerprint,
    )
    idx = prep.indices(split)
    with run.stage("predict"):
        logits = predict_logits(
            model, prep.images, indices=idx, device=device, tta=tta, batch_size=batch_size, progress=True
        )
    probs = torch.softmax(logits, 1).numpy()
    labels = prep.dataset.labels[idx]
    report = classification_metrics(labels, probs, classes=meta.classes, ci_method=ci_method)  # type: ignore[arg-type]
    write_classification_outputs(
        report,
        out,
        image_ids=[prep.dataset.image_ids[i] for i in idx],
        labels=labels,
        probs=probs,
        classes=meta.classes,
    )
    run.finish(n_images=int(len(idx)))
    log.info("wrote %s", out)
    return report

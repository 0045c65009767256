"""Export a model to TorchScript or ONNX, so that dermadv's own classifiers can be audited as others' are."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dermadv.errors import ConfigError
from dermadv.runs import atomic_path

#: the opset onnx2torch converts in full (it lags onnxruntime; a newer one is still audited black-box)
ONNX_OPSET = 17


def export_model(
    model: nn.Module, path: str | os.PathLike[str], *, image_size: tuple[int, int], input_name: str = "input"
) -> Path:
    """Write ``model`` (images in [0, 1], N×3×H×W -> logits) as ``.onnx`` (dynamic batch) or TorchScript (``.pt``)."""
    path = Path(path)
    model = model.eval().cpu()
    example = torch.rand(1, 3, *image_size)
    with atomic_path(path) as tmp:
        if path.suffix == ".onnx":
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[input_name],
                output_names=["logits"],
                dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        elif path.suffix in (".pt", ".ts", ".torchscript"):
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(tmp))
        else:
            raise ConfigError(f"export to .onnx or .pt (TorchScript); got {path.name}")
    return path

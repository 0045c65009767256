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


def static_same_padding(model: nn.Module, image_size: tuple[int, int]) -> nn.Module:
    """A copy of ``model`` whose TensorFlow-style "same" convolutions (timm's ``Conv2dSame``, in the ``tf_``
    EfficientNets) pad by fixed amounts for ``image_size``: their size-dependent padding exports as a shape
    subgraph that onnx2torch cannot convert, so the ONNX file would offer no gradients."""
    import copy

    try:
        from timm.layers import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:
        return model
    model = copy.deepcopy(model)
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, inp, name=name: sizes.__setitem__(name, tuple(inp[0].shape[-2:])))
        for name, m in model.named_modules()
        if isinstance(m, Conv2dSame)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, *image_size))
    for h in hooks:
        h.remove()
    for name, (ih, iw) in sizes.items():
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        ph = get_same_padding(ih, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(iw, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        plain.load_state_dict(conv.state_dict())
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), plain))
    return model


def export_model(
    model: nn.Module, path: str | os.PathLike[str], *, image_size: tuple[int, int], input_name: str = "input"
) -> Path:
    """Write ``model`` (images in [0, 1], N×3×H×W -> logits) as ``.onnx`` (dynamic batch) or TorchScript (``.pt``,
    with a model card beside it naming the input size)."""
    path = Path(path)
    original = model.eval().cpu()
    model = static_same_padding(original, image_size).eval()
    example = torch.rand(2, 3, *image_size)
    with torch.no_grad():
        diff = float((model(example) - original(example)).abs().max())
    if diff > 1e-4:
        raise ConfigError(f"static padding changed the model's logits by {diff:.2e}; export at its own input size")
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
                # batch norm stays a node of its own: folded into the convolutions, the logits agree to 1e-6 but
                # PGD's signed gradients flip where they are near zero (onnxruntime fuses it again when it runs)
                do_constant_folding=False,
                dynamo=False,
            )
        elif path.suffix in (".pt", ".ts", ".torchscript"):
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(tmp))
        else:
            raise ConfigError(f"export to .onnx or .pt (TorchScript); got {path.name}")
    if path.suffix != ".onnx":  # an ONNX file declares its input size; TorchScript does not, so a card says it
        from dermadv.models.card import ModelCard, save_card

        save_card(ModelCard(input_size=(int(image_size[0]), int(image_size[1]))), str(path) + ".card.yaml")
    return path

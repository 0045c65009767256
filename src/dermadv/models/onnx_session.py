"""An ONNX file in onnxruntime on the CPU, as others export them.

The graph says what its one image input takes: the element type (float, float16, double or uint8) and the batch
dimension. ``torch.onnx.export`` without ``dynamic_axes`` fixes the batch at the example's size (often 1); such a
model is run in slices of that size, the last slice padded with copies of its last image and the padding's answers
dropped. Torch-free: ``dermadv model serve`` uses it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from dermadv.errors import ModelError

#: onnxruntime's element types and the v2 datatypes they travel as.
V2_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}
NUMPY_DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}
#: the input element types an image can be fed as
IMAGE_DATATYPES = ("FP32", "FP64", "FP16", "UINT8")

T = TypeVar("T")


def padded_slices(x: T, size: int, concat: Callable[[list[T]], T]) -> Iterator[tuple[T, int]]:
    """``x`` (numpy array or tensor) in slices of exactly ``size`` rows, each with how many of its rows are real.

    The last slice is padded with copies of its last row; drop the padding's answers (``answer[:k]``), and for a
    model that treats the images of a batch independently the answers equal one call on all of ``x``.
    """
    n = len(x)  # type: ignore[arg-type]
    for start in range(0, n, size):
        part = x[start : start + size]  # type: ignore[index]
        k = len(part)
        if k < size:
            part = concat([part, *[part[-1:]] * (size - k)])
        yield part, k


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


class OnnxSession:
    """One onnxruntime session of an image model: its input's name, datatype and fixed batch size (or None)."""

    def __init__(self, path: Path, *, threads: int, inter_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ModelError(
                f"ONNX model {path} does not exist; export one with `dermadv model export` or torch.onnx.export"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise ModelError(
                f"cannot load ONNX model {path}: {first_line(exc)}; check the file or export it again"
            ) from None
        self.path = path
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelError(
                f"{path.name} takes {len(inputs)} inputs ({names}); dermadv feeds one image tensor: "
                "export the model with the image as its only input"
            )
        self.input = inputs[0]
        self.datatype = V2_DATATYPES.get(self.input.type, self.input.type)
        if self.datatype not in IMAGE_DATATYPES:
            raise ModelError(
                f"{path.name}'s input {self.input.name!r} is {self.input.type}; dermadv feeds images as float, "
                "float16, double or uint8 tensors: export the model with such an input"
            )
        batch = self.input.shape[0] if self.input.shape else None
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        outputs = self.session.get_outputs()
        self.output_names = [o.name for o in outputs]
        #: the output holding the scores: one named "logits", else the first of a float type
        floats = [i for i, o in enumerate(outputs) if V2_DATATYPES.get(o.type) in ("FP32", "FP64", "FP16")]
        self.scores_at = self.output_names.index("logits") if "logits" in self.output_names else (floats or [0])[0]

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for ``images`` (cast to the input's datatype; uint8 rounded and clipped)."""
        if self.datatype == "UINT8" and images.dtype != np.uint8:
            images = np.clip(np.rint(images), 0, 255)
        x: np.ndarray = np.ascontiguousarray(images, dtype=NUMPY_DTYPES[self.datatype])
        if self.fixed_batch is None:
            return self._run(x)
        if len(x) == 0:  # the shapes of an answer, from one padded slice
            return [out[:0] for out in self._run(np.zeros((self.fixed_batch, *x.shape[1:]), dtype=x.dtype))]
        answers = [
            [out[:k] for out in self._run(part)] for part, k in padded_slices(x, self.fixed_batch, np.concatenate)
        ]
        return [np.concatenate(outputs) for outputs in zip(*answers, strict=True)]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            return list(self.session.run(None, {self.input.name: x}))
        except Exception as exc:  # onnxruntime's InvalidArgument, Fail, … are not exported types
            raise ModelError(
                f"onnxruntime cannot run {self.path.name} on a {x.dtype} batch of shape {list(x.shape)} "
                f"(the model's input is {self.input.type} {self.input.shape}): {first_line(exc)}; "
                "check the card's input_size and layout"
            ) from None

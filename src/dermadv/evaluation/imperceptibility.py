"""How visible a perturbation is, per image, from the saved 8-bit images: L∞, L2, L0, PSNR, SSIM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from dermadv.errors import DataError

#: names of the per-image measures, in column order
MEASURES: tuple[str, ...] = ("linf_255", "l2", "l0", "psnr", "ssim")


@dataclass(frozen=True)
class PerturbationSizes:
    """Per-image measures, each an array of length N.

    ``linf_255``: max |adv - clean| in 8-bit steps (integer); ``l2``: Euclidean norm of the difference
    on the [0, 1] scale over all H×W×3 values; ``l0``: number of pixel positions where any channel
    changed; ``psnr``: dB, ``inf`` for identical images; ``ssim``: mean SSIM over the three channels
    (NaN for images under 3 px on a side, where SSIM is undefined).
    """

    linf_255: np.ndarray
    l2: np.ndarray
    l0: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray

    def __len__(self) -> int:
        return int(self.linf_255.shape[0])

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per image (``psnr`` stays ``inf`` for identical images)."""
        return [
            {
                "linf_255": int(self.linf_255[i]),
                "l2": float(self.l2[i]),
                "l0": int(self.l0[i]),
                "psnr": float(self.psnr[i]),
                "ssim": float(self.ssim[i]),
            }
            for i in range(len(self))
        ]

    @staticmethod
    def concat(parts: Sequence[PerturbationSizes]) -> PerturbationSizes:
        if not parts:
            return PerturbationSizes(*(np.zeros(0) for _ in MEASURES))
        return PerturbationSizes(*(np.concatenate([getattr(p, m) for p in parts]) for m in MEASURES))


def _ssim(clean: np.ndarray, adv: np.ndarray) -> float:
    """SSIM of Wang et al. (2004), scikit-image defaults (7×7 uniform window), narrowed for small images."""
    side = min(clean.shape[0], clean.shape[1])
    win_size = min(7, side if side % 2 else side - 1)
    if win_size < 3:
        return float("nan")
    return float(structural_similarity(clean, adv, channel_axis=-1, data_range=255, win_size=win_size))


def _batches(
    clean_images: np.ndarray | Sequence[np.ndarray], adv_images: np.ndarray | Sequence[np.ndarray], chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield equally shaped N×H×W×3 uint8 chunks; images of other sizes come one at a time."""
    if len(clean_images) != len(adv_images):
        raise DataError(f"clean_images has {len(clean_images)} images but adv_images has {len(adv_images)}")
    if isinstance(clean_images, np.ndarray) and isinstance(adv_images, np.ndarray):
        if clean_images.ndim == 3:
            clean_images, adv_images = clean_images[None], adv_images[None]
        # keep each int16 difference array near 128 MB whatever the image size
        chunk = max(1, min(chunk, 2**26 // max(1, int(np.prod(clean_images.shape[1:])))))
        for start in range(0, clean_images.shape[0], chunk):
            yield clean_images[start : start + chunk], adv_images[start : start + chunk]
        return
    for start in range(0, len(clean_images), chunk):
        c_part, a_part = list(clean_images[start : start + chunk]), list(adv_images[start : start + chunk])
        if len({c.shape for c in c_part} | {a.shape for a in a_part}) == 1:
            yield np.stack(c_part), np.stack(a_part)
        else:
            for c, a in zip(c_part, a_part, strict=True):
                yield c[None], a[None]


def measure_perturbations(
    clean_images: np.ndarray | Sequence[np.ndarray],
    adv_images: np.ndarray | Sequence[np.ndarray],
    *,
    chunk: int = 256,
) -> PerturbationSizes:
    """Per-image L∞ (1/255 units), L2 ([0, 1] scale), L0, PSNR and SSIM of 8-bit image pairs.

    Args:
        clean_images, adv_images: uint8 arrays N×H×W×3 (or one H×W×3 image), or sequences of
            H×W×3 uint8 images that may differ in size between pairs.
        chunk: most images per vectorised step (fewer for large images, to bound memory).

    PSNR is 10·log10(255² / MSE) as in ``skimage.metrics.peak_signal_noise_ratio`` with
    ``data_range=255``, ``inf`` for identical images; SSIM is ``skimage.metrics.structural_similarity``
    (Wang et al. 2004) with ``channel_axis=-1, data_range=255``.
    """
    parts = []
    for clean, adv in _batches(clean_images, adv_images, chunk):
        if clean.dtype != np.uint8 or adv.dtype != np.uint8:
            raise DataError(f"images must be uint8 (the saved 8-bit images); got {clean.dtype} and {adv.dtype}")
        if clean.shape != adv.shape or clean.ndim != 4 or clean.shape[-1] != 3:
            raise DataError(f"clean and adversarial images must both be N×H×W×3; got {clean.shape} and {adv.shape}")
        diff = adv.astype(np.int16) - clean.astype(np.int16)
        flat = diff.reshape(diff.shape[0], -1)
        linf = np.abs(flat).max(axis=1).astype(np.int64)
        sq = np.einsum("ij,ij->i", flat, flat, dtype=np.int64).astype(np.float64)
        l0 = (diff != 0).any(axis=-1).reshape(diff.shape[0], -1).sum(axis=1).astype(np.int64)
        mse = sq / flat.shape[1]
        with np.errstate(divide="ignore"):
            psnr = np.where(mse > 0, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-300)), np.inf)
        ssim = np.array([_ssim(c, a) for c, a in zip(clean, adv, strict=True)], dtype=np.float64)
        parts.append(PerturbationSizes(linf, np.sqrt(sq) / 255.0, l0, psnr, ssim))
    return PerturbationSizes.concat(parts)


def summarise(values: np.ndarray | Sequence[float]) -> dict[str, float | int]:
    """Mean, median, min and max over the finite values; ``n_nonfinite`` counts those left out.

    For PSNR the left-out values are identical images (``inf``); see :func:`summarise_sizes`.
    """
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    nan = float("nan")
    return {
        "n": int(arr.size),
        "n_nonfinite": int(arr.size - finite.size),
        "mean": float(finite.mean()) if finite.size else nan,
        "median": float(np.median(finite)) if finite.size else nan,
        "min": float(finite.min()) if finite.size else nan,
        "max": float(finite.max()) if finite.size else nan,
    }


def summarise_sizes(sizes: PerturbationSizes) -> dict[str, dict[str, float | int | str]]:
    """:func:`summarise` for every measure; PSNR's summary names its excluded images ``n_identical``."""
    out: dict[str, dict[str, float | int | str]] = {}
    for m in MEASURES:
        summary: dict[str, float | int | str] = dict(summarise(getattr(sizes, m)))
        if m == "psnr":
            summary["n_identical"] = summary.pop("n_nonfinite")
            summary["note"] = "statistics over images that differ; identical images have infinite PSNR"
        elif m == "ssim":
            summary["n_undefined"] = summary.pop("n_nonfinite")
        else:
            summary.pop("n_nonfinite")
        out[m] = summary
    return out

"""Perturbation sizes against scikit-image and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dermadv.errors import DataError
from dermadv.evaluation.imperceptibility import measure_perturbations, summarise, summarise_sizes


def _pair(rng: np.random.Generator, shape: tuple[int, ...], amplitude: int = 4) -> tuple[np.ndarray, np.ndarray]:
    clean = rng.integers(0, 256, shape, dtype=np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-amplitude, amplitude + 1, shape), 0, 255).astype(np.uint8)
    return clean, adv


@pytest.mark.parametrize("shape", [(6, 64, 64, 3), (4, 20, 30, 3), (3, 5, 5, 3), (2, 4, 9, 3)])
def test_per_image_values_equal_references(shape):
    rng = np.random.default_rng(shape[1])
    clean, adv = _pair(rng, shape)
    sizes = measure_perturbations(clean, adv)
    side = min(shape[1], shape[2])
    win = min(7, side if side % 2 else side - 1)
    for i in range(shape[0]):
        diff = adv[i].astype(float) - clean[i].astype(float)
        assert sizes.linf_255[i] == np.abs(diff).max()
        assert sizes.l2[i] == pytest.approx(np.linalg.norm(diff / 255.0))
        assert sizes.l0[i] == np.count_nonzero(np.any(diff != 0, axis=-1))
        assert sizes.psnr[i] == pytest.approx(peak_signal_noise_ratio(clean[i], adv[i], data_range=255))
        ref = structural_similarity(clean[i], adv[i], channel_axis=-1, data_range=255, win_size=win)
        assert sizes.ssim[i] == pytest.approx(ref)
    assert sizes.linf_255.dtype.kind == "i" and sizes.l0.dtype.kind == "i"


def test_identical_images():
    clean = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    sizes = measure_perturbations(clean, clean.copy())
    assert sizes.l0.tolist() == [0, 0]
    assert sizes.linf_255.tolist() == [0, 0]
    assert sizes.l2.tolist() == [0.0, 0.0]
    assert np.isinf(sizes.psnr).all()
    assert sizes.ssim == pytest.approx([1.0, 1.0])


def test_one_pixel_changed_by_three():
    clean = np.full((16, 16, 3), 100, dtype=np.uint8)
    adv = clean.copy()
    adv[5, 7, 1] += 3
    sizes = measure_perturbations(clean, adv)  # a single H×W×3 image is accepted too
    assert (sizes.linf_255[0], sizes.l0[0]) == (3, 1)
    assert sizes.l2[0] == pytest.approx(3 / 255)
    adv[5, 7, 2] -= 2  # a second channel of the same pixel: still one changed pixel
    assert measure_perturbations(clean, adv).l0[0] == 1


def test_sequences_of_mixed_sizes_and_chunking_agree():
    rng = np.random.default_rng(2)
    pairs = [_pair(rng, (12, 12, 3)) for _ in range(5)] + [_pair(rng, (9, 15, 3)) for _ in range(4)]
    clean, adv = [p[0] for p in pairs], [p[1] for p in pairs]
    mixed = measure_perturbations(clean, adv, chunk=3)
    one_by_one = [measure_perturbations(c, a) for c, a in pairs]
    for m in ("linf_255", "l2", "l0", "psnr", "ssim"):
        np.testing.assert_allclose(getattr(mixed, m), [getattr(s, m)[0] for s in one_by_one])
    stacked_clean, stacked_adv = np.stack(clean[:5]), np.stack(adv[:5])
    np.testing.assert_allclose(
        measure_perturbations(stacked_clean, stacked_adv, chunk=2).psnr,
        measure_perturbations(stacked_clean, stacked_adv).psnr,
    )


def test_tiny_images_have_undefined_ssim():
    rng = np.random.default_rng(3)
    clean, adv = _pair(rng, (2, 2, 2, 3))
    assert np.isnan(measure_perturbations(clean, adv).ssim).all()


@pytest.mark.parametrize(
    ("clean", "adv", "match"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 9, 3), np.uint8), "N×H×W×3"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8, 3), np.uint8), "adv_images has 3"),
    ],
)
def test_bad_inputs(clean, adv, match):
    with pytest.raises(DataError, match=match):
        measure_perturbations(clean, adv)


def test_summaries_leave_out_infinite_psnr():
    assert summarise([1.0, 3.0, np.inf, 8.0]) == {
        "n": 4,
        "n_nonfinite": 1,
        "mean": 4.0,
        "median": 3.0,
        "min": 1.0,
        "max": 8.0,
    }
    empty = summarise([np.inf])
    assert np.isnan(empty["mean"]) and empty["n_nonfinite"] == 1

    clean = np.full((3, 8, 8, 3), 50, dtype=np.uint8)
    adv = clean.copy()
    adv[0, 0, 0, 0] = 52
    adv[1, 1, 1, :] = 53
    summary = summarise_sizes(measure_perturbations(clean, adv))
    assert summary["psnr"]["n_identical"] == 1
    assert summary["psnr"]["n"] == 3
    assert summary["linf_255"]["max"] == 3 and summary["linf_255"]["min"] == 0
    assert summary["l0"]["mean"] == pytest.approx(2 / 3)
    assert np.isfinite(summary["psnr"]["mean"])


def test_a_test_split_is_measured_image_by_image():
    rng = np.random.default_rng(4)
    clean, adv = _pair(rng, (1500, 64, 64, 3), amplitude=2)
    sizes = measure_perturbations(clean, adv)
    assert len(sizes) == 1500
    assert sizes.rows()[7] == measure_perturbations(clean[7:8], adv[7:8]).rows()[0]  # chunking changes nothing

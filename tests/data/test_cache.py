"""Decode-once cache: equal to decoding directly, read back without any JPEG decode, keyed by content and size."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv.data import cache
from dermadv.data.cache import decode_image, decoded_images, stored_size
from dermadv.data.dataset import ImageSet
from dermadv.data.ham10000 import load_ham10000

SIZE = (24, 32)


@pytest.fixture(scope="module")
def dataset(synthetic_root: Path) -> ImageSet:
    return load_ham10000(synthetic_root)


def reference_decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Plain Pillow, independent of dermadv: RGB, antialiased bilinear resize to (H, W)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(rgb)


def cache_files(root: Path) -> list[Path]:
    return sorted((root / "decoded").glob("*.npy")) if (root / "decoded").exists() else []


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached read must not decode any image")

    monkeypatch.setattr(cache, "decode_image", refuse)
    monkeypatch.setattr(Image, "open", refuse)


def test_cache_equals_direct_decoding(dataset: ImageSet, dermadv_cache: Path) -> None:
    images = decoded_images(dataset, SIZE, progress=False)
    assert images.shape == (len(dataset), *SIZE, 3) and images.dtype == np.uint8
    assert dataset.paths is not None
    for i in range(0, len(dataset), 17):
        np.testing.assert_array_equal(images[i], reference_decode(dataset.paths[i], SIZE))
    direct = np.stack([decode_image(p, SIZE) for p in dataset.paths])
    np.testing.assert_array_equal(images, direct)
    uncached = decoded_images(dataset, SIZE, cache=False, progress=False)
    np.testing.assert_array_equal(uncached, direct)


def test_second_call_reads_the_memmap(dataset: ImageSet, dermadv_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = np.array(decoded_images(dataset, SIZE, progress=False))
    files = cache_files(dermadv_cache)
    assert files == [cache.cache_path(dataset, SIZE)]
    forbid_decoding(monkeypatch)
    second = decoded_images(dataset, SIZE, progress=False)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, first)


def test_keyed_by_size_and_fingerprint(dataset: ImageSet, dermadv_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int] | None] = []
    original = cache.decode_image

    def counting(path: Path, size: tuple[int, int] | None) -> np.ndarray:
        calls.append(size)
        return original(path, size)

    monkeypatch.setattr(cache, "decode_image", counting)
    small = decoded_images(dataset, SIZE, progress=False)
    larger = decoded_images(dataset, (30, 40), progress=False)
    assert calls.count(SIZE) == len(dataset) and calls.count((30, 40)) == len(dataset)
    assert larger.shape[1:3] == (30, 40) and small.shape[1:3] == SIZE
    assert len(cache_files(dermadv_cache)) == 2
    decoded_images(dataset, [SIZE[0], SIZE[1]], progress=False)  # a list names the same size
    assert len(calls) == 2 * len(dataset)
    # other content never reads this set's cache
    other = replace(dataset, content_fingerprint="0" * 16)
    decoded_images(other, SIZE, progress=False)
    assert len(calls) == 3 * len(dataset) and len(cache_files(dermadv_cache)) == 3


def test_no_size_means_stored_size(dataset: ImageSet, dermadv_cache: Path) -> None:
    assert stored_size(dataset) == (60, 80)
    images = decoded_images(dataset, None, progress=False)
    assert images.shape == (len(dataset), 60, 80, 3)
    assert dataset.paths is not None
    with Image.open(dataset.paths[3]) as im:
        np.testing.assert_array_equal(images[3], np.asarray(im.convert("RGB")))


def test_cache_false_writes_nothing(dataset: ImageSet, dermadv_cache: Path) -> None:
    decoded_images(dataset, SIZE, cache=False, progress=False)
    assert not cache_files(dermadv_cache)


def test_stale_cache_of_another_shape_is_rebuilt(dataset: ImageSet, dermadv_cache: Path) -> None:
    path = cache.cache_path(dataset, SIZE)
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros((3, *SIZE, 3), dtype=np.uint8))
    images = decoded_images(dataset, SIZE, progress=False)
    assert images.shape == (len(dataset), *SIZE, 3)
    assert images.any()
    assert np.load(path, mmap_mode="r").shape == images.shape


@pytest.mark.parametrize("keep", [0, 5, 60, 1000, -100], ids=lambda n: f"first {n} bytes" if n >= 0 else "all but 100")
def test_a_truncated_cache_is_rebuilt_with_a_warning(
    dataset: ImageSet, dermadv_cache: Path, caplog: pytest.LogCaptureFixture, keep: int
) -> None:
    """A cache file cut short (a full disk, a killed copy): one warning naming it, then decoded again, never a
    traceback or an array of the wrong length."""
    expected = np.array(decoded_images(dataset, SIZE, progress=False))
    path = cache.cache_path(dataset, SIZE)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with caplog.at_level("WARNING", logger="dermadv.data.cache"):
        images = decoded_images(dataset, SIZE, progress=False)
    np.testing.assert_array_equal(images, expected)
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage() and "rebuild" in r.getMessage()]
    assert path.read_bytes() == data and cache_files(dermadv_cache) == [path]


def test_a_replaced_image_is_decoded_again(synthetic_root: Path, tmp_path: Path, dermadv_cache: Path) -> None:
    """Same file names and sizes, other bytes: the cache must not hand back the old pixels."""
    import shutil

    root = tmp_path / "set"
    shutil.copytree(synthetic_root, root)
    before = load_ham10000(root)
    assert before.paths is not None
    old = np.array(decoded_images(before, SIZE, progress=False))
    first = before.paths[0]
    # another valid JPEG of the same byte size: the image flipped, coarser, padded after its end marker
    size = first.stat().st_size
    with Image.open(first) as im:
        flipped = im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    flipped.save(buffer, format="JPEG", quality=20)
    data = buffer.getvalue()
    assert len(data) < size
    first.write_bytes(data + b"\0" * (size - len(data)))
    after = load_ham10000(root)
    assert after.fingerprint == before.fingerprint  # ids, labels and file sizes are unchanged
    new = decoded_images(after, SIZE, progress=False)
    assert not np.array_equal(new[0], old[0])
    np.testing.assert_array_equal(new[1:], old[1:])


def test_random_bytes_in_place_of_an_image_are_one_clear_error(
    synthetic_root: Path, tmp_path: Path, dermadv_cache: Path
) -> None:
    import shutil

    from dermadv.errors import DataError

    root = tmp_path / "set"
    shutil.copytree(synthetic_root, root)
    decoded_images(load_ham10000(root), SIZE, progress=False)
    path = sorted(root.rglob("*.jpg"))[5]
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="cannot decode image") as info:
        decoded_images(load_ham10000(root), SIZE, progress=False)
    assert path.name in str(info.value) and "\n" not in str(info.value)


def test_array_sets_are_resized_without_cache(dermadv_cache: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(5, 28, 28, 3), dtype=np.uint8)
    ds = ImageSet("dermamnist", None, [str(i) for i in range(5)], np.zeros(5, dtype=np.int64), list("abcde"))
    ds = replace(ds, arrays=arrays)
    assert decoded_images(ds, (28, 28)) is arrays
    resized = decoded_images(ds, (14, 14))
    expected = np.asarray(Image.fromarray(arrays[2]).resize((14, 14), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized[2], expected)
    assert not cache_files(dermadv_cache)


def test_every_image_mode_becomes_8_bit_rgb(tmp_path: Path) -> None:
    """Grey, palette, RGBA and CMYK as Pillow converts them; 16-bit grey scaled by 1/257, not clipped at 255."""
    from dermadv.errors import DataError

    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    for mode, suffix in (("L", ".png"), ("P", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg")):
        path = tmp_path / f"{mode}{suffix}"
        image.convert(mode).save(path)
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB"))
        assert np.array_equal(decode_image(path, None), expected), mode
    grey16 = rgb[..., 0].astype(np.uint16) * 257 + np.where(rgb[..., 0] < 255, 100, 0).astype(np.uint16)
    assert grey16.max() <= 65535 and (grey16 // 257 == rgb[..., 0]).all()  # the 8-bit values, in 16 bits
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode.startswith("I")  # Pillow opens it as I;16 (or I)
    decoded = decode_image(tmp_path / "grey16.png", None)
    assert decoded.shape == (12, 16, 3) and np.array_equal(decoded[..., 0], rgb[..., 0])
    assert np.array_equal(decoded[..., 0], decoded[..., 2])
    Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match="floating-point image"):
        decode_image(tmp_path / "float.tiff", None)


def test_cache_files_name_the_decoder(dataset: ImageSet, dermadv_cache: Path) -> None:
    decoded_images(dataset, SIZE, progress=False)
    assert [p.name.rsplit("-", 1)[-1] for p in cache_files(dermadv_cache)] == [f"d{cache.DECODER}.npy"]

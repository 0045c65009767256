"""Study images: stored PNGs whose size and non-pixel bytes depend on width and height only; one mtime."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermadv.errors import DataError
from dermadv.observer.images import (
    PNG_SIGNATURE,
    check_same_size,
    encode_stored_png,
    stored_png_size,
    write_study_images,
)
from dermadv.observer.study import load_answer_key


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], len(PNG_SIGNATURE)
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        assert int.from_bytes(png[pos + 8 + length : pos + 12 + length], "big") == zlib.crc32(kind + data)
        out.append((kind, data))
        pos += 12 + length
    return out


@pytest.mark.parametrize("shape", [(1, 1), (24, 32), (60, 80), (97, 211), (450, 600)])
def test_size_and_layout_depend_on_width_and_height_only(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    contents = [
        np.zeros((*shape, 3), np.uint8),
        np.full((*shape, 3), 255, np.uint8),
        rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
        np.clip(rng.normal(128, 2, (*shape, 3)), 0, 255).astype(np.uint8),
    ]
    encoded = [encode_stored_png(pixels) for pixels in contents]
    assert {len(png) for png in encoded} == {stored_png_size(*shape)}
    # outside the pixel rows, only the checksums of those rows may differ
    layouts = {
        tuple((kind, len(data), data if kind != b"IDAT" else data[:2]) for kind, data in chunks(png)) for png in encoded
    }
    assert len(layouts) == 1
    assert [kind for kind, _ in chunks(encoded[0])] == [b"IHDR", b"IDAT", b"IEND"]  # no text, time or gamma
    for pixels, png in zip(contents, encoded, strict=True):
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.mode == "RGB" and not im.info
            np.testing.assert_array_equal(np.asarray(im), pixels)


def test_compressed_png_would_leak() -> None:
    """The control: what the stored encoding avoids. Noise compresses badly, so a perturbed PNG is larger."""
    rng = np.random.default_rng(0)
    clean = np.full((60, 80, 3), 128, np.uint8)
    adv = np.clip(clean + rng.integers(-2, 3, clean.shape), 0, 255).astype(np.uint8)

    def compressed(pixels: np.ndarray) -> int:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
        return len(buf.getvalue())

    assert compressed(adv) > compressed(clean)
    assert len(encode_stored_png(adv)) == len(encode_stored_png(clean))


def test_bad_pixels_are_refused() -> None:
    with pytest.raises(ValueError, match="H×W×3"):
        encode_stored_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encode_stored_png(np.zeros((4, 4, 3), np.float32))


def test_written_with_one_mtime(tmp_path: Path) -> None:
    sources = []
    for i in range(6):
        sources.append(tmp_path / f"src{i}.png")
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(sources[-1])
    jobs = [(src, tmp_path / f"out{i}.png") for i, src in enumerate(sources)]
    write_study_images(jobs, mtime=1_700_000_000)
    assert {os.stat(dst).st_mtime for _, dst in jobs} == {1_700_000_000}
    assert {dst.stat().st_size for _, dst in jobs} == {stored_png_size(8, 8)}


def test_pairs_of_different_sizes_are_refused(tmp_path: Path) -> None:
    Image.new("RGB", (32, 24)).save(tmp_path / "clean.png")
    Image.new("RGB", (32, 25)).save(tmp_path / "adv.png")
    with pytest.raises(DataError, match="same size"):
        check_same_size(tmp_path / "clean.png", tmp_path / "adv.png")


@pytest.mark.parametrize("design", ["single", "2afc"])
def test_a_study_looks_the_same_from_outside(make_study, design: str) -> None:
    """Every image file of a study: one byte size, one mtime, the same bytes outside the pixel rows."""
    study = make_study(n=12, design=design, perturbed_share=0.5)
    files = sorted((study.path / "images").glob("*.png"))
    assert len(files) == (12 if design == "single" else 24)
    assert len({f.stat().st_size for f in files}) == 1
    assert len({f.stat().st_mtime for f in files}) == 1
    headers = {bytes(f.read_bytes()[: len(PNG_SIGNATURE) + 8 + 13 + 4 + 8 + 2]) for f in files}  # to the zlib header
    assert len(headers) == 1
    key = load_answer_key(study.path)
    assert len({e.condition or e.altered_side for e in key.values()}) == 2  # both conditions are there


def test_write_order_is_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are written in random order, so creation and change times do not follow the plan."""
    source = tmp_path / "src.png"
    Image.new("RGB", (4, 4)).save(source)
    jobs = [(source, tmp_path / f"{i:02d}.png") for i in range(24)]
    touched: list[str] = []
    real_utime = os.utime
    monkeypatch.setattr(os, "utime", lambda path, times: (touched.append(Path(path).name), real_utime(path, times)))
    orders = []
    for _ in range(2):
        touched.clear()
        write_study_images(jobs, mtime=1_700_000_000)
        assert sorted(touched) == [dst.name for _, dst in jobs]  # each file once
        orders.append(list(touched))
    # each equality below happens by chance with probability 1/24!
    assert orders[0] != [dst.name for _, dst in jobs] and orders[0] != orders[1]

"""worker.png_encode: the generation worker's PNG writer gives back exactly the pixels, in one part or many."""

from __future__ import annotations

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from worker.png_encode import PART_BYTES, adler32_combine, choose_filter, encode_png


def decoded(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    img.load()  # checks every chunk's CRC and the zlib stream's Adler-32
    assert (img.format, img.mode) == ("PNG", "RGB")
    return np.asarray(img)


def scenes(h: int, w: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y) % 256], -1)
    flat = np.full((h, w, 3), 200)
    flat[h // 4 : h // 2, w // 4 : w // 2] = (215, 35, 35)
    return {
        "noise": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
        "smooth": smooth.astype(np.uint8),
        "flat": flat.astype(np.uint8),
    }


@pytest.mark.parametrize("h,w", [(1, 1), (17, 33), (64, 96)])
def test_small_images_round_trip_exactly(h, w):
    for name, arr in scenes(h, w).items():
        assert np.array_equal(decoded(encode_png(Image.fromarray(arr))), arr), name


def test_a_large_image_deflated_in_parallel_parts_round_trips_exactly():
    h, w = 1024, 768  # 2.4 MB of rows: four parts of at least PART_BYTES
    assert (1 + 3 * w) * h >= 2 * PART_BYTES
    with ThreadPoolExecutor(4) as pool:
        for name, arr in scenes(h, w).items():
            one = encode_png(Image.fromarray(arr))
            parts = encode_png(Image.fromarray(arr), pool, workers=4)
            assert np.array_equal(decoded(parts), arr), name
            assert one != parts  # the parts' sync flushes differ from one stream: the parallel path really ran
            assert len(parts) <= len(one) * 1.05 + 1024, name  # each part starts a new dictionary


def test_the_image_takes_the_cheapest_filter():
    """A flat image keeps no filter, a ramp along the rows takes Sub, rows repeating the row above take Up."""
    x, row = np.arange(80)[None, :, None], np.arange(64)[:, None, None]
    ramp = np.broadcast_to(3 * x + 50 * row, (64, 80, 3)).astype(np.uint8)  # Sub: 3 everywhere; Up: 50
    stripes = np.tile(np.random.default_rng(1).integers(0, 256, (1, 80, 3), dtype=np.uint8), (64, 1, 1))
    flat = np.zeros((64, 80, 3), np.uint8)
    assert [choose_filter(a.reshape(64, -1)) for a in (flat, ramp, stripes)] == [0, 1, 2]
    for arr in (ramp, stripes):
        assert np.array_equal(decoded(encode_png(Image.fromarray(arr))), arr)


def test_adler32_of_joined_parts():
    a, b = b"generated " * 999, bytes(range(256)) * 300
    assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    assert adler32_combine(zlib.adler32(a), zlib.adler32(b""), 0) == zlib.adler32(a)


def test_other_modes_are_written_as_rgb():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    assert np.array_equal(decoded(encode_png(grey)), np.asarray(grey.convert("RGB")))

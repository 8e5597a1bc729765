"""PNG bytes of a generated RGB image, filtered and deflated on several threads at once.

    pngs = encode_pngs(images)                 # the worker's: one image's parts in parallel, several one per thread
    png = encode_png(image, pool, workers=8)   # pool: a ThreadPoolExecutor (numpy and zlib release the GIL)

Why not Pillow's encoder: it filters and deflates on one thread. On the H200 machine that took 0.17-0.26 s of a
1024^2 request and 0.8-1.0 s of a 2048^2 one whose image was noise (random weights; bench/RESULTS.md). Here
the image's rows are cut into parts; each part is filtered with numpy and deflated on its own thread, pigz's
way: every part but the last ends with a sync flush, so the raw deflate streams join into one valid stream, and
the parts' Adler-32 checksums combine into the zlib wrapper's.

One PNG filter for the whole image (None, Sub or Up), the one whose bytes have the smallest sum of absolute
values (as signed) over a sample of rows: libpng's heuristic, taken per image rather than per row so that the
filtering is one numpy operation per part. Flat synthetic scenes then keep no filter, smooth images take Sub or Up.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
PART_BYTES = 1 << 19  # at least this much per part: below it a thread costs more than it saves
LEVEL = 1  # zlib's fastest (level 6 took over twice as long for ~11% smaller files)
SAMPLE_EVERY = 16  # rows between the rows that choose the filter
NONE, SUB, UP = 0, 1, 2
_ADLER_BASE = 65521


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _filter(rows: np.ndarray, above: np.ndarray | None, kind: int) -> np.ndarray:
    """[n, 1 + 3W] uint8: the filter type byte, then `rows` filtered (`above`: the row before them, None at the
    top, where PNG's Up reads zeros). uint8 arithmetic wraps modulo 256, as PNG's does."""
    out = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
    out[:, 0] = kind
    body = out[:, 1:]
    if kind == SUB:
        body[:, :3] = rows[:, :3]
        np.subtract(rows[:, 3:], rows[:, :-3], out=body[:, 3:])
    elif kind == UP:
        prev = np.concatenate([np.zeros_like(rows[:1]) if above is None else above[None], rows[:-1]])
        np.subtract(rows, prev, out=body)
    else:
        body[...] = rows
    return out


def choose_filter(rows: np.ndarray) -> int:
    """The filter whose output over sampled rows has the smallest sum of absolute (signed) values."""
    picks = np.arange(1, rows.shape[0], SAMPLE_EVERY)
    if len(picks) == 0:
        return NONE
    costs = [
        int(np.abs(_filter(rows[picks], None, k)[:, 1:].view(np.int8).astype(np.int16)).sum()) for k in (NONE, SUB)
    ]
    costs.append(int(np.abs((rows[picks] - rows[picks - 1]).view(np.int8).astype(np.int16)).sum()))
    return int(np.argmin(costs))  # ties go to the simpler filter


def adler32_combine(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of A + B from those of A and B (zlib's adler32_combine, which Python's zlib does not offer)."""
    rem = second_len % _ADLER_BASE
    s1 = first & 0xFFFF
    s2 = (rem * s1) % _ADLER_BASE
    s1 = (s1 + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    s2 = (s2 + ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - rem) % _ADLER_BASE
    return s1 | (s2 << 16)


def _part(rows: np.ndarray, above: np.ndarray | None, kind: int, last: bool) -> tuple[bytes, int, int]:
    """(raw deflate of the part's filtered bytes, their Adler-32, their length)."""
    data = _filter(rows, above, kind).reshape(-1)
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)  # raw deflate: the parts share one zlib wrapper
    return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH), zlib.adler32(data), data.size


def encode_png(image: Image.Image, pool: Executor | None = None, workers: int = 1) -> bytes:
    """The image as PNG bytes (8-bit RGB; other modes are converted). With a pool, up to `workers` parts of at
    least PART_BYTES are filtered and deflated on it in parallel (the caller must not be one of its threads)."""
    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    h, w, _ = rgb.shape
    rows = rgb.reshape(h, w * 3)
    kind = choose_filter(rows)
    parts = 1 if pool is None else max(1, min(h, h * (1 + 3 * w) // PART_BYTES, workers))
    cuts = [round(h * i / parts) for i in range(parts + 1)]
    args = [(rows[a:b], rows[a - 1] if a else None, kind, b == h) for a, b in zip(cuts, cuts[1:])]
    done = list(pool.map(_part, *zip(*args))) if parts > 1 else [_part(*args[0])]
    adler = done[0][1]
    for _, part_adler, size in done[1:]:
        adler = adler32_combine(adler, part_adler, size)
    stream = b"\x78\x01" + b"".join(d for d, _, _ in done) + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, adaptive filtering, no interlace
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def encode_pngs(images: list) -> list[bytes]:
    """PNG bytes of each image: one image's parts deflated on parallel threads, several images
    one per thread. The GPU waits for this after every batch."""
    pool, workers = _png_pool()
    if len(images) <= 1:
        return [encode_png(im, pool, workers) for im in images]
    return list(pool.map(encode_png, images))


_PNG_POOL: tuple[ThreadPoolExecutor, int] | None = None


def _png_pool() -> tuple[ThreadPoolExecutor, int]:
    """The process's encoding threads (kept: a request should not pay for starting them)."""
    global _PNG_POOL
    if _PNG_POOL is None:
        workers = max(1, min(8, os.cpu_count() or 1))
        _PNG_POOL = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png"), workers)
    return _PNG_POOL

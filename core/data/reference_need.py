"""The largest reference set of an edit / personalisation dataset, in tokens, from image headers alone.

    largest_reference_set("pairs.zip", resolution=1024)   # ReferenceSet(tokens=1190, count=1, name="out3.png")

What the memory plan needs before a training loads anything (worker/memory_plan.py): each sample's references
lengthen its sequence by their vision-tower and raw-patch tokens (core.reference_sizes), which depend on the
references' sizes, on how many there are and on the target's bucket at this resolution. Only headers are read
(the oriented size), nothing is decoded; a sample whose images cannot be read is skipped (the trainer's own
validation names it). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.reference_sizes import total_reference_tokens

from .buckets import make_buckets, nearest_bucket
from .catalog import build_catalog
from .images import DEFAULT_MAX_PIXELS, ImageProblem, probe
from .sources import Source, SourceLimits, open_source


@dataclass(frozen=True)
class ReferenceSet:
    tokens: int = 0  # tokens the references add to the sample's sequence (0: no sample has references)
    count: int = 0  # how many references that sample has
    name: str = ""  # the sample (its target image)


def largest_reference_set(
    source: str | Path | Source,
    resolution: int,
    max_aspect: float = 3.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limits: SourceLimits = SourceLimits(),
) -> ReferenceSet:
    """The sample whose references add the most tokens at `resolution` (buckets as the trainer makes them)."""
    src = open_source(source, limits)
    buckets = make_buckets(resolution, max_aspect)
    sizes: dict[str, tuple[int, int] | None] = {}  # one probe per file, a reference may serve several samples

    def size(name: str) -> tuple[int, int] | None:
        if name not in sizes:
            try:
                info = probe(src.read(name), max_pixels)
                sizes[name] = (info.width, info.height)
            except (ImageProblem, OSError, KeyError):
                sizes[name] = None
        return sizes[name]

    best = ReferenceSet()
    for item in build_catalog(src).items:
        if not item.references:
            continue
        target, refs = size(item.name), [size(r) for r in item.references]
        if target is None or None in refs:
            continue
        bw, bh = nearest_bucket(*target, buckets)
        try:
            tokens = total_reference_tokens(refs, bh, bw)
        except ValueError:
            continue  # cannot be laid out at this resolution: the trainer fails it with the reason
        if tokens > best.tokens:
            best = ReferenceSet(tokens, len(refs), item.name)
    return best

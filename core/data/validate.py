"""Validate a dataset before training: every file is looked at, every bad one is named.

    report = validate_dataset("photos.zip", resolution=1024, min_side=256)
    json.dumps(report.to_dict())

min_side (shorter images are rejected) defaults to min(256, resolution). With warn_below (an upload, whose
training resolution is not fixed yet) images at least min_side but under warn_below are kept and named in a
warning and in `report.small`: a training checks them again at its own resolution. Raises DatasetError (with
`.report`) when the source is unsafe (zip entries with absolute paths, '..', links; over the size limits)
or when no usable image is left; with strict=True also when any file is rejected. Nothing is written
anywhere: zips are read in place.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .buckets import make_buckets, nearest_bucket
from .catalog import build_catalog
from .images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb, probe
from .report import DatasetError, DatasetReport
from .sources import Issue, Source, SourceError, SourceLimits, open_source
from .transforms import cover_scale

DEFAULT_MIN_SIDE = 256


@dataclass(frozen=True)
class Record:
    """One usable image: where it is, its caption, its oriented size and its training shape."""
    name: str
    caption: str | None
    width: int
    height: int
    bucket: tuple[int, int]
    references: tuple[str, ...] = ()  # reference images of an edit / personalisation sample, in order


def scan(source: str | Path | Source, resolution: int = 1024, min_side: int | None = None,
         max_pixels: int = DEFAULT_MAX_PIXELS, limits: SourceLimits = SourceLimits(),
         max_aspect: float = 3.0, warn_below: int | None = None) -> tuple[Source, DatasetReport, list[Record]]:
    """Open and check everything; returns the source, the report and the usable records (no raising on
    bad content; see validate_dataset for that)."""
    buckets = make_buckets(resolution, max_aspect)   # raises ValueError on a bad resolution, before any I/O
    if min_side is None:
        # 256 px, or less when training smaller: an image as large as the training size needs no upscaling.
        min_side = min(DEFAULT_MIN_SIDE, resolution)
    if min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    report = DatasetReport(source=str(source), resolution=resolution, min_side=min_side, max_pixels=max_pixels)
    try:
        src = open_source(source, limits)
    except SourceError as e:
        name = Path(str(getattr(source, "name", source))).name   # messages name no server location
        text = str(e).replace(str(getattr(source, "name", source)), name)
        report.unsafe.append(Issue(name, text))
        raise DatasetError(text, report) from e
    report.source = src.name
    report.unsafe += src.unsafe
    report.ignored = list(src.ignored)
    report.files = len(src.entries) + len(src.unsafe)
    cat = build_catalog(src)
    report.unsupported = [Issue(n, "not a PNG, JPEG or WebP image, a .txt caption or metadata.jsonl")
                          for n in cat.unsupported]
    report.caption_issues = cat.caption_issues
    report.images = len(cat.items)
    records: list[Record] = []
    upscaled: list[str] = []
    present = {e.name for e in src.entries}
    ref_problems: dict[str, str | None] = {}  # reference name -> why it cannot be used (None: fine); each once
    for item in cat.items:
        bad = [(r, _reference_problem(src, r, present, max_pixels, ref_problems)) for r in item.references]
        bad = [(r, why) for r, why in bad if why]
        if bad:
            report.bad_references.append(Issue(item.name, "; ".join(f"reference {r}: {why}" for r, why in bad)))
            continue
        try:
            data = src.read(item.name)
        except OSError as e:
            report.unreadable.append(Issue(item.name, str(e)))
            continue
        try:
            info = probe(data, max_pixels)   # header: the true oriented size, and the pixel limit
            # Decoding for real (not only the header) is what catches truncated and corrupt files; JPEG
            # draft mode decodes at a reduced scale, which is enough for that and much cheaper.
            load_rgb(data, max_pixels, draft_size=(min_side, min_side))
        except ImageProblem as p:
            (report.huge if p.kind == "huge" else report.unreadable).append(Issue(item.name, p.reason))
            continue
        w, h = info.width, info.height
        if min(w, h) < min_side:
            report.too_small.append(Issue(item.name, f"{w}x{h}: shortest side under {min_side} px"))
            continue
        if warn_below and min(w, h) < warn_below:
            report.small.append(Issue(item.name, f"{w}x{h}: shortest side under {warn_below} px"))
        bucket = nearest_bucket(w, h, buckets)
        if cover_scale(w, h, bucket) > 1.0:
            upscaled.append(f"{item.name} ({w}x{h} -> {bucket[0]}x{bucket[1]})")
        records.append(Record(item.name, item.caption, w, h, bucket, item.references))
    report.usable = len(records)
    report.with_references = sum(bool(r.references) for r in records)
    report.captioned = sum(r.caption is not None for r in records)
    report.missing_captions = [r.name for r in records if r.caption is None]
    if records:
        ws, hs = [r.width for r in records], [r.height for r in records]
        areas = [r.width * r.height for r in records]
        smallest, largest = records[areas.index(min(areas))], records[areas.index(max(areas))]
        report.sizes = {"min": [smallest.width, smallest.height], "max": [largest.width, largest.height],
                        "median": [int(statistics.median(ws)), int(statistics.median(hs))],
                        "min_side": min(min(r.width, r.height) for r in records),
                        "max_side": max(max(r.width, r.height) for r in records)}
        for r in records:
            key = f"{r.bucket[0]}x{r.bucket[1]}"
            report.buckets[key] = report.buckets.get(key, 0) + 1
    small_records = [r for r in records if warn_below and min(r.width, r.height) < warn_below]
    if small_records:
        shortest = min(min(r.width, r.height) for r in small_records)
        report.warnings.append(
            f"{len(small_records)} image(s) have a shortest side under {warn_below} px (the smallest {shortest} px): "
            f"a training uses them only at a resolution up to their shortest side, e.g. "
            + ", ".join(f"{r.name} ({r.width}x{r.height})" for r in small_records[:5])
            + (" ..." if len(small_records) > 5 else ""))
    if upscaled:
        report.warnings.append(f"{len(upscaled)} image(s) smaller than their training size at {resolution} px "
                               f"will be upscaled: " + ", ".join(upscaled[:5]) + (" ..." if len(upscaled) > 5 else ""))
    if report.missing_captions:
        report.warnings.append(f"{len(report.missing_captions)} image(s) have no caption and train on the "
                               f"trigger phrase alone")
    return src, report, records


def _reference_problem(src: Source, name: str, present: set[str], max_pixels: int,
                       seen: dict[str, str | None]) -> str | None:
    """Why reference `name` cannot be used (missing, unreadable, over the pixel limit), or None; decoded once."""
    if name not in seen:
        if name not in present:
            seen[name] = "not in the dataset"
        else:
            try:
                data = src.read(name)
                probe(data, max_pixels)
                load_rgb(data, max_pixels, draft_size=(64, 64))
                seen[name] = None
            except ImageProblem as p:
                seen[name] = p.reason
            except OSError as e:
                seen[name] = str(e)
    return seen[name]


def check(report: DatasetReport, strict: bool = False) -> None:
    """Raise DatasetError if the report says the dataset cannot (or, strict, should not) be trained on.

    The message names the dataset by its folder or file name, not where it lies: a service shows it to the
    dataset's owner (the report keeps the full source)."""
    name = Path(report.source).name or report.source
    if report.unsafe:
        raise DatasetError(f"{name}: unsafe dataset, nothing was used | {report.problems_text()}", report)
    if report.usable == 0:
        what = report.problems_text() or "it holds no PNG, JPEG or WebP files"
        raise DatasetError(f"{name}: no usable images ({report.images} image file(s) found) | {what}",
                           report)
    if strict and report.rejected:
        raise DatasetError(f"{name}: {len(report.rejected)} file(s) rejected | {report.problems_text()}",
                           report)


def validate_dataset(source: str | Path | Source, resolution: int = 1024, min_side: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, limits: SourceLimits = SourceLimits(),
                     strict: bool = False, warn_below: int | None = None) -> DatasetReport:
    """Look at every file; return the report, or raise DatasetError naming the files that make it unusable."""
    _, report, _ = scan(source, resolution, min_side, max_pixels, limits, warn_below=warn_below)
    check(report, strict)
    return report

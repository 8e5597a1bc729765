"""Dataset uploads: check every file (names, formats, sizes, zip entries), stage the accepted ones in a folder,
then run the trainer's own dataset validation on that folder. Nothing here touches the DB or the store, so a
rejected upload leaves nothing behind but a staging folder the caller deletes.

    staged = stage_dataset([Incoming("a.png", f, size), ...], staging_dir, UploadLimits.from_settings(s))
    report = validate_staged(staging_dir, resolution=1024, min_side=256, max_pixels=s.max_image_pixels)
    # images under min(min_side, resolution) are kept and named in report["warnings"] / report["small"];
    # only images under 32 px, which no training resolution can use, are refused

Any problem raises UploadError naming the file; the API turns it into a 4xx.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from core.data.entry_checks import (
    is_os_litter,
    unsafe_name_reason,
    unsafe_zip_entry_reason,
    zip_over_limits_reason,
)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
CAPTION_EXTENSIONS = {".txt"}
METADATA_NAME = "metadata.jsonl"
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP"}
MIN_RESOLUTION = 32  # the smallest training resolution (sides are multiples of 32)


class UploadError(ValueError):
    """A rejected upload: ``status`` is the HTTP status to answer, ``report`` the validator's when it ran."""

    def __init__(self, message: str, status: int = 422, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.report = status, report


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files: int
    max_zip_uncompressed_bytes: int
    max_image_pixels: int
    max_caption_bytes: int

    @classmethod
    def from_settings(cls, s) -> "UploadLimits":
        return cls(
            s.max_upload_file_bytes,
            s.max_upload_files,
            s.max_zip_uncompressed_bytes,
            s.max_image_pixels,
            s.max_caption_bytes,
        )


@dataclass
class Incoming:
    filename: str
    file: BinaryIO
    size: int | None = None


@dataclass
class Staged:
    names: list[str] = field(default_factory=list)
    total_bytes: int = 0


def _kind(name: str) -> str:
    lower = name.lower()
    if PurePosixPath(lower).name == METADATA_NAME:
        return "metadata"
    suffix = PurePosixPath(lower).suffix
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in CAPTION_EXTENSIONS:
        return "caption"
    raise UploadError(
        f"{name}: file type not allowed; upload PNG, JPEG or WebP images, .txt captions, "
        f"{METADATA_NAME}, or one .zip of those"
    )


def _check_relative_name(name: str) -> str:
    if not name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise UploadError(f"{name!r}: file name is empty or has control characters")
    # Stricter than what is merely safe (below): names must mean the same on every system.
    if "\\" in name:
        raise UploadError(f"{name}: backslashes are not allowed in file names")
    unsafe = unsafe_name_reason(name)
    if unsafe:
        raise UploadError(f"{name}: {unsafe} is not allowed")
    parts = PurePosixPath(name).parts
    if any(len(p.encode()) > 255 for p in parts) or len(parts) > 16:
        raise UploadError(f"{name}: path too long")
    return "/".join(p for p in parts if p != ".")


def _copy_limited(src: BinaryIO, dest: Path, limit: int, name: str) -> int:
    """Copy at most ``limit`` bytes; a longer source is refused (headers can lie, bytes cannot)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(dest, "wb") as out:
        while block := src.read(1 << 20):
            written += len(block)
            if written > limit:
                raise UploadError(f"{name}: over the size limit of {limit} bytes", status=413)
            out.write(block)
    return written


def _check_file(path: Path, name: str, kind: str, limits: UploadLimits) -> None:
    if kind == "caption" or kind == "metadata":
        limit = limits.max_caption_bytes if kind == "caption" else limits.max_caption_bytes * 64
        if path.stat().st_size > limit:
            raise UploadError(f"{name}: caption file over {limit} bytes", status=413)
        try:
            path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise UploadError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        return
    from core.data.images import ImageProblem, probe  # PIL only; imported lazily to keep api start-up light

    try:
        info = probe(path.read_bytes(), limits.max_image_pixels)
    except ImageProblem as p:
        raise UploadError(f"{name}: {p.reason}") from None
    if info.format not in IMAGE_FORMATS:
        raise UploadError(f"{name}: {info.format} images are not allowed (PNG, JPEG or WebP)")


def stage_dataset(files: list[Incoming], dest: Path, limits: UploadLimits) -> Staged:
    """Check and copy the upload into ``dest``: plain files, or the entries of one zip."""
    if not files:
        raise UploadError("no files uploaded: send images (+ .txt captions) or one .zip as 'files'")
    if any(f.filename.lower().endswith(".zip") for f in files):
        if len(files) != 1:
            raise UploadError("a .zip must be uploaded alone (it holds the whole dataset)")
        staged = _stage_zip(files[0], dest, limits)
    else:
        staged = _stage_files(files, dest, limits)
    if not any(_kind(n) == "image" for n in staged.names):
        raise UploadError("the upload holds no PNG, JPEG or WebP image")
    return staged


def _stage_files(files: list[Incoming], dest: Path, limits: UploadLimits) -> Staged:
    if len(files) > limits.max_files:
        raise UploadError(f"{len(files)} files: at most {limits.max_files} per upload", status=413)
    staged, seen = Staged(), set()
    for f in files:
        name = f.filename
        if "/" in name or "\\" in name:
            raise UploadError(f"{name}: upload plain file names (folders go inside a .zip)")
        name = _check_relative_name(name)
        if name.lower() in seen:
            raise UploadError(f"{name}: uploaded twice")
        seen.add(name.lower())
        kind = _kind(name)
        if f.size is not None and f.size > limits.max_file_bytes:
            raise UploadError(
                f"{name}: {f.size} bytes is over the per-file limit of {limits.max_file_bytes}", status=413
            )
        staged.total_bytes += _copy_limited(f.file, dest / name, limits.max_file_bytes, name)
        _check_file(dest / name, name, kind, limits)
        staged.names.append(name)
    return staged


def _zip_entries(zf: zipfile.ZipFile, limits: UploadLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """The entries to extract, after checking every one from the central directory (before any decompression)."""
    infos = zf.infolist()
    too_big = zip_over_limits_reason(infos, limits.max_files, limits.max_zip_uncompressed_bytes)
    if too_big:
        raise UploadError(f"zip: {too_big}", status=413)
    out, seen = [], set()
    for info in infos:
        name = _check_relative_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
        unsafe = unsafe_zip_entry_reason(info)
        if unsafe:
            raise UploadError(
                f"{info.filename}: {unsafe}; a dataset zip may hold no links, encrypted entries "
                f"or paths leaving the archive"
            )
        if info.is_dir() or is_os_litter(name):
            continue
        _kind(name)  # refuses file types outside the allow-list, naming the entry
        if info.file_size > limits.max_file_bytes:
            raise UploadError(
                f"{name}: {info.file_size} bytes is over the per-file limit of {limits.max_file_bytes}", status=413
            )
        if name.lower() in seen:
            raise UploadError(f"{name}: appears twice in the zip")
        seen.add(name.lower())
        out.append((info, name))
    return out


def _stage_zip(f: Incoming, dest: Path, limits: UploadLimits) -> Staged:
    try:
        zf = zipfile.ZipFile(f.file)
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadError(f"{f.filename}: not a readable zip ({e})") from None
    staged = Staged()
    with zf:
        for info, name in _zip_entries(zf, limits):
            try:
                with zf.open(info) as src:
                    staged.total_bytes += _copy_limited(src, dest / name, info.file_size, name)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
                raise UploadError(f"{name}: corrupt zip entry ({e})") from None
            _check_file(dest / name, name, _kind(name), limits)
            staged.names.append(name)
    return staged


def validate_staged(folder: Path, *, resolution: int, min_side: int, max_pixels: int) -> dict[str, Any]:
    """The trainer's validation of the staged folder (strict: any file that would not train rejects it).

    Small images are the exception: whether an image is too small depends on the resolution a training will
    use, which the upload does not fix, so images under min(min_side, resolution) are named in the report's
    warnings (and `small`), not refused; the trainer checks them against its own resolution. Only images
    under the smallest training resolution (32 px), which no training can use, are refused."""
    from core.data import DatasetError, validate_dataset  # torch-free part of core; lazily imported

    try:
        report = validate_dataset(
            folder,
            resolution=resolution,
            min_side=min(min_side, MIN_RESOLUTION),
            max_pixels=max_pixels,
            strict=True,
            warn_below=min(min_side, resolution),
        )
    except DatasetError as e:
        report = e.report.to_dict()
        report["source"] = "upload"
        raise UploadError(
            str(e).replace(str(folder), "upload").replace(folder.name, "upload"), report=report
        ) from None
    out = report.to_dict()
    out["source"] = "upload"  # not the server's staging path
    return out


def prepare_dataset(
    files: list[Incoming], staging: Path, settings, resolution: int
) -> tuple[Staged, dict[str, Any]]:
    """stage_dataset + validate_staged with the settings' limits: the staged files and the validation report."""
    staged = stage_dataset(files, staging, UploadLimits.from_settings(settings))
    report = validate_staged(
        staging, resolution=resolution, min_side=settings.dataset_min_side, max_pixels=settings.max_image_pixels
    )
    return staged, report


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)

"""Which names and zip entries a dataset may hold: the one set of safety checks behind both the trainer's
sources (core.data.sources, which reports refused entries) and the API's upload staging (api.uploads, which
refuses the upload). Checked from names and the zip's central directory alone, before anything is read.
Imports no torch (the API uses it).
"""
from __future__ import annotations

import stat
import zipfile
from pathlib import PurePosixPath


def is_os_litter(name: str) -> bool:
    """macOS resource forks, .DS_Store and other hidden files users' zips carry: skipped, never reported."""
    return any(part == "__MACOSX" or part.startswith(".") for part in PurePosixPath(name).parts)


def unsafe_name_reason(name: str) -> str | None:
    """Why a relative name could write or read outside the dataset root; None when it cannot."""
    if "\x00" in name:
        return "name contains a NUL byte"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path escapes the archive ('..')"
    return None


def unsafe_zip_entry_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry must not be read (its name, a symbolic link, encryption); None when it may."""
    reason = unsafe_name_reason(info.filename)
    if reason:
        return reason
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    return None


def zip_over_limits_reason(infos: list[zipfile.ZipInfo], max_entries: int, max_total_bytes: int) -> str | None:
    """Why a whole archive is refused before any decompression (too many entries, a zip bomb); None if not."""
    if len(infos) > max_entries:
        return f"{len(infos)} entries, more than the limit of {max_entries}"
    total = sum(info.file_size for info in infos)
    if total > max_total_bytes:
        return f"expands to {total} bytes uncompressed, more than the limit of {max_total_bytes} (zip bomb?)"
    return None

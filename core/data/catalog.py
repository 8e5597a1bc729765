"""Which files of a source are images, and which caption belongs to each.

    cat = build_catalog(open_source("photos.zip"))
    cat.items          # [Item(name, caption or None)] for every file with an image extension, sorted
    cat.unsupported    # names of files that are neither an image, a .txt caption nor metadata.jsonl
    cat.caption_issues # [Issue] captions that could not be used (bad UTF-8, orphan .txt, bad metadata lines)

Captions come from a same-name `.txt` next to the image (`a/cat.png` <- `a/cat.txt`) or from a
`metadata.jsonl` (lines of {"file_name": ..., "text": ...}, names relative to the jsonl's folder, as in
Hugging Face imagefolder). When both give one, metadata.jsonl wins and the clash is reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .images import EXTENSIONS
from .sources import Issue, Source

METADATA = "metadata.jsonl"
MAX_CAPTION_BYTES = 64 * 1024   # a caption is a sentence or a paragraph; more is a wrong file


@dataclass(frozen=True)
class Item:
    name: str
    caption: str | None


@dataclass
class Catalog:
    items: list[Item] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    caption_issues: list[Issue] = field(default_factory=list)


def clean_caption(text: str) -> str | None:
    """One line of prose: whitespace runs (newlines included) become one space; empty -> None."""
    text = " ".join(text.split())
    return text or None


def _decode(source: Source, name: str, size: int, issues: list[Issue]) -> str | None:
    if size > MAX_CAPTION_BYTES:
        issues.append(Issue(name, f"caption file of {size} bytes is over {MAX_CAPTION_BYTES}"))
        return None
    try:
        return source.read(name).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        issues.append(Issue(name, f"caption is not UTF-8 text ({e.reason} at byte {e.start})"))
    except OSError as e:
        issues.append(Issue(name, str(e)))
    return None


def _metadata_captions(source: Source, name: str, size: int, issues: list[Issue]) -> dict[str, str | None]:
    text = _decode(source, name, size, issues) if size <= 64 * MAX_CAPTION_BYTES else None
    if text is None:
        if size > 64 * MAX_CAPTION_BYTES:
            issues.append(Issue(name, f"metadata file of {size} bytes is too big"))
        return {}
    folder = PurePosixPath(name).parent
    out: dict[str, str | None] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            issues.append(Issue(name, f"line {lineno}: not valid JSON ({e.msg})"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            issues.append(Issue(name, f"line {lineno}: needs a \"file_name\" string"))
            continue
        caption = row.get("text", row.get("caption"))
        if caption is not None and not isinstance(caption, str):
            issues.append(Issue(name, f"line {lineno}: \"text\" must be a string"))
            caption = None
        key = (folder / row["file_name"]).as_posix()
        out[key] = clean_caption(caption) if caption is not None else None
    return out


def build_catalog(source: Source) -> Catalog:
    cat = Catalog()
    images: list[str] = []
    txt: dict[str, tuple[str, int]] = {}   # path without suffix -> (caption file, size)
    meta: dict[str, str | None] = {}
    for e in source.entries:
        p = PurePosixPath(e.name)
        suffix = p.suffix.lower()
        if suffix in EXTENSIONS:
            images.append(e.name)
        elif suffix == ".txt":
            txt[p.with_suffix("").as_posix()] = (e.name, e.size)
        elif p.name == METADATA:
            meta.update(_metadata_captions(source, e.name, e.size, cat.caption_issues))
        else:
            cat.unsupported.append(e.name)
    image_set = set(images)
    for key in sorted(set(meta) - image_set):
        cat.caption_issues.append(Issue(key, f"listed in {METADATA} but no such image in the dataset"))
    used_txt = set()
    for name in sorted(images):
        stem = PurePosixPath(name).with_suffix("").as_posix()
        caption = None
        if stem in txt:
            used_txt.add(stem)
            tname, tsize = txt[stem]
            raw = _decode(source, tname, tsize, cat.caption_issues)
            caption = clean_caption(raw) if raw is not None else None
        if name in meta:
            if caption is not None and meta[name] is not None and caption != meta[name]:
                cat.caption_issues.append(Issue(txt[stem][0], f"{METADATA} also captions {name}; using {METADATA}"))
            caption = meta[name] if meta[name] is not None else caption
        cat.items.append(Item(name, caption))
    for stem in sorted(set(txt) - used_txt):
        cat.caption_issues.append(Issue(txt[stem][0], "caption without a matching image"))
    return cat

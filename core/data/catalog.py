"""Which files of a source are images, and which caption belongs to each.

    cat = build_catalog(open_source("photos.zip"))
    cat.items          # [Item(name, caption or None)] for every file with an image extension, sorted
    cat.unsupported    # names of files that are neither an image, a .txt caption nor metadata.jsonl
    cat.caption_issues # [Issue] captions that could not be used (bad UTF-8, orphan .txt, bad metadata lines)

Captions come from a same-name `.txt` next to the image (`a/cat.png` <- `a/cat.txt`) or from a
`metadata.jsonl` (lines of {"file_name": ..., "text": ...}, names relative to the jsonl's folder, as in
Hugging Face imagefolder; "file" is accepted for "file_name"). When both give one, metadata.jsonl wins and
the clash is reported.

Edit / personalisation samples (a target image trained with reference images) come in two conventions:
- metadata.jsonl lines with "references": ["in.png", ...] (names relative to the jsonl's folder);
- musubi-tuner's control folder: a folder named `control` beside the targets holding, for target `x.png`,
  `control/x.<ext>` (one reference) or `control/x_0.<ext>`, `control/x_1.<ext>`, ... (several, in order).
An image used as a reference is not also a training target. Each item's `references` lists the names; a
name that is not in the dataset is a caption issue naming the line and the reference (see validate for
references that do not decode), and a control image that matches no target is reported too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .images import EXTENSIONS
from .sources import Issue, Source

METADATA = "metadata.jsonl"
CONTROL_DIR = "control"  # musubi-tuner's layout: reference images of `x.png` in control/x.png or control/x_N.png
MAX_REFERENCES = 10     # the model's reference layout is made for up to ~10 images
MAX_CAPTION_BYTES = 64 * 1024   # a caption is a sentence or a paragraph; more is a wrong file


@dataclass(frozen=True)
class Item:
    name: str
    caption: str | None
    references: tuple[str, ...] = ()  # reference images (dataset names), in order; () = text-to-image


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


def _references(row: dict, folder: PurePosixPath, where: str, issues: list[Issue]) -> tuple[str, ...] | None:
    """The line's "references" as dataset names; None (and an issue) when the field is malformed."""
    refs = row.get("references", [])
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        issues.append(Issue(where, "\"references\" must be a list of image file names"))
        return None
    if len(refs) > MAX_REFERENCES:
        issues.append(Issue(where, f"{len(refs)} references: at most {MAX_REFERENCES}"))
        return None
    return tuple((folder / r).as_posix() for r in refs)


def _metadata_captions(source: Source, name: str, size: int, issues: list[Issue],
                       refs_out: dict[str, tuple[str, ...] | None]) -> dict[str, str | None]:
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
        if isinstance(row, dict) and "file_name" not in row and "file" in row:
            row["file_name"] = row["file"]  # the edit-dataset convention names the target "file"
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            issues.append(Issue(name, f"line {lineno}: needs a \"file_name\" (or \"file\") string"))
            continue
        caption = row.get("text", row.get("caption"))
        if caption is not None and not isinstance(caption, str):
            issues.append(Issue(name, f"line {lineno}: \"text\" must be a string"))
            caption = None
        key = (folder / row["file_name"]).as_posix()
        out[key] = clean_caption(caption) if caption is not None else None
        if "references" in row:
            refs_out[key] = _references(row, folder, f"{name} line {lineno} ({row['file_name']})", issues)
    return out


def _control_references(images: list[str]) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """musubi-tuner's layout: {target: its control images in order} and the set of every control image."""
    controls = [n for n in images if PurePosixPath(n).parent.name == CONTROL_DIR]
    by_stem: dict[str, list[tuple[int, str]]] = {}
    for n in controls:
        p = PurePosixPath(n)
        owner_dir = p.parent.parent
        stem, _, index = p.stem.rpartition("_")
        if stem and index.isdigit():  # x_0, x_1, ...: several references of x
            by_stem.setdefault((owner_dir / stem).as_posix(), []).append((int(index), n))
        by_stem.setdefault((owner_dir / p.stem).as_posix(), []).append((-1, n))  # or x itself
    out = {}
    for n in images:
        if n in controls:
            continue
        found = sorted(by_stem.get(PurePosixPath(n).with_suffix("").as_posix(), []))
        if found:
            out[n] = tuple(name for _, name in found)
    return out, set(controls)


def build_catalog(source: Source) -> Catalog:
    cat = Catalog()
    images: list[str] = []
    txt: dict[str, tuple[str, int]] = {}   # path without suffix -> (caption file, size)
    meta: dict[str, str | None] = {}
    meta_refs: dict[str, tuple[str, ...] | None] = {}
    for e in source.entries:
        p = PurePosixPath(e.name)
        suffix = p.suffix.lower()
        if suffix in EXTENSIONS:
            images.append(e.name)
        elif suffix == ".txt":
            txt[p.with_suffix("").as_posix()] = (e.name, e.size)
        elif p.name == METADATA:
            meta.update(_metadata_captions(source, e.name, e.size, cat.caption_issues, meta_refs))
        else:
            cat.unsupported.append(e.name)
    image_set = set(images)
    for key in sorted(set(meta) - image_set):
        cat.caption_issues.append(Issue(key, f"listed in {METADATA} but no such image in the dataset"))
    control_refs, controls = _control_references(images)
    refs = {**control_refs, **{k: v for k, v in meta_refs.items() if v}}  # metadata.jsonl wins, as for captions
    used_as_reference = controls | {r for v in refs.values() for r in v}
    matched = {r for v in control_refs.values() for r in v}
    for name in sorted(controls - matched):
        cat.caption_issues.append(Issue(name, f"in a {CONTROL_DIR}/ folder but no target image has its name"))
    used_txt = set()
    for name in sorted(images):
        if name in used_as_reference and name not in meta:
            continue  # a reference image, not a training target
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
        cat.items.append(Item(name, caption, refs.get(name, ())))
    for stem in sorted(set(txt) - used_txt):
        cat.caption_issues.append(Issue(txt[stem][0], "caption without a matching image"))
    return cat

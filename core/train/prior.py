"""Prior images: what the base model draws for each training caption without the trigger, trained on as reg/ images.

    folder = prior_images(cfg, model, tokenizer, dataset)   # before the LoRA is injected; None: not used

Why: a LoRA trained on styled images alone changes the prompts without its trigger too (on the bundled model the
style leaked +0.15 without the trigger, docs/evidence.md section 5). Plain reg/ images of the same scenes,
captioned without the trigger, teach it to leave those alone; most people upload no such images. So, when the run
has a trigger and the dataset no reg/ image, the trainer makes them: one per training image, the caption with
the trigger taken out (core.data.without_trigger), at the image's bucket size, drawn by the base model itself.
That is DreamBooth's prior preservation, with each image's own caption as its class prompt. On the bundled model
(16 held-out prompts, 256 px, CFG 2, the "bundled" preset) they gated as well as rendered plain twins of the
training scenes do (docs/evidence.md section 5).

They are written under out_dir/prior/images/reg/ (the folder laid over the dataset) with out_dir/prior/manifest.json;
a resumed run, or a second run into the same out_dir with the same model, captions and sizes, reads them back
instead of drawing them again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from core.bundled import model_sampling

log = logging.getLogger(__name__)

PRIOR_DIR = "prior"
MANIFEST = "manifest.json"
IMAGES = "images"  # the overlay's root, beside the manifest (which is no dataset file)
PROGRESS_NAME = "prior images"  # what on_prepare reports
BATCH_PIXELS = 8 * 256 * 256  # pixels per sampler call: 8 images at 256^2, one at 1024^2 (an 8B model's
# activations for a batch of 1024^2 CFG images would not fit beside the training on a 24 GB card)


def prior_plan(cfg, dataset) -> list[dict] | None:
    """[{name, caption, width, height, seed}] of the prior images a run needs; None when it needs none (no trigger,
    the option off, or the dataset has reg/ images of its own)."""
    from core.data import without_trigger
    from core.data.dataset import is_regularisation

    if not cfg.prior_preservation or not cfg.trigger.strip():
        return None
    if any(is_regularisation(r.name) for r in dataset.records):
        return None
    return [
        {
            "name": f"reg/prior-{i:06d}.png",
            "caption": without_trigger(rec.caption, cfg.trigger),
            "width": rec.bucket[0],
            "height": rec.bucket[1],
            "seed": cfg.seed * 1_000_003 + i,
        }
        for i, rec in enumerate(dataset.records)
    ]


def prior_images(
    cfg, model, tokenizer, dataset, on_main: bool = True, progress=None, should_stop=None
) -> Path | None:
    """The folder to lay over the dataset (its reg/ holds the prior images, drawn now unless a matching manifest is
    there), or None. Only the main process draws (the others of a multi-GPU run wait at the caller's barrier).
    progress(what, done, total) after each sampler call; should_stop() before each: True leaves the images drawn so
    far without a manifest (a later run draws them again) and returns, so that the caller's loop stops at step 0."""
    plan = prior_plan(cfg, dataset)
    if plan is None:
        return None
    folder = Path(cfg.out_dir) / PRIOR_DIR
    # drawn with the full preset, at the bundled model's own steps and CFG on it (core.bundled)
    manifest = {"model_path": str(cfg.model_path), "sampling": model_sampling(cfg.model_path), "images": plan}
    if on_main and not _matches(folder, manifest):
        _draw(folder, manifest, model, tokenizer, progress, should_stop)
    return folder / IMAGES


def _matches(folder: Path, manifest: dict) -> bool:
    path = folder / MANIFEST
    try:
        images = folder / IMAGES
        return json.loads(path.read_text()) == manifest and all(
            (images / im["name"]).is_file() for im in manifest["images"]
        )
    except (OSError, ValueError):
        return False


@torch.no_grad()
def _draw(folder: Path, manifest: dict, model, tokenizer, progress=None, should_stop=None) -> None:
    from core.sampler import Sampler

    (folder / MANIFEST).unlink(missing_ok=True)  # written last: a run stopped part-way leaves no false "done"
    root = folder / IMAGES
    (root / "reg").mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        if _draw_all(root, manifest, Sampler(model, tokenizer, preview_every=0), progress, should_stop):
            atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    finally:
        model.train(was_training)


def _draw_all(root: Path, manifest: dict, sampler, progress, should_stop) -> bool:
    """Draw and write every planned image, a sampler call per size and batch; False when should_stop ended it."""
    from core.sampler import ImageSpec

    plan = manifest["images"]
    log.info("drawing %d prior images with the base model", len(plan))
    by_size: dict[tuple[int, int], list[dict]] = {}
    for im in plan:
        by_size.setdefault((im["width"], im["height"]), []).append(im)
    done = 0
    if progress:
        progress(PROGRESS_NAME, done, len(plan))
    for (w, h), ims in by_size.items():
        per_call = max(1, BATCH_PIXELS // (w * h))
        for start in range(0, len(ims), per_call):
            if should_stop and should_stop():
                log.info("stopped after %d of %d prior images", done, len(plan))
                return False
            chunk = ims[start : start + per_call]
            specs = [ImageSpec(im["caption"], " ", im["seed"]) for im in chunk]
            images = sampler.sample(specs, width=w, height=h, **manifest["sampling"])
            for im, image in zip(chunk, images):
                atomic_write_bytes(root / im["name"], _png(image))
                atomic_write_bytes((root / im["name"]).with_suffix(".txt"), im["caption"].encode())
            done += len(chunk)
            if progress:
                progress(PROGRESS_NAME, done, len(plan))
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    from core.atomic_files import atomic_file

    with atomic_file(path, mode=0o644) as tmp:
        tmp.write_bytes(data)


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

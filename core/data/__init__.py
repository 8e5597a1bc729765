"""Training datasets: a folder or .zip of PNG/JPEG/WebP images with optional captions, validated, bucketed.

    from core.data import validate_dataset, TrainDataset, BucketBatchSampler, collate_batch, DatasetError

    report = validate_dataset("photos.zip", resolution=1024, min_side=256)   # JSON-able: report.to_dict()
    ds = TrainDataset("photos.zip", resolution=1024, trigger="sks style", repeats=10, flip=True,
                      caption_dropout=0.05, min_side=256, seed=0)
    sampler = BucketBatchSampler(ds, batch_size=4, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch)
    for batch in loader:            # batch["images"]: (B, 3, H, W) in [-1, 1], H and W multiples of 32
        ...                         # batch["captions"]: list[str], trigger prepended, " " when dropped out
    ckpt["data"] = sampler.state_after(batches_done)   # later: sampler.load_state_dict(ckpt["data"])

Captions: same-name .txt next to each image, or metadata.jsonl ({"file_name", "text"} per line).
Edit / personalisation samples: metadata.jsonl {"file", "text", "references": [...]} or a musubi-tuner
control/ folder (control/x.png, or control/x_0.png, x_1.png ... for target x.png); see catalog.
Each image keeps its aspect ratio: it goes to the aspect bucket closest to it (area ~ resolution^2, sides
multiples of 32) and is scaled to cover it and centre-cropped. Module map: sources (folder / zip, zip safety),
images (pixel limit, EXIF, RGB on white), catalog (captions), validate + report, buckets, transforms,
dataset, sampler.
"""
from .buckets import make_buckets, nearest_bucket
from .images import DEFAULT_MAX_PIXELS
from .report import DatasetError, DatasetReport
from .sources import Issue, SourceLimits, open_source
from .transforms import EMPTY_PROMPT, with_trigger, without_trigger
from .validate import DEFAULT_MIN_SIDE, validate_dataset

# The torch parts load on first use, so that the API can validate uploads without importing torch.
_LAZY = {"TrainDataset": ".dataset", "collate_batch": ".dataset", "BucketBatchSampler": ".sampler",
         "to_pil": ".transforms"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["BucketBatchSampler", "DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "DatasetError", "DatasetReport",
           "EMPTY_PROMPT", "Issue", "SourceLimits", "TrainDataset", "collate_batch", "make_buckets",
           "nearest_bucket", "open_source", "to_pil", "validate_dataset", "with_trigger", "without_trigger"]

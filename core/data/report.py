"""DatasetReport (what validation found, JSON-serialisable) and DatasetError (raised with the report).

    report.to_dict()        # plain dict for the API / json.dumps
    str(DatasetError(...))  # names the offending files, e.g.
      "photos.zip: no usable images (2 unreadable: a.png: ...; b.jpg: ...)"
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .sources import Issue


@dataclass
class DatasetReport:
    source: str
    resolution: int
    min_side: int
    max_pixels: int
    files: int = 0                    # files considered (OS litter like .DS_Store excluded)
    images: int = 0                   # files with an image extension
    usable: int = 0                   # images that train
    captioned: int = 0                # usable images with a caption
    missing_captions: list[str] = field(default_factory=list)   # usable images that train on the trigger alone
    sizes: dict = field(default_factory=dict)                   # min / max / median (w, h) of usable images
    buckets: dict[str, int] = field(default_factory=dict)       # "WxH" -> usable images at `resolution`
    unreadable: list[Issue] = field(default_factory=list)
    too_small: list[Issue] = field(default_factory=list)
    small: list[Issue] = field(default_factory=list)            # kept, but under validation's warn_below
    huge: list[Issue] = field(default_factory=list)
    unsupported: list[Issue] = field(default_factory=list)
    unsafe: list[Issue] = field(default_factory=list)
    caption_issues: list[Issue] = field(default_factory=list)
    bad_references: list[Issue] = field(default_factory=list)   # targets left out: a reference missing or bad
    with_references: int = 0          # usable images trained with reference images (edit / personalisation)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> list[Issue]:
        """Every image or file that will not train, with its reason."""
        return self.unreadable + self.too_small + self.huge + self.unsupported + self.unsafe + self.bad_references

    @property
    def ok(self) -> bool:
        return self.usable > 0 and not self.unsafe

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def problems_text(self, limit: int = 8) -> str:
        """'2 unreadable: a.png: reason; ...' for every non-empty category, at most `limit` names each."""
        parts = []
        for label, issues in (("unsafe", self.unsafe), ("unreadable", self.unreadable),
                              ("too small", self.too_small), ("too large", self.huge),
                              ("unsupported", self.unsupported), ("bad references", self.bad_references)):
            if issues:
                shown = "; ".join(f"{i.name}: {i.reason}" for i in issues[:limit])
                more = f"; and {len(issues) - limit} more" if len(issues) > limit else ""
                parts.append(f"{len(issues)} {label}: {shown}{more}")
        return " | ".join(parts)


class DatasetError(ValueError):
    """A dataset that cannot be trained on; `.report` holds everything validation found."""

    def __init__(self, message: str, report: DatasetReport):
        super().__init__(message)
        self.report = report

"""The reference images of a generation, from the rows and the store to decoded RGB images for the sampler.

The API accepted only the owner's images, and each was fully decoded at upload; what can still go wrong here is
an image deleted (or its file lost) while the generation waited. Each problem names the item, as the API would.
"""

from __future__ import annotations

from PIL import Image

from db.images import get_image
from worker.context import WorkerContext
from worker.runs import db_call


def load_references(c: WorkerContext, image_ids: list[str], owner_id: str) -> list[Image.Image]:
    """RGB images (EXIF orientation applied, alpha on white) in the order given; ValueError naming the item."""
    from core.data.images import ImageProblem, load_rgb

    out = []
    for i, image_id in enumerate(image_ids):
        row = db_call(
            c,
            lambda s, image_id=image_id: get_image(s, image_id=image_id, owner_id=owner_id),
            what=f"reference image {image_id}: read",
        )
        if row is None:
            raise ValueError(
                f"reference_images[{i}]: image {image_id} does not exist (deleted after the request?)"
            )
        try:
            with c.store.open(row.storage_key) as f:
                data = f.read()
        except FileNotFoundError:
            raise ValueError(
                f"reference_images[{i}]: the file of image {image_id} is missing from the store"
            ) from None
        try:
            out.append(load_rgb(data, c.settings.max_image_pixels))
        except ImageProblem as p:
            raise ValueError(f"reference_images[{i}]: image {image_id}: {p.reason}") from None
    return out

"""What one owner may ask of the workers: a bound on active jobs per owner, and on one generation's cost.

A generation's cost is its pixels x steps x images, where each token its reference images add to the sequence
(core.reference_sizes: the vision-tower copy in the prompt, the raw patches after the target) counts as the
32 x 32 target pixels of one patch token.

Both are settings (service/settings.py); both refuse before anything is written.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import ApiError
from core.reference_sizes import ReferenceSizeError, total_reference_tokens
from db.query import count_active
from service.settings import Settings


def check_active_limit(
    session: Session, model, *, owner_id: str, limit: int, what: str, settings: Settings
) -> None:
    """429 with Retry-After when the owner already has ``limit`` queued + running jobs of ``model`` (0 = none).
    Locks the owner row until the caller's commit, so concurrent submits are counted one after the other."""
    if limit <= 0:
        return
    active = count_active(session, model, owner_id=owner_id, lock_owner=True)
    if active >= limit:
        session.rollback()  # release the owner lock now, not when the session closes
        raise ApiError(
            429,
            f"you have {active} {what} queued or running, the limit is {limit}; wait for one to "
            f"finish (or cancel one) and retry",
            headers={"Retry-After": str(settings.active_limit_retry_after_s)},
        )


PIXELS_PER_TOKEN = 32 * 32  # one 32 px patch: a reference's tokens are priced as that many target pixels


def reference_token_count(sizes: list[tuple[int, int]], *, width: int, height: int) -> int:
    """The tokens that reference images of (width, height) `sizes` add to a request's sequence (their vision-tower
    copy in the prompt and their raw patches after the target, core.reference_sizes); 422 naming the item that
    the official resizing cannot shrink to this target."""
    try:
        return total_reference_tokens(sizes, height, width)
    except ReferenceSizeError as e:  # reference i -> the request's field
        field = f"reference_images[{e.index}]"
        raise ApiError(
            422,
            f"{field}: {e.reason}; use a larger width and height or fewer reference images",
            code="bad_reference_image",
            field=field,
        ) from None


def generation_cost(*, width: int, height: int, steps: int, num_images: int, reference_tokens: int = 0) -> int:
    return (width * height + PIXELS_PER_TOKEN * reference_tokens) * steps * num_images


def check_generation_cost(
    *, width: int, height: int, steps: int, num_images: int, reference_tokens: int = 0, settings: Settings
) -> None:
    """422 naming the bound when (width * height + 1024 per reference token) * steps * num_images is over
    ``max_generation_cost``: every reference lengthens each step's sequence like 32x32 target pixels per token."""
    cost = generation_cost(
        width=width, height=height, steps=steps, num_images=num_images, reference_tokens=reference_tokens
    )
    bound = settings.max_generation_cost
    if cost <= bound:
        return
    if reference_tokens:
        pixels = width * height
        raise ApiError(
            422,
            f"(width x height + 32 x 32 x reference tokens) x steps x num_images = ({width} x {height} + 1024 x "
            f"{reference_tokens}) x {steps} x {num_images} = {cost} is over this service's bound of {bound} per "
            f"request: the reference images add {reference_tokens} tokens to every step's sequence (without "
            f"them the request costs {pixels * steps * num_images}); use fewer or smaller reference images, "
            f"fewer steps or images, or fewer pixels",
            code="over_cost_bound",
            field="reference_images",
        )
    raise ApiError(
        422,
        f"width x height x steps x num_images = {width} x {height} x {steps} x {num_images} = "
        f"{cost} is over this service's bound of {bound} per request; use fewer steps, images or "
        f"pixels",
        code="over_cost_bound",
    )

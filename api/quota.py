"""What one owner may ask of the workers: a bound on active jobs per owner, and on one generation's cost.

Both are settings (service/settings.py); both refuse before anything is written.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import ApiError
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


def generation_cost(*, width: int, height: int, steps: int, num_images: int) -> int:
    return width * height * steps * num_images


def check_generation_cost(*, width: int, height: int, steps: int, num_images: int, settings: Settings) -> None:
    """422 naming the bound when width * height * steps * num_images is over ``max_generation_cost``."""
    cost = generation_cost(width=width, height=height, steps=steps, num_images=num_images)
    bound = settings.max_generation_cost
    if cost > bound:
        raise ApiError(
            422,
            f"width x height x steps x num_images = {width} x {height} x {steps} x {num_images} = "
            f"{cost} is over this service's bound of {bound} per request; use fewer steps, images or "
            f"pixels",
            code="over_cost_bound",
        )

"""/v1/generations: submit, list, read, cancel, stream events, download images."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Request, Response, status
from fastapi.responses import StreamingResponse

from api.cancel import cancel_job
from api.deps import (
    CurrentOwner,
    EnqueuerDep,
    GenerationId,
    PageDep,
    SessionDep,
    SettingsDep,
    StatusFilter,
    StoreDep,
    not_found,
)
from api.errors import error_responses, scrub
from api.files import send_artifact
from api.quota import check_active_limit, check_generation_cost, reference_token_count
from api.request_defaults import with_service_defaults
from api.schemas import (
    WEBHOOK_FIELDS,
    CancelPublic,
    GenerationCreate,
    GenerationProgress,
    GenerationPublic,
    GenerationsPublic,
    ImagePublic,
)
from api.sse import job_stream
from api.webhook_fields import check_webhook_url, webhook_block
from db.generations import create_generation, get_generation, list_generations
from db.images import get_image
from db.loras import get_lora
from db.models import Generation
from jobqueue.enqueue import send_and_record

router = APIRouter(prefix="/v1/generations", tags=["generations"], responses=error_responses(401, 422, 503))


def to_public(gen: Generation) -> GenerationPublic:
    return GenerationPublic(
        id=gen.id,
        status=gen.status,
        prompt=gen.prompt,
        params=gen.params,
        error=scrub(gen.error) if gen.error else None,  # the worker's text: no server paths or object reprs
        cancel_requested=bool(gen.cancel_requested),
        warnings=list(gen.warnings or []),
        webhook=webhook_block(gen),
        progress=GenerationProgress(step=gen.step, total_steps=gen.total_steps),
        images=[
            ImagePublic(
                index=i.index,
                url=f"/v1/generations/{gen.id}/images/{i.index}",
                width=i.width,
                height=i.height,
                seed=i.seed,
            )
            for i in gen.images
        ],
        created_at=gen.created_at,
        started_at=gen.started_at,
        finished_at=gen.finished_at,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GenerationPublic,
    responses=error_responses(404, 413, 429),
)
def submit_generation(
    response: Response,
    body: GenerationCreate,
    owner: CurrentOwner,
    session: SessionDep,
    enqueuer: EnqueuerDep,
    settings: SettingsDep,
    request: Request,
    background: BackgroundTasks,
):
    """Queue a generation with your LoRAs (and reference images); poll it until its images are listed.

    reference_images (ids from POST /v1/images, at most 10) make it an edit or a personalisation: each is shown
    to the model as the official layout has it, and CFG's unconditional input keeps the references. An id
    that is not one of your images is a 404 naming the item (`reference_images[i]`).

    Refused with 422 when width x height x steps x num_images is over the service's bound (each token the
    reference images add to the sequence counts as 32 x 32 pixels: their vision-tower copy in the prompt and their
    raw patches after the target), or when a reference cannot be resized for this size, and with 429
    (Retry-After) while you already have the most queued + running generations the service allows."""
    # size, steps and CFG not given: the service's (on the bundled model, the model's own)
    body = with_service_defaults(body, settings)
    check_generation_cost(
        width=body.width, height=body.height, steps=body.steps, num_images=body.num_images, settings=settings
    )
    for i, ref in enumerate(body.loras):
        if get_lora(session, lora_id=ref.id, owner_id=owner.id) is None:
            raise not_found("LoRA", ref.id, field=f"loras[{i}].id")
    check_webhook_url(body, settings)
    sizes = []
    for i, image_id in enumerate(body.reference_images):
        image = get_image(session, image_id=image_id, owner_id=owner.id)
        if image is None:
            raise not_found("image", image_id, field=f"reference_images[{i}]")
        sizes.append((image.width, image.height))  # as decoded (EXIF orientation applied), kept at upload
    if sizes:  # the references lengthen every step's sequence: priced by the tokens they add
        check_generation_cost(
            width=body.width,
            height=body.height,
            steps=body.steps,
            num_images=body.num_images,
            reference_tokens=reference_token_count(sizes, width=body.width, height=body.height),
            settings=settings,
        )
    check_active_limit(
        session,
        Generation,
        owner_id=owner.id,
        limit=settings.max_active_generations,
        what="generations",
        settings=settings,
    )
    params = body.model_dump(exclude=WEBHOOK_FIELDS)
    if params["seed"] is None:  # chosen here so the row records how to reproduce the images
        params["seed"] = secrets.randbelow(2**31)
    gen = create_generation(
        session,
        owner_id=owner.id,
        prompt=body.prompt,
        params=params,
        num_images=body.num_images,
        total_steps=body.steps,
        **body.webhook_kwargs(),
    )
    background.add_task(send_and_record, enqueuer, "generation", gen.id, request.app.state.sessions)
    session.refresh(gen)
    response.headers["Location"] = f"/v1/generations/{gen.id}"
    return to_public(gen)


@router.get("", response_model=GenerationsPublic)
def read_generations(owner: CurrentOwner, session: SessionDep, page: PageDep, status_: StatusFilter = None):
    """Your generations, newest first."""
    rows, total = list_generations(
        session, owner_id=owner.id, status=status_, limit=page.limit, offset=page.offset
    )
    return GenerationsPublic(data=[to_public(r) for r in rows], count=total)


@router.get("/{generation_id}", response_model=GenerationPublic, responses=error_responses(404))
def read_generation(generation_id: GenerationId, owner: CurrentOwner, session: SessionDep):
    """Status, the images finished so far, and warnings."""
    gen = get_generation(session, job_id=generation_id, owner_id=owner.id)
    if gen is None:
        raise not_found("generation", generation_id)
    return to_public(gen)


@router.post("/{generation_id}/cancel", response_model=CancelPublic, responses=error_responses(404, 409))
def cancel(
    generation_id: GenerationId,
    owner: CurrentOwner,
    session: SessionDep,
    enqueuer: EnqueuerDep,
    request: Request,
    background: BackgroundTasks,
):
    """Cancel: a queued generation is canceled at once; a running one stops at its next sampling step (the
    images already finished stay). 409 when it has already ended."""
    return cancel_job(
        "generation",
        generation_id,
        owner_id=owner.id,
        session=session,
        enqueuer=enqueuer,
        redis=request.app.state.redis,
        background=background,
    )


@router.get(
    "/{generation_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "snapshot, then progress / image / status events until it ends",
        },
        **error_responses(404),
    },
)
def stream_events(
    generation_id: GenerationId, owner: CurrentOwner, session: SessionDep, settings: SettingsDep, request: Request
):
    """Server-Sent Events: the current state, then live progress and images until the end."""
    if get_generation(session, job_id=generation_id, owner_id=owner.id) is None:
        raise not_found("generation", generation_id)
    return job_stream(
        kind="generation",
        job_id=generation_id,
        settings=settings,
        sessions=request.app.state.sessions,
        read=lambda s: to_public(get_generation(s, job_id=generation_id)),
    )


@router.get(
    "/{generation_id}/images/{n}",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}, "description": "the PNG"}, **error_responses(404)},
)
def read_image(
    generation_id: GenerationId,
    owner: CurrentOwner,
    session: SessionDep,
    store: StoreDep,
    n: Annotated[int, Path(ge=0, le=2**31, description="0-based image number")],
):
    """Image number n (0-based) as PNG."""
    gen = get_generation(session, job_id=generation_id, owner_id=owner.id)
    image = next((i for i in gen.images if i.index == n), None) if gen else None
    if image is None:
        raise not_found("image", f"{generation_id}/{n}")
    return send_artifact(store, image.storage_key, "image/png", filename=f"{generation_id}-{n}.png")

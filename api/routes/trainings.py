"""/v1/trainings: submit, list, read, cancel, stream events, preview images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Request, Response, status
from fastapi.responses import StreamingResponse

from api.cancel import cancel_job
from api.default_preset import with_default_preset
from api.deps import (
    CurrentOwner,
    EnqueuerDep,
    PageDep,
    SessionDep,
    SettingsDep,
    StatusFilter,
    StoreDep,
    TrainingId,
    not_found,
)
from api.errors import error_responses, scrub
from api.files import send_artifact
from api.quota import check_active_limit
from api.schemas import (
    WEBHOOK_FIELDS,
    CancelPublic,
    PreviewPublic,
    TrainingCreate,
    TrainingProgress,
    TrainingPublic,
    TrainingsPublic,
    ValidationPublic,
)
from api.sse import job_stream
from api.webhook_fields import check_webhook_url, webhook_block
from db.datasets import get_dataset
from db.models import TrainingJob
from db.training import create_training, get_training, list_trainings
from jobqueue.enqueue import send_and_record

router = APIRouter(prefix="/v1/trainings", tags=["trainings"], responses=error_responses(401, 422, 503))


def to_public(job: TrainingJob) -> TrainingPublic:
    return TrainingPublic(
        id=job.id,
        name=job.name,
        dataset_id=job.dataset_id,
        trigger=job.trigger,
        status=job.status,
        cancel_requested=job.cancel_requested,
        params=job.params,
        attempt=job.attempt,
        error=scrub(job.error) if job.error else None,  # the worker's text: no server paths or object reprs
        checkpoint_step=job.checkpoint_step,
        progress=TrainingProgress(
            step=job.step,
            total_steps=job.total_steps,
            loss=job.loss,
            seconds_per_step=job.seconds_per_step,
            eta_seconds=job.eta_seconds,
            validation_loss=_latest_validation_loss(job.validation),
            phase=job.phase if job.status == "running" else None,
        ),
        validation=ValidationPublic(**job.validation) if job.validation else None,
        previews=[
            PreviewPublic(
                step=p.step,
                index=p.index,
                prompt=p.prompt,
                url=f"/v1/trainings/{job.id}/previews/{p.step}/{p.index}",
            )
            for p in job.previews
        ],
        lora_id=job.lora.id if job.lora else None,
        webhook=webhook_block(job),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _latest_validation_loss(validation: dict | None) -> float | None:
    series = (validation or {}).get("series") or []
    return series[-1]["loss"] if series else None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingPublic,
    responses=error_responses(404, 413, 429),
)
def submit_training(
    response: Response,
    body: TrainingCreate,
    owner: CurrentOwner,
    session: SessionDep,
    enqueuer: EnqueuerDep,
    settings: SettingsDep,
    request: Request,
    background: BackgroundTasks,
):
    """Queue a training job on one of your datasets; poll it or stream its events.

    429 (Retry-After) while you already have the most queued + running trainings the service allows."""
    body = with_default_preset(body, settings)  # no preset named: the service's default fills what is left out
    if get_dataset(session, dataset_id=body.dataset_id, owner_id=owner.id) is None:
        raise not_found("dataset", body.dataset_id, field="dataset_id")
    check_webhook_url(body, settings)
    if (
        body.validation_dataset_id is not None
        and get_dataset(session, dataset_id=body.validation_dataset_id, owner_id=owner.id) is None
    ):
        raise not_found("dataset", body.validation_dataset_id, field="validation_dataset_id")
    check_active_limit(
        session,
        TrainingJob,
        owner_id=owner.id,
        limit=settings.max_active_trainings,
        what="trainings",
        settings=settings,
    )
    params = body.model_dump(exclude=WEBHOOK_FIELDS)
    params["name"] = body.name or body.trigger
    params["min_side"] = settings.dataset_min_side  # the trainer checks the dataset as the upload did
    job = create_training(
        session,
        owner_id=owner.id,
        dataset_id=body.dataset_id,
        name=params["name"],
        trigger=body.trigger,
        params=params,
        total_steps=body.steps,
        **body.webhook_kwargs(),
    )
    # The row is committed first; the message goes out after the response (if the broker is down the row stays
    # queued and the reconciler sends it later).
    background.add_task(send_and_record, enqueuer, "training", job.id, request.app.state.sessions)
    session.refresh(job)
    response.headers["Location"] = f"/v1/trainings/{job.id}"
    return to_public(job)


@router.get("", response_model=TrainingsPublic)
def read_trainings(owner: CurrentOwner, session: SessionDep, page: PageDep, status_: StatusFilter = None):
    """Your training jobs, newest first."""
    rows, total = list_trainings(session, owner_id=owner.id, status=status_, limit=page.limit, offset=page.offset)
    return TrainingsPublic(data=[to_public(r) for r in rows], count=total)


@router.get("/{job_id}", response_model=TrainingPublic, responses=error_responses(404))
def read_training(job_id: TrainingId, owner: CurrentOwner, session: SessionDep):
    """Status, progress, previews so far, and the LoRA once done."""
    job = get_training(session, job_id=job_id, owner_id=owner.id)
    if job is None:
        raise not_found("training job", job_id)
    return to_public(job)


@router.post("/{job_id}/cancel", response_model=CancelPublic, responses=error_responses(404, 409))
def cancel(
    job_id: TrainingId,
    owner: CurrentOwner,
    session: SessionDep,
    enqueuer: EnqueuerDep,
    request: Request,
    background: BackgroundTasks,
):
    """Cancel: a queued job is canceled at once; a running one stops at its next step, keeping its checkpoint."""
    return cancel_job(
        "training",
        job_id,
        owner_id=owner.id,
        session=session,
        enqueuer=enqueuer,
        redis=request.app.state.redis,
        background=background,
    )


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "snapshot, then progress / preview / status events until the job ends",
        },
        **error_responses(404),
    },
)
def stream_events(
    job_id: TrainingId, owner: CurrentOwner, session: SessionDep, settings: SettingsDep, request: Request
):
    """Server-Sent Events: the current state, then live progress, previews and status changes until the end."""
    if get_training(session, job_id=job_id, owner_id=owner.id) is None:
        raise not_found("training job", job_id)
    return job_stream(
        kind="training",
        job_id=job_id,
        settings=settings,
        sessions=request.app.state.sessions,
        read=lambda s: to_public(get_training(s, job_id=job_id)),
    )


@router.get(
    "/{job_id}/previews/{step}/{index}",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/png": {}}, "description": "the preview PNG"}, **error_responses(404)},
)
def read_preview(
    job_id: TrainingId,
    owner: CurrentOwner,
    session: SessionDep,
    store: StoreDep,
    step: Annotated[int, Path(ge=0, le=2**31, description="training step of the preview")],
    index: Annotated[int, Path(ge=0, le=2**31, description="which sample prompt (0-based)")],
):
    """One preview image."""
    job = get_training(session, job_id=job_id, owner_id=owner.id)
    preview = next((p for p in job.previews if p.step == step and p.index == index), None) if job else None
    if preview is None:
        raise not_found("preview", f"{job_id}/{step}/{index}")
    return send_artifact(store, preview.storage_key, "image/png")

"""SQLAlchemy 2 models: owners and their keys, datasets, training jobs (+ previews), LoRAs, generations (+ images),
uploaded reference images.

Every resource row has an owner. Job rows are the source of truth for job state; the state changes only
through the conditional UPDATEs in db.training / db.generations. The schema is built by the Alembic
migrations (tests/db/test_migrations.py checks that these models and the migrations agree).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints so that Alembic batch mode (SQLite) can find and alter them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
ACTIVE = ("queued", "running")  # a job in one of these still needs its dataset / LoRAs


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC: SQLite drops time zones, and comparisons must agree on both DBs."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use db.models.utcnow()")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _id() -> Mapped[str]:
    return mapped_column(String(32), primary_key=True, default=new_id)


def _owner() -> Mapped[str]:
    return mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow)


class Owner(Base):
    __tablename__ = "owners"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _created()
    # "whsec_" + base64 of 32 random bytes, made on first use (db/webhooks.py); signs every webhook delivery.
    webhook_secret: Mapped[str | None] = mapped_column(String(100))


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = _id()
    owner_id: Mapped[str] = _owner()
    key_hash: Mapped[str] = mapped_column(
        String(64), unique=True
    )  # sha256 hex of the key; the key is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart in listings
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = _id()
    owner_id: Mapped[str] = _owner()
    name: Mapped[str] = mapped_column(String(200))
    storage_prefix: Mapped[str] = mapped_column(String(200))  # artifact-store prefix holding the files
    num_images: Mapped[int] = mapped_column(Integer)
    num_captions: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the trainer's validation report
    created_at: Mapped[datetime] = _created()


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    id: Mapped[str] = _id()
    owner_id: Mapped[str] = _owner()
    # SET NULL: a finished job outlives its dataset; deleting the dataset of an active job is refused by the API.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    trigger: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # every training parameter, defaults filled in

    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    seconds_per_step: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    # what a running job does before its first step, e.g. "prior images: 8 of 24"; None once it trains
    phase: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # last time a message was sent

    worker_id: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # claims so far (1 = first run, 2+ = resumed)
    celery_task_id: Mapped[str | None] = mapped_column(String(200))
    checkpoint_path: Mapped[str | None] = mapped_column(String(1000))  # latest checkpoint, resume point
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    # Webhooks (webhooks/): where to send this job's events and which; webhook_open while its "completed"
    # delivery is not yet recorded, so that the sender scans only the jobs that may still owe an event.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_events: Mapped[list[str]] = mapped_column(JSON, default=list)
    webhook_open: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # the trainer's validation summary (series, baseline, best step, cost); null: no validation (yet)
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    previews: Mapped[list["Preview"]] = relationship(
        back_populates="job", order_by="(Preview.step, Preview.index)", cascade="all, delete-orphan"
    )
    lora: Mapped["Lora | None"] = relationship(back_populates="training_job", uselist=False)


class Preview(Base):
    __tablename__ = "previews"
    __table_args__ = (UniqueConstraint("job_id", "step", "index", name="uq_previews_job_step_index"),)
    id: Mapped[str] = _id()
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)  # which sample prompt
    prompt: Mapped[str] = mapped_column(Text, default="")
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = _created()
    job: Mapped[TrainingJob] = relationship(back_populates="previews")


class Lora(Base):
    __tablename__ = "loras"
    id: Mapped[str] = _id()
    owner_id: Mapped[str] = _owner()
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))  # trained | imported
    format: Mapped[str] = mapped_column(String(32))  # peft | comfyui | musubi | diffsynth | bare (as stored)
    training_job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), unique=True
    )
    peft_prefix: Mapped[str | None] = mapped_column(String(500))  # store prefix of a PEFT folder
    comfyui_key: Mapped[str | None] = mapped_column(String(500))  # store key of one ComfyUI safetensors
    original_key: Mapped[str | None] = mapped_column(String(500))  # imported file exactly as uploaded
    rank: Mapped[int | None] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    trigger: Mapped[str | None] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # "metadata" is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = _created()
    training_job: Mapped[TrainingJob | None] = relationship(back_populates="lora")


class Generation(Base):
    __tablename__ = "generations"
    id: Mapped[str] = _id()
    owner_id: Mapped[str] = _owner()
    prompt: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the request with defaults filled in (loras, seed...)
    num_images: Mapped[int] = mapped_column(Integer)

    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker_id: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    celery_task_id: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # What the owner should know about a finished run that still succeeded (e.g. LoRA keys that placed nowhere).
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Webhooks (webhooks/): where to send this job's events and which; webhook_open while its "completed"
    # delivery is not yet recorded, so that the sender scans only the jobs that may still owe an event.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_events: Mapped[list[str]] = mapped_column(JSON, default=list)
    webhook_open: Mapped[bool] = mapped_column(Boolean, default=False, index=True)

    images: Mapped[list["GenerationImage"]] = relationship(
        back_populates="generation", order_by="GenerationImage.index", cascade="all, delete-orphan"
    )


class GenerationImage(Base):
    __tablename__ = "generation_images"
    __table_args__ = (UniqueConstraint("generation_id", "index", name="uq_generation_images_generation_index"),)
    id: Mapped[str] = _id()
    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created()
    generation: Mapped[Generation] = relationship(back_populates="images")


class WebhookDelivery(Base):
    """One event of one job for its webhook URL. The id is the Standard Webhooks ``webhook-id``: every retry
    sends the same id and the same body, so a receiver can drop duplicates (delivery is at least once)."""

    __tablename__ = "webhook_deliveries"
    # One delivery per event of a job: "ref" tells apart the events that repeat (the step of a progress event,
    # step/index of a preview, the number of a generation's image); "" for start and completed.
    __table_args__ = (UniqueConstraint("job_id", "event", "ref", name="uq_webhook_deliveries_job_event_ref"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_<32 hex>
    owner_id: Mapped[str] = _owner()
    job_kind: Mapped[str] = mapped_column(String(16))  # training | generation
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    event: Mapped[str] = mapped_column(String(16))  # start | progress | preview | completed
    ref: Mapped[str] = mapped_column(String(64), default="")
    url: Mapped[str] = mapped_column(String(2000))
    body: Mapped[str] = mapped_column(Text)  # the JSON exactly as signed and sent, the same on every attempt
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)  # the receiver's HTTP status, if it answered
    last_error: Mapped[str | None] = mapped_column(Text)  # why the last attempt failed
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WorkerBeat(Base):
    """Each worker process's own heartbeat (worker/presence.py): alive, and what its GPU holds. The job rows
    carry the jobs' heartbeats; this one also covers an idle worker, for /metrics."""

    __tablename__ = "worker_beats"
    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as on claimed rows
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    gpu_allocated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # tensors, summed over its GPUs
    gpu_reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # held by the caching allocator
    gpu_total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class UploadedImage(Base):
    """An image the owner uploaded to condition generations (editing, personalisation): `reference_images`
    of a generation name these ids. The file is kept as uploaded; it was fully decoded once at upload."""

    __tablename__ = "images"
    id: Mapped[str] = _id()
    owner_id: Mapped[str] = _owner()
    name: Mapped[str] = mapped_column(String(200))  # the uploaded file name, for listings
    storage_key: Mapped[str] = mapped_column(String(500))
    format: Mapped[str] = mapped_column(String(8))  # PNG | JPEG | WEBP
    width: Mapped[int] = mapped_column(Integer)  # after EXIF orientation
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created()

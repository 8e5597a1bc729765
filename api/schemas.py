"""Request and response bodies, in families: XCreate (request), XPublic (one), XsPublic (a page).

Every field has a description: they are the API's documentation at /docs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from core.presets import PRESETS
from core.train.config import TrainConfig  # torch-free: the trainer's defaults are the request's
from core.train.presets import TRAINING_PRESETS, apply_preset
from webhooks.derive import EVENTS as WEBHOOK_EVENTS
from webhooks.urls import WebhookUrlError, check_syntax

NO_NUL = r"^[^\x00]*$"  # for form fields (PostgreSQL text cannot hold NUL)
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
MAX_REFERENCE_IMAGES = 10  # the model's layout is tuned for up to ~10 references (hidream-o1.md)
MAX_SEED = 2**62  # image k uses seed + k: leaves room in a signed 64-bit column


class Strict(BaseModel):
    # Unknown fields are errors: a typo such as "learning_rte" must not silently train with the default.
    # NaN and +-Infinity (which Python's JSON parser accepts) are refused in every number, naming the field;
    # strict: a JSON true is not the number 1, nor "5" the number 5 (the schema says integer / number).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        # PostgreSQL text cannot hold NUL; refuse it here, naming the field, rather than fail in the database.
        if any(isinstance(x, str) and "\x00" in x for x in (v if isinstance(v, list) else [v])):
            raise ValueError("must not contain NUL characters")
        return v


WebhookEvent = Literal["start", "progress", "preview", "completed"]


class WebhookRequest(Strict):
    """The webhook fields of a job request (trainings and generations), in the Standard Webhooks convention."""

    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="http(s) URL to POST this job's events to, signed with your secret from "
        "GET /v1/webhooks/default/secret (headers webhook-id, webhook-timestamp, webhook-signature: "
        "v1,<base64 HMAC-SHA256 of 'id.timestamp.body'>). Delivered at least once (the same "
        "webhook-id on every retry), retried with backoff for hours. Must resolve to a public address",
    )
    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS),
        min_length=1,
        max_length=4,
        description="which events to send: start (the job started), progress (at most every few seconds), "
        "preview (each training preview / each finished generation image), completed (succeeded, "
        "failed or canceled); default: all four",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_syntax(v)
            except WebhookUrlError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("webhook_events_filter")
    @classmethod
    def _events_once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each event may appear once")
        return v

    def webhook_kwargs(self) -> dict[str, Any]:
        """The row's webhook columns (the job's params hold only what the job itself runs with)."""
        return {"webhook_url": self.webhook_url, "webhook_events": list(self.webhook_events_filter)}


WEBHOOK_FIELDS = frozenset(WebhookRequest.model_fields)


class WebhookDeliveryPublic(BaseModel):
    id: str = Field(description="the webhook-id header (the same on every retry)")
    event: WebhookEvent = Field(description="which event")
    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending (being sent or waiting for a retry), delivered (a 2xx answer), failed (gave up)"
    )
    attempts: int = Field(description="attempts so far")
    last_status_code: int | None = Field(description="the receiver's HTTP status at the last attempt")
    last_error: str | None = Field(description="why the last attempt failed")
    created_at: datetime = Field(description="when the event happened (UTC)")
    delivered_at: datetime | None = Field(description="when a receiver accepted it (UTC)")


class WebhookPublic(BaseModel):
    url: str = Field(description="where this job's events go")
    events_filter: list[WebhookEvent] = Field(description="the events sent")
    deliveries: list[WebhookDeliveryPublic] = Field(description="the latest deliveries, newest first (at most 20)")
    deliveries_total: int = Field(description="deliveries recorded for this job in all")


class WebhookSecretPublic(BaseModel):
    key: str = Field(description="whsec_<base64>: the HMAC-SHA256 key is the base64-decoded part after whsec_")


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A page of a list route (the XsPublic family)."""

    data: list[Item] = Field(description="this page, newest first")
    count: int = Field(description="total across all pages (with the status filter, where there is one)")


# ---- datasets -------------------------------------------------------------------------------------------------


class DatasetPublic(BaseModel):
    id: str = Field(description="dataset id")
    name: str = Field(description="display name (the form field `name`, else the first file's name)")
    num_images: int = Field(description="images that will train")
    num_captions: int = Field(description="of those, images with a caption")
    total_bytes: int = Field(description="bytes stored for this dataset")
    report: dict[str, Any] = Field(
        description="the trainer's validation report: counts, sizes, aspect buckets, "
        "warnings, and every file that will not train with the reason"
    )
    created_at: datetime = Field(description="upload time (UTC)")


class DatasetsPublic(Page[DatasetPublic]):
    pass


# ---- trainings ------------------------------------------------------------------------------------------------


class TrainingCreate(WebhookRequest):
    # Every trainer knob here is a core.train.TrainConfig field (request names: core.train.REQUEST_NAMES) with
    # its default; tests/api/test_training_fields.py fails when a field is added to one side only.
    dataset_id: str = Field(description="id of an uploaded dataset of yours", min_length=1, max_length=64)
    trigger: str = Field(
        description="trigger phrase put in front of every caption, and used in prompts",
        min_length=1,
        max_length=200,
    )
    name: str | None = Field(
        None, description="name of the job and of its LoRA; default: the trigger", max_length=200
    )
    preset: Literal[tuple(TRAINING_PRESETS)] | None = Field(  # type: ignore[valid-type]
        None,
        description="a named recipe (GET /v1/training-presets) for every field this request leaves out; "
        "fields given here win over it. Left out: the service's default preset (the one GET "
        "/v1/training-presets marks `default`, 'bundled' on the bundled model); null: none, the recipe's defaults",
    )
    steps: int = Field(TrainConfig.steps, ge=1, le=200_000, description="optimizer steps")
    rank: int = Field(TrainConfig.rank, ge=1, le=512, description="LoRA rank r")
    alpha: float = Field(
        TrainConfig.alpha, gt=0, le=4096, description="LoRA alpha; the update is scaled by alpha / rank"
    )
    learning_rate: float = Field(TrainConfig.lr, gt=0, le=1e-1, description="AdamW learning rate")
    resolution: int = Field(
        TrainConfig.resolution,
        ge=32,
        le=4096,
        multiple_of=32,
        description="training area is about resolution^2 pixels, aspect kept; multiple of 32 "
        "(the model's patch size)",
    )
    batch_size: int = Field(TrainConfig.batch_size, ge=1, le=64, description="images per optimizer step")
    sample_every: int = Field(
        TrainConfig.sample_every, ge=0, description="steps between preview images; 0 = no previews"
    )
    sample_prompts: list[str] = Field(
        default_factory=list, max_length=8, description="prompts rendered at every preview (at most 8)"
    )
    seed: int = Field(
        TrainConfig.seed, ge=0, le=MAX_SEED, description="seed of noise, timesteps, data order and LoRA init"
    )
    # Optional knobs of the trainer; defaults are the recipe's.
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="steps between checkpoints (resume points); default: about 10 per run, at most 500 apart",
    )
    repeats: int = Field(
        TrainConfig.repeats, ge=1, le=1000, description="times each image is seen per epoch (small datasets)"
    )
    flip: bool = Field(
        TrainConfig.flip,
        description="random horizontal flips (leave off for text or asymmetric subjects); an image whose caption says left or right is never flipped",
    )
    caption_dropout: float = Field(
        TrainConfig.caption_dropout, ge=0, le=1, description="fraction of captions dropped (keeps CFG working)"
    )
    prior_preservation: bool = Field(
        TrainConfig.prior_preservation,
        description="with a trigger and a dataset without reg/ images: before training, the base model draws each "
        "caption without the trigger, and those images train as reg/ images, so that prompts without the trigger "
        "keep the base model's look (on by default in the 'bundled' preset; costs one generation per image)",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        TrainConfig.lr_schedule, description="learning-rate schedule after warm-up"
    )
    warmup_steps: int = Field(TrainConfig.warmup_steps, ge=0, description="linear learning-rate warm-up steps")
    grad_accum: int = Field(
        TrainConfig.grad_accum, ge=1, le=64, description="micro-batches accumulated per optimizer step"
    )
    sample_steps: int = Field(
        TrainConfig.sample_steps, ge=1, le=200, description="sampler steps of each preview image"
    )
    sample_size: int | None = Field(
        TrainConfig.sample_size,
        ge=32,
        le=4096,
        multiple_of=32,
        description="preview side in pixels, multiple of 32; default: resolution",
    )
    base_precision: Literal["auto", "bf16", "fp8"] = Field(
        TrainConfig.base_precision,
        description="precision of the frozen base model's linears while training: fp8 (float8 weights: half "
        "the memory, faster on GPUs with fp8 matmuls), bf16, or auto (the worker's GPU decides: fp8 on "
        "compute capability 8.9+ or under 20 GiB, else bf16). A LoRA trained on either works on both",
    )
    # Validation (issue 14): a loss on images that never train, at fixed noise, every validation_every steps.
    validation_dataset_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="id of another uploaded dataset of yours to validate on; "
        "default: hold images out of dataset_id "
        "(validation_fraction)",
    )
    validation_fraction: float | None = Field(
        TrainConfig.validation_fraction,
        ge=0,
        lt=1,
        description="share of the dataset's images held out of training for "
        "validation; null: 10% when it has 20 images or more, "
        "else none; 0: none",
    )
    validation_max_images: int = Field(
        TrainConfig.validation_max_images,
        ge=1,
        le=64,
        description="at most this many validation images (each costs "
        "validation_seeds x validation_sigmas forward passes)",
    )
    validation_every: int = Field(
        TrainConfig.validation_every, ge=0, description="steps between validation losses; 0 = no validation"
    )
    validation_sigmas: int = Field(
        TrainConfig.validation_sigmas, ge=1, le=64, description="fixed noise levels, evenly spread over (0, 1]"
    )
    validation_seeds: int = Field(
        TrainConfig.validation_seeds, ge=1, le=16, description="fixed noise draws per image and level"
    )
    publish: Literal["last", "best"] = Field(
        TrainConfig.publish,
        description="the LoRA published at the end: the last step, or the "
        "step of the lowest validation loss (the other one stays "
        "downloadable: GET /v1/loras/{id}/file?which=last|best)",
    )
    early_stop_patience: int = Field(
        TrainConfig.early_stop_patience,
        ge=0,
        le=1000,
        description="end training when the validation loss has not improved for this many evaluations; 0 = never",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        # Before the fields are checked, so a preset's values meet the same checks as typed ones. An unknown
        # name is left for the `preset` field to refuse (422 naming the choices).
        if isinstance(data, dict) and data.get("preset") in TRAINING_PRESETS:
            return apply_preset(data["preset"], data)
        return data

    @field_validator("sample_prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        for i, p in enumerate(v):
            if not p.strip() or len(p) > 2000:
                raise ValueError(f"sample_prompts[{i}] must be 1-2000 characters of text")
        return v

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("trigger must not be blank")
        return v.strip()

    @model_validator(mode="after")
    def _sampling(self) -> "TrainingCreate":
        problems = [
            f"{name} ({getattr(self, name)}) must not exceed steps ({self.steps})"
            for name in ("sample_every", "warmup_steps")
            if getattr(self, name) > self.steps
        ]
        if self.validation_dataset_id is not None and self.validation_dataset_id == self.dataset_id:
            problems.append(
                "validation_dataset_id must name another dataset than dataset_id (a loss on the "
                "training images cannot tell overfitting)"
            )
        if self.validation_dataset_id is not None and self.validation_fraction:
            problems.append("give validation_dataset_id or validation_fraction, not both")
        if (self.publish == "best" or self.early_stop_patience) and not self.validation_every:
            problems.append("publish='best' and early_stop_patience need validation (validation_every > 0)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainingPresetPublic(BaseModel):
    label: str = Field(description="a short name for a button")
    summary: str = Field(description="what the recipe is for")
    values: dict[str, Any] = Field(description="the training fields it sets; the others keep their defaults")
    default: bool = Field(
        False,
        description="a training request that names no preset gets this one (at most one preset is the default)",
    )


class TrainingProgress(BaseModel):
    step: int = Field(description="optimizer steps done")
    total_steps: int = Field(description="steps the job will run")
    loss: float | None = Field(description="training loss at the last reported step (smoothed by the trainer)")
    seconds_per_step: float | None = Field(description="recent wall time per step")
    validation_loss: float | None = Field(
        None,
        description="the latest validation loss (fixed noise, held-out images); see `validation` for the series",
    )
    eta_seconds: float | None = Field(description="estimated seconds until done")
    phase: str | None = Field(
        None,
        description="what a running job does before its first step, e.g. 'prior images: 8 of 24' (the base model "
        "drawing each caption without the trigger: minutes on a full-size model); null once it trains",
    )


class ValidationPoint(BaseModel):
    step: int = Field(description="training step evaluated")
    loss: float = Field(description="the recipe's loss on the validation images at fixed sigmas and noise")


class ValidationPublic(BaseModel):
    series: list[ValidationPoint] = Field(description="every validation loss so far, by step")
    baseline: float | None = Field(description="the same loss of the base model (adapter off): where it starts")
    best_step: int | None = Field(description="step of the lowest validation loss")
    best_loss: float | None = Field(description="the lowest validation loss")
    evals_since_best: int = Field(description="evaluations since the best (early stop counts these)")
    seconds: float = Field(description="wall time spent on validation (its cost)")
    images: int | None = Field(None, description="validation images evaluated")


class PreviewPublic(BaseModel):
    step: int = Field(description="training step the preview was rendered at")
    index: int = Field(description="which sample prompt (position in sample_prompts)")
    prompt: str = Field(description="the prompt rendered")
    url: str = Field(description="path of the PNG on this API (needs the same Authorization header)")


class TrainingPublic(BaseModel):
    id: str = Field(description="job id")
    name: str = Field(description="job name (also the LoRA's)")
    dataset_id: str | None = Field(description="dataset trained on; null once that dataset was deleted")
    trigger: str = Field(description="trigger phrase")
    status: JobStatus = Field(description="queued, running, succeeded, failed or canceled")
    cancel_requested: bool = Field(
        description="a cancel was asked while running; the trainer stops at its next step"
    )
    params: dict[str, Any] = Field(description="every training parameter, defaults filled in")
    progress: TrainingProgress = Field(description="latest progress written by the worker")
    error: str | None = Field(description="why the job failed")
    attempt: int = Field(description="times a worker started this job (2+ means it resumed from a checkpoint)")
    checkpoint_step: int | None = Field(description="step of the last saved checkpoint: where a resume starts")
    previews: list[PreviewPublic] = Field(description="preview images so far, by step")
    validation: ValidationPublic | None = Field(
        None, description="the validation losses, once the first is measured; null for a run without validation"
    )
    lora_id: str | None = Field(description="the trained LoRA, once succeeded")
    webhook: WebhookPublic | None = Field(None, description="the webhook and its deliveries, when one was given")
    created_at: datetime = Field(description="submit time (UTC)")
    started_at: datetime | None = Field(description="first start (UTC)")
    finished_at: datetime | None = Field(description="end time (UTC)")


class TrainingsPublic(Page[TrainingPublic]):
    pass


class CancelPublic(BaseModel):
    id: str = Field(description="job id")
    status: JobStatus = Field(description="status after the request")
    cancel_requested: bool = Field(description="true when the job was running and will stop at its next step")


# ---- LoRAs ------------------------------------------------------------------------------------------------------


class LoraPublic(BaseModel):
    id: str = Field(description="LoRA id")
    name: str = Field(description="display name")
    source: Literal["trained", "imported"] = Field(description="trained here, or imported from a file")
    format: str = Field(description="key layout as stored: peft, comfyui, musubi, diffsynth, bare or mixed")
    rank: int | None = Field(description="rank r (largest over modules for imported files)")
    alpha: float | None = Field(description="alpha, when the file states it")
    trigger: str | None = Field(description="trigger phrase it was trained with")
    training_job_id: str | None = Field(description="job that trained it")
    size_bytes: int = Field(description="size of the stored file(s)")
    metadata: dict[str, Any] = Field(description="what produced it (sidecar / safetensors metadata)")
    downloads: dict[str, str] = Field(description="format -> download path, for the formats available")
    created_at: datetime = Field(description="creation time (UTC)")


class LorasPublic(Page[LoraPublic]):
    pass


# ---- generations ----------------------------------------------------------------------------------------------

# What a generation request defaults to, per preset: core.presets' values (one owner: the sampler's presets).
PRESET_DEFAULTS = {
    name: {"steps": PRESETS[name].steps, "guidance": PRESETS[name].guidance} for name in ("full", "dev")
}


class LoraRef(Strict):
    id: str = Field(description="id of one of your LoRAs", min_length=1, max_length=64)
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="strength; 1 = as trained, 0 = off")


class GenerationCreate(WebhookRequest):
    prompt: str = Field(description="what to draw", min_length=1, max_length=4000)
    negative_prompt: str | None = Field(
        None, max_length=4000, description="what to avoid (used with CFG); default: the model's"
    )
    loras: list[LoraRef] = Field(default_factory=list, max_length=8, description="LoRAs to apply, with scales")
    # Defaults: the service's (api.request_defaults: 256 on the bundled model, else 1024), written into OpenAPI.
    width: int = Field(1024, ge=32, le=4096, multiple_of=32, description="image width, multiple of 32")
    height: int = Field(1024, ge=32, le=4096, multiple_of=32, description="image height, multiple of 32")
    steps: int | None = Field(
        None, ge=1, le=500, description="sampling steps; default: the preset's (50 full, 28 dev)"
    )
    guidance: float | None = Field(
        None, ge=0, le=30, description="CFG scale; default: the preset's (5 full, 0 = none for dev)"
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="seed of image 0 (image k uses seed + k); default: random, reported back",
    )
    preset: Literal["full", "dev"] = Field(
        "full", description="sampler recipe: full (UniPC + CFG) or dev (distilled)"
    )
    num_images: int = Field(1, ge=1, le=8, description="images to generate")
    reference_images: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_IMAGES,
        description=f"ids of your uploaded images (POST /v1/images) that condition every image: the prompt is "
        f"then an edit instruction or describes the subject; 0 to {MAX_REFERENCE_IMAGES}, in order",
    )

    @field_validator("loras")
    @classmethod
    def _unique(cls, v: list[LoraRef]) -> list[LoraRef]:
        ids = [r.id for r in v]
        if len(set(ids)) != len(ids):
            raise ValueError("each LoRA may appear once")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> "GenerationCreate":
        d = PRESET_DEFAULTS[self.preset]
        # Written past __setattr__ so that model_fields_set still says what the caller gave: the service's own
        # defaults (api.request_defaults, e.g. the bundled model's steps and CFG) replace only what it did not.
        for name in ("steps", "guidance"):
            if getattr(self, name) is None:
                self.__dict__[name] = d[name]
        return self


class ReferenceImagePublic(BaseModel):
    id: str = Field(description="image id, for reference_images of a generation")
    name: str = Field(description="the uploaded file name")
    format: str = Field(description="PNG, JPEG or WEBP")
    width: int = Field(description="pixels (after EXIF orientation)")
    height: int = Field(description="pixels (after EXIF orientation)")
    size_bytes: int = Field(description="bytes stored")
    created_at: datetime = Field(description="upload time (UTC)")


class ReferenceImagesPublic(Page[ReferenceImagePublic]):
    pass


class ImagePublic(BaseModel):
    index: int = Field(description="0-based image number")
    url: str = Field(description="path of the PNG on this API (needs the same Authorization header)")
    width: int = Field(description="pixels")
    height: int = Field(description="pixels")
    seed: int = Field(description="seed this image was drawn with")


class GenerationProgress(BaseModel):
    step: int = Field(description="sampling steps done")
    total_steps: int = Field(description="sampling steps per image")


class GenerationPublic(BaseModel):
    id: str = Field(description="generation id")
    status: JobStatus = Field(description="queued, running, succeeded, failed or canceled")
    prompt: str = Field(description="the prompt")
    params: dict[str, Any] = Field(description="the request with defaults filled in (seed included)")
    progress: GenerationProgress = Field(description="latest progress written by the worker")
    images: list[ImagePublic] = Field(description="images finished so far")
    error: str | None = Field(description="why it failed")
    cancel_requested: bool = Field(description="a cancel was asked while running; it stops at its next step")
    warnings: list[str] = Field(
        description="what you should know about a run that still succeeded (e.g. LoRA keys that placed nowhere)"
    )
    webhook: WebhookPublic | None = Field(None, description="the webhook and its deliveries, when one was given")
    created_at: datetime = Field(description="submit time (UTC)")
    started_at: datetime | None = Field(description="start time (UTC)")
    finished_at: datetime | None = Field(description="end time (UTC)")


class GenerationsPublic(Page[GenerationPublic]):
    pass


# ---- service ----------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = Field(description="the process answers")


class Ready(BaseModel):
    status: Literal["ready", "not ready"] = Field(description="ready when every dependency answered")
    checks: dict[str, str] = Field(description="dependency -> 'ok' or the error")

"""The one settings object of the service (api, worker and the db commands all read it; nothing else reads env).

Values come from the environment (prefix ``O1LORA_``) or a ``.env`` file in the working directory:

    O1LORA_DATABASE_URL=postgresql+psycopg://o1lora:secret@db/o1lora O1LORA_ENV=production make serve

Torch-free and FastAPI-free on purpose: the worker imports it too.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO / "models" / "o1-shapes"  # the small pretrained model shipped with the project

# Passwords that ship in examples; a deployment that still uses one is refused outside development.
PLACEHOLDER_SECRETS = frozenset(
    {"changethis", "change-me", "changeme", "secret", "password", "postgres", "minioadmin"}
)
# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="O1LORA_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = Field(
        "development", description="production refuses placeholder secrets"
    )

    data_dir: Path = Field(Path("data"), description="root of everything the service writes locally")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at <data_dir>/o1lora.db")
    artifact_dir: Path | None = Field(None, description="local artifact store root; default <data_dir>/artifacts")
    # The shared store of a deployment whose machines share no filesystem (service/s3_store.py). Empty: the local
    # folder above. Credentials left empty fall back to boto3's own chain (AWS_* variables, an instance role).
    store_url: str = Field(
        "", description="s3://bucket/prefix: keep every artifact in that bucket; empty = the local artifact_dir"
    )
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO, Ceph...); empty = AWS")
    s3_region: str = Field("", description="S3 region; empty = boto3's default (us-east-1 without one)")
    s3_access_key_id: str = Field("", description="S3 access key; empty = boto3's credential chain")
    s3_secret_access_key: str = Field("", description="S3 secret key; empty = boto3's credential chain")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="auto = path-style with a custom endpoint (what MinIO needs), virtual-hosted on AWS"
    )
    s3_multipart_mib: int = Field(
        64, ge=5, description="files larger than this go up in parts of this size (S3's minimum part is 5 MiB)"
    )
    store_cache_dir: Path | None = Field(
        None, description="a worker's local copies of what it reads from an S3 store; default <data_dir>/cache"
    )
    store_cache_max_gib: float = Field(
        50.0,
        ge=0,
        description="that cache (copies of LoRAs, datasets and checkpoints, keyed by content) is trimmed to "
        "this size, least recently used first; 0 = no bound",
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker")
    redis_url: str = Field("", description="Redis for live job events (pub/sub); empty means broker_url")
    broker_visibility_timeout_s: float = Field(
        3600.0, gt=0, description="Redis redelivers a message unacked this long (see worker/celery_app.py)"
    )
    broker_key_prefix: str = Field("", description="prefix of every broker key, to share one Redis")
    train_time_limit_s: float = Field(48 * 3600.0, gt=0, description="a training running longer fails")
    generate_time_limit_s: float = Field(3600.0, gt=0, description="a generation running longer fails")

    model_path: Path = Field(BUNDLED_MODEL, description="base model folder used for training and generation")
    # A recipe made for an 8B model (1024 px, 2,500 steps at 1e-4) takes hours on a CPU and barely moves the 15M
    # bundled model, so a first training on the embedded default must not get it by default (issue 13).
    training_preset: str = Field(
        "auto",
        pattern=r"^[a-z0-9_-]+$",
        description="the training preset (GET /v1/training-presets) of a request that names none: a preset's "
        "name, 'none' (the recipe's own defaults), or 'auto' = 'bundled' when model_path is the bundled model, "
        "else none",
    )
    # The 15M bundled model was trained at 64-256 px: a 1024 px request (the official size) is out of its range and
    # ~60x the work on a CPU, so on the embedded default a generation that gives no size gets the model's own.
    generation_size: str = Field(
        "auto",
        pattern=r"^(auto|\d+x\d+)$",
        description="width x height of a generation request that gives neither: 'WxH' (multiples of 32), or "
        "'auto' = 256x256 when model_path is the bundled model, else 1024x1024",
    )
    # The full preset's 50 steps at CFG 5 are the 8B model's; on the bundled model CFG 5 overshoots (speckle, wrong
    # colours) and costs 2.5x the steps, so there a request that gives neither gets the model's own.
    generation_sampling: str = Field(
        "auto",
        pattern=r"^(auto|preset|\d+,\d+(\.\d+)?)$",
        description="steps and CFG of a 'full'-preset generation request that gives them not: 'STEPS,CFG', "
        "'preset' (the preset's: 50, 5), or 'auto' = 20,2 when model_path is the bundled model, else the preset's",
    )

    # Uploads. The per-request limit also bounds a dataset zip; the pixel limit keeps decode memory bounded.
    max_upload_file_bytes: int = Field(64 * 2**20, gt=0, description="largest single uploaded image/caption")
    max_upload_request_bytes: int = Field(2 * 2**30, gt=0, description="largest upload request body")
    max_upload_files: int = Field(5000, gt=0, description="most files in one upload (zip entries included)")
    max_zip_uncompressed_bytes: int = Field(4 * 2**30, gt=0, description="total size a zip may expand to")
    max_image_pixels: int = Field(64 * 2**20, gt=0, description="largest width*height an image may have")
    max_caption_bytes: int = Field(64 * 2**10, gt=0, description="largest caption .txt")
    dataset_min_side: int = Field(
        256,
        ge=1,
        description="images with a shorter side (or the upload's resolution, "
        "if smaller) are named as warnings in the dataset report; "
        "trainings cap it at their resolution",
    )
    max_lora_bytes: int = Field(4 * 2**30, gt=0, description="largest imported LoRA file")

    # What one owner may ask of the workers (api/quota.py): active jobs (queued + running; 0 = no limit) and the
    # cost of one generation request in pixel-steps (width * height * steps * num_images). The default admits
    # 1024^2 x 50 steps x 4 images and 2048^2 x 50 x 1, and refuses 4096^2 x 50.
    max_active_generations: int = Field(
        10, ge=0, description="an owner's queued + running generations; more -> 429"
    )
    max_active_trainings: int = Field(5, ge=0, description="an owner's queued + running trainings; more -> 429")
    active_limit_retry_after_s: int = Field(30, ge=1, description="Retry-After of that 429")
    max_generation_cost: int = Field(
        2048 * 2048 * 50, gt=0, description="largest width * height * steps * num_images of one generation"
    )

    heartbeat_timeout_s: float = Field(180.0, gt=0, description="a running job silent this long is stale")
    sse_recheck_s: float = Field(5.0, gt=0, description="SSE re-reads the DB this often in case an event was lost")

    # Workers (worker/): see worker/celery_app.py for why the broker is used the way it is.
    progress_interval_s: float = Field(
        1.0, ge=0, description="a job writes progress / reads cancel at most this often"
    )
    reconcile_interval_s: float = Field(15.0, ge=0, description="each worker's reconciler pass period; 0 = off")
    lora_cache_size: int = Field(8, gt=0, description="LoRAs a generation worker keeps bound in memory (LRU)")
    # Generation fast path (worker/model_host.py, worker/generation_batch.py).
    generate_compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the denoise step: auto = on with CUDA, off on the CPU"
    )
    generate_cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto",
        description="replay each request's denoise step as a CUDA graph captured at its first step (the compiled "
        "fp8 step was host-bound: 59 vs 42 ms on an H200 without a graph); auto = on with CUDA when compiling",
    )
    generate_base_precision: Literal["auto", "bf16", "fp8"] = Field(
        "auto",
        description="the generation worker's resident base: fp8 = float8 decoder linears (half the memory; fp8 "
        "matmuls on CUDA compute capability 8.9+), bf16, or auto = fp8 on those cards or under 20 GiB, else bf16",
    )
    generate_offload_blocks: int = Field(
        0, ge=0, description="decoder layers the generation worker keeps in host memory and streams to the GPU"
    )
    warmup_sizes: str = Field(
        "auto",
        description="WxH list compiled at generation-worker start, e.g. 1024x1024,2048x2048; "
        "empty = none; auto = 1024x1024 when compiling, else none",
    )
    cfg_split_pixels: int = Field(
        2048 * 2048, gt=0, description="CFG as two unpadded calls from this many pixels up, one batch below"
    )
    lora_max_rank: int = Field(
        64,
        ge=0,
        description="LoRA ranks per linear held as data (all active LoRAs together); more fall "
        "back to hooks (a recompile); 0 = hooks only",
    )
    lora_apply: Literal["auto", "merge", "slots"] = Field(
        "auto",
        description="how the generation worker applies LoRAs: merge = into the weights, a kept copy of the base "
        "making it exact to undo (no cost per step; memory for that copy: 12.9 GiB at full size, an fp8 base's "
        "linears kept in full precision), slots = beside each linear (+14% per step in bf16, +46% in fp8, while a "
        "LoRA is active), auto = merge where the GPU has room",
    )
    generate_max_batch: int = Field(
        4, ge=1, description="most images of queued compatible generations sampled in one batched call"
    )
    generate_batch_wait_s: float = Field(
        0.0,
        ge=0,
        description="how long a generation waits for compatible ones to arrive and batch with; 0 = it takes "
        "those already queued (under load the queue fills while the GPU is busy; a wait would delay every lone "
        "request, and batching gains little where one image already fills the GPU: 1.08x at 1024^2 on an H200)",
    )
    train_processes: int = Field(
        0,
        ge=0,
        description="processes (DDP ranks) per training job: 0 = one per "
        "visible GPU of the worker (1 without GPUs)",
    )
    db_outage_limit_s: float = Field(
        120.0,
        gt=0,
        description="a worker retries its database calls through "
        "connection losses this long before failing the job (keep it under "
        "heartbeat_timeout_s)",
    )

    # The memory plan (worker/memory_plan.py): what fits on a worker's GPU, checked before a job loads anything.
    memory_plan: Literal["enforce", "off"] = Field(
        "enforce",
        description="enforce: a job that cannot fit fails at once with a message, a training that "
        "fits only with gradient checkpointing gets it; off: jobs run as asked",
    )
    gpu_memory_headroom_gib: float = Field(
        1.5, ge=0, description="GPU memory left free beyond a job's estimate (fragmentation, CUDA workspaces)"
    )
    training_releases_generation_model: Literal["always", "when_needed"] = Field(
        "always",
        description="always: a training first drops the base the generation side of this worker "
        "holds (one copy of the base per GPU); when_needed: only when the training would "
        "not fit beside it (80+ GB cards keep generation warm)",
    )

    # Webhooks (webhooks/): sent by every worker's sender thread from the deliveries table, never by the API.
    webhook_allow_private: bool = Field(
        False,
        description="1 = webhook URLs may resolve to loopback / private / link-local addresses (tests, "
        "a receiver on the same private network); refused otherwise, at request and send time",
    )
    webhook_retry_schedule_s: str = Field(
        "5,30,120,600,1800,3600,7200",
        description="seconds before each retry of a failed delivery (comma list); "
        "the default keeps trying for about 3.7 h, then gives up",
    )
    webhook_progress_interval_s: float = Field(
        5.0, ge=0, description="a job's progress webhook is sent at most this often"
    )
    webhook_poll_s: float = Field(1.0, gt=0, description="how often a sender looks for events and due deliveries")
    webhook_timeout_s: float = Field(10.0, gt=0, description="a receiver answering slower than this has failed")

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        try:
            delays = tuple(float(x) for x in self.webhook_retry_schedule_s.split(",") if x.strip())
        except ValueError:
            raise ValueError("O1LORA_WEBHOOK_RETRY_SCHEDULE_S must be a comma list of seconds") from None
        if any(d < 0 for d in delays):
            raise ValueError("O1LORA_WEBHOOK_RETRY_SCHEDULE_S must not hold negative delays")
        return delays

    @property
    def uses_bundled_model(self) -> bool:
        """model_path is the model shipped in models/o1-shapes (however the path is spelled)."""
        return self.model_path.expanduser().resolve() == BUNDLED_MODEL.resolve()

    @property
    def default_training_preset(self) -> str | None:
        """The preset a training request without one gets (None: the recipe's defaults). Names are checked
        against core.train.presets by the API at start: this layer knows no presets."""
        if self.training_preset == "auto":
            return "bundled" if self.uses_bundled_model else None
        return None if self.training_preset == "none" else self.training_preset

    @property
    def default_generation_size(self) -> tuple[int, int]:
        """(width, height) of a generation request that gives neither."""
        if self.generation_size == "auto":
            return (256, 256) if self.uses_bundled_model else (1024, 1024)
        w, h = (int(v) for v in self.generation_size.split("x"))
        return w, h

    @property
    def default_generation_sampling(self) -> str | dict:
        """What a full-preset request that leaves out steps or CFG gets: "preset" (the preset's own), "bundled"
        (the bundled model's, core.presets.BUNDLED_MODEL_SAMPLING: the API resolves it, this layer knows no
        presets) or {"steps", "guidance"}."""
        if self.generation_sampling == "auto":
            return "bundled" if self.uses_bundled_model else "preset"
        if self.generation_sampling == "preset":
            return "preset"
        steps, guidance = self.generation_sampling.split(",")
        return {"steps": int(steps), "guidance": float(guidance)}

    @model_validator(mode="after")
    def _generation_size_reads(self) -> "Settings":
        w, h = self.default_generation_size
        if not (32 <= w <= 4096 and 32 <= h <= 4096 and w % 32 == 0 and h % 32 == 0):
            raise ValueError(
                f"O1LORA_GENERATION_SIZE={self.generation_size!r}: width and height must be multiples of 32 "
                "from 32 to 4096"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'o1lora.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_store_cache_dir(self) -> Path:
        return (self.store_cache_dir or self.data_dir / "cache").resolve()

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or self.broker_url

    @property
    def store_location(self) -> tuple[str, str] | None:
        """(bucket, key prefix) of an ``s3://`` store_url; None for the local store."""
        if not self.store_url:
            return None
        parts = urlsplit(self.store_url)
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if parts.scheme != "s3" or not _BUCKET.match(bucket) or parts.query or parts.fragment or "//" in prefix:
            raise ValueError(
                f"O1LORA_STORE_URL must read s3://bucket or s3://bucket/prefix (got {self.store_url!r}); "
                "leave it empty for the local artifact folder"
            )
        return bucket, prefix

    @model_validator(mode="after")
    def _store_url_reads(self) -> "Settings":
        self.store_location  # a bad URL fails at start, naming the variable, not at the first upload
        return self

    @model_validator(mode="after")
    def _retry_schedule_reads(self) -> "Settings":
        self.webhook_retry_delays  # a bad schedule fails at start, naming the variable, not at the first retry
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> "Settings":
        if self.env == "development":
            return self
        for name in ("database_url", "broker_url", "redis_url"):
            password = urlsplit(getattr(self, name)).password
            if password and password.lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"O1LORA_{name.upper()} uses the placeholder password {password!r}; "
                    "set a real one (placeholders are only allowed with O1LORA_ENV=development)"
                )
        if self.s3_secret_access_key.lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "O1LORA_S3_SECRET_ACCESS_KEY is a placeholder; set a real one "
                "(placeholders are only allowed with O1LORA_ENV=development)"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()

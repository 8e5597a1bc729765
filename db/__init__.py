"""The database, shared by api/, jobqueue/ and worker/: models, sessions, migrations, data access.

No torch, no FastAPI, no Celery here. Every data-access function takes the Session first and keyword-only
arguments after it; every state transition is ONE conditional UPDATE and commits itself, returning whether it
happened (False = the row was not in the expected state / this worker does not own it).

Settings (service/settings.py, the only place env is read):
    from service.settings import get_settings; s = get_settings()
    s.resolved_database_url  s.broker_url  s.resolved_redis_url  s.resolved_artifact_dir  s.model_path
    s.data_dir  s.heartbeat_timeout_s

Sessions and schema (db/session.py, db/migrate.py):
    Session = make_sessionmaker(url)            # sessionmaker, expire_on_commit=False
    upgrade(url)                                # alembic upgrade head; also `python -m db.migrate [URL]`
    python -m db.create_owner NAME              # prints a new API key

Training (db/training.py):
    create_training(s, *, owner_id, dataset_id, name, trigger, params, total_steps) -> TrainingJob
    get_training(s, *, job_id, owner_id=None) -> TrainingJob | None
    list_trainings(s, *, owner_id, status=None, limit=20, offset=0) -> (rows, total)
    mark_training_enqueued(s, *, job_id, celery_task_id) -> bool          # queued only; sets enqueued_at
    claim_training(s, *, job_id, worker_id) -> bool                       # queued -> running, attempt += 1
    take_over_stale_training(s, *, job_id, worker_id, stale_before) -> bool  # running+dead heartbeat -> me
    heartbeat_training(s, *, job_id, worker_id) -> bool
    record_progress(s, *, job_id, worker_id, step, total_steps, loss, seconds_per_step, eta_seconds) -> bool
    record_checkpoint(s, *, job_id, worker_id, path, step) -> bool
    record_validation(s, *, job_id, worker_id, validation) -> bool   # the validation summary (issue 14)
    is_cancel_requested(s, *, job_id) -> bool
    add_preview(s, *, job_id, step, index, storage_key, prompt="") -> Preview
    finish_training(s, *, job_id, worker_id, peft_prefix, comfyui_key, rank, alpha, size_bytes=0, meta=None)
        -> lora_id | None                                                 # running -> succeeded + LoRA row
    fail_training(s, *, job_id, worker_id, error) -> bool
    mark_training_canceled(s, *, job_id, worker_id) -> bool               # after a cooperative stop
    cancel_training(s, *, job_id, owner_id) -> "canceled" | "cancel_requested" | None
    stale_running_trainings(s, *, stale_before) -> list[TrainingJob]
    requeue_stale_training(s, *, job_id, stale_before) -> bool            # running+dead -> queued (re-send it)
    hand_back_training(s, *, job_id, worker_id) -> bool                   # mine, running -> queued (warm shutdown)
    cancel_queued_on_request(s, *, job_id) -> bool                        # queued+cancel_requested -> canceled
    queued_unsent_trainings(s, *, sent_before) -> list[TrainingJob]       # sent (or, never sent, created) before
    revoke_api_keys(s, *, owner_id, prefix) -> int   (db/owners.py; also create_owner, create_api_key, owner_for_key)

Generations (db/generations.py): the same shape, also job_id=:
    create_generation, get_generation, list_generations, mark_generation_enqueued, claim_generation,
    take_over_stale_generation, record_generation_progress(s, *, job_id, worker_id, step),
    add_generation_image(s, *, job_id, index, storage_key, width, height, seed),
    finish_generation, fail_generation(s, *, job_id, worker_id, error), stale_running_generations,
    requeue_stale_generation, queued_unsent_generations
    cancel_generation(s, *, job_id, owner_id) -> "canceled" | "cancel_requested" | None
    is_generation_cancel_requested(s, *, job_id) -> bool
    mark_generation_canceled(s, *, job_id, worker_id) -> bool            # after a cooperative stop
    add_generation_warnings(s, *, job_id, warnings: list[str])           # Generation.warnings (JSON list)
    Generation.params = {"prompt", "negative_prompt", "loras": [{"id", "scale"}], "width", "height", "steps",
                         "guidance", "seed", "preset", "num_images", "reference_images": [image id, ...]}

Reference images (db/images.py): create_image, get_image, list_images, delete_image (-> the row | None);
    UploadedImage (table "images"): name, storage_key (images/<id>.<ext>), format, width, height, size_bytes.

Datasets / LoRAs (db/datasets.py, db/loras.py): create_*, get_*, list_*, delete_* ("deleted"|"in_use"|None).
    get_* and list_* of every resource go through db/query.py (owned_row, owned_page: newest first).
    Dataset.storage_prefix: the store prefix of its files (images + same-name .txt captions, sub-folders kept).
    Lora.peft_prefix (PEFT folder in the store), Lora.comfyui_key (one safetensors), Lora.original_key (import).

Beside the database, in service/ (not db/: they hold no rows):
Artifact store (service/store.py; service/stores.py):  store = make_store(settings)  (local folder or S3 bucket)
    put_bytes(key, data), put_file(key, path), put_stream(key, chunks), put_dir(prefix, dir) -> keys,
    open(key) -> BinaryIO, exists(key), size(key), list(prefix), delete_prefix(prefix),
    local_path(key) -> Path | None, fetch_dir(prefix, dest) -> Path (a local folder with those files)
    Keys used: datasets/<id>/..., loras/<id>/{original.*, lora.safetensors, peft/...} (imports),
    images/<id>.<ext> (reference uploads); the worker chooses its own under trainings/<id>/ and generations/<id>/

Live events (service/events.py): channel(kind, job_id); publish(redis_client, *, kind, job_id, type, data)
    kind: "training" | "generation"; type: "progress" | "preview" | "status" | "image" (payloads in the module).

Job messages (jobqueue/): the kinds table names each kind's task, queue and row functions; the one path,
    jobqueue.enqueue.enqueue(s, kind, job_id), sends ("o1lora.train" | "o1lora.generate", args=[job_id]) after
    the row is committed (the API: in a background task after the response), then mark_*_enqueued. A failed send leaves enqueued_at NULL for the reconciler.
Which file a worker loads for a Lora row: comfyui_key if set, else peft_prefix (a PEFT folder), else original_key.
"""

"""One training job: row -> core.train.train -> row (LoRA files in the store, the job's LoRA row).

Called by the `o1lora.train` task (worker/tasks.py); runnable on its own for a queued row:

    python -m worker.training JOB_ID

Checkpoints are copied into the artifact store as the trainer writes them and the row records the newest
one, so any worker (on any machine sharing the store) resumes a job whose worker died from there. The
trainer asks `should_stop` every step; the answer comes from the row's cancel flag (read at most every
progress_interval_s), the time limit, a lost heartbeat, and a warm shutdown of this worker.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select

from db.datasets import get_dataset
from db.models import Lora, TrainingJob
from db.training import (
    add_preview,
    fail_training,
    finish_training,
    heartbeat_training,
    is_cancel_requested,
    mark_training_canceled,
    record_checkpoint,
    record_phase,
    record_progress,
    record_validation,
)
from worker import memory_plan
from worker.context import WorkerContext, ctx
from worker.memory_plan import GIB, MemoryPlanError, ModelShape, out_of_memory_message, plan_training
from worker.off_thread import OffThread
from worker.pacing import Every, Heartbeat
from worker.runs import JobLost, db_call, hand_back, local_dir, publish, run_with_heartbeat, take
from worker.stop_signals import is_main_rank, terminate_requested, worker_shutting_down  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def preview_url(job_id: str, step: int, index: int) -> str:
    return f"/v1/trainings/{job_id}/previews/{step}/{index}"


def checkpoint_every(params: dict, steps: int) -> int:
    """The job's checkpoint period: asked for, else ~10 per run and at most 500 steps of work at risk."""
    return int(params.get("checkpoint_every") or max(1, min(500, steps // 10)))


# Set when the memory plan released the generation model mid-setup (reloaded after the training).
_released_when_needed = threading.Event()

# Request keys that describe the job (the row, or datasets the worker fetches), not the trainer's knobs.
JOB_KEYS = ("dataset_id", "name", "validation_dataset_id", "preset")  # preset: already applied by the API


def train_config(
    c: WorkerContext,
    job: TrainingJob,
    data_dir: Path,
    out_dir: Path,
    resume: Path | None,
    validation_dir: Path | None = None,
):
    from core.train import TrainConfig

    # every request key but the job's must be a trainer knob
    return TrainConfig.from_request(
        job.params,
        not_training=JOB_KEYS,
        validation_dir=str(validation_dir) if validation_dir else None,
        model_path=str(c.settings.model_path),
        data_dir=str(data_dir),
        out_dir=str(out_dir),
        trigger=job.trigger,
        steps=job.total_steps,
        checkpoint_every=checkpoint_every(job.params, job.total_steps),
        keep_checkpoints=2,
        resume=str(resume) if resume else None,
        base_model_name=c.settings.model_path.name,
    )


def run_training(job_id: str, c: WorkerContext | None = None) -> str:
    """Run (or resume) the job if this worker should (see worker.runs.take); returns what happened."""
    c = c or ctx()
    taken = take(c, "training", job_id)
    if not taken.runs:
        return taken.outcome
    released = False
    if c.settings.training_releases_generation_model == "always":
        released = release_generation_model()  # one copy of the base per GPU: the trainer loads its own
    try:
        # Beat already: the first torch import (counting GPUs) can outlast a short heartbeat timeout on a busy
        # machine, and the reconciler would then take a job over that is merely starting.
        with Heartbeat(
            lambda: _beat(c, job_id), c.heartbeat_interval_s, lambda e: log.warning("heartbeat: %s", e)
        ):
            ranks = training_processes(c)
        if ranks > 1:
            from worker.train_ranks import run_ranks

            return run_ranks(c, taken.job, ranks)
        return run_owned(c, taken.job)
    finally:
        if released or _released_when_needed.is_set():
            _released_when_needed.clear()
            rewarm_generation_model(c)


def _beat(c: WorkerContext, job_id: str) -> bool:
    with c.sessions() as s:
        return heartbeat_training(s, job_id=job_id, worker_id=c.worker_id)


def training_processes(c: WorkerContext) -> int:
    """DDP ranks for one job: the setting, or one per visible GPU (without importing torch when set)."""
    if c.settings.train_processes:
        return c.settings.train_processes
    import torch

    return max(1, torch.cuda.device_count())


def release_generation_model() -> bool:
    """Drop the base model the generation side of this process holds, and give its GPU memory back.
    The next generation loads it again (from the page cache: seconds). True when one was held."""
    from worker import generation

    host = getattr(generation, "_host", None)
    if host is None or not host.release():
        return False
    left = free_gpu_memory()
    log.info("released the generation model for a training; %.2f GiB still allocated", left / GIB)
    return True


def rewarm_generation_model(c: WorkerContext) -> None:
    """After a training that released it, load the generation model again and compile its warm-up sizes, on
    a thread (generation requests wait on the host's lock), so the next image does not pay for it."""
    from worker import generation

    warm = getattr(generation, "warm_up", None)
    if warm is None:
        return
    threading.Thread(target=_quietly, args=(warm, c), name="rewarm-generation", daemon=True).start()


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # a failed warm-up only costs the next request its compilation
        log.exception("re-warming the generation model failed")


def free_gpu_memory() -> int:
    """Collect garbage and hand cached blocks back to the driver; bytes still allocated by this process.

    Compiled graphs can keep tensors of a dropped model alive (dynamo's cache holds references through
    guards); when memory stays allocated between jobs and no generation model is resident (which would
    own it, and whose compiled graphs must survive), that cache is dropped too."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return 0
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    from worker import generation

    resident = getattr(getattr(generation, "_host", None), "_model", None) is not None
    if torch.cuda.memory_allocated() > GIB // 2 and not resident:
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def fit_to_gpu(c: WorkerContext, job: TrainingJob, cfg):
    """The memory plan for this training: the config to run with, or MemoryPlanError (the owner's message)."""
    mem = memory_plan.gpu_memory() if c.settings.memory_plan == "enforce" and not cfg.full else None
    if mem is None:
        return cfg
    from core.data.reference_need import largest_reference_set
    from core.fp8 import resolve_base_precision

    shape = ModelShape.from_checkpoint(cfg.model_path)
    headroom = int(c.settings.gpu_memory_headroom_gib * GIB)
    precision = resolve_base_precision(cfg.base_precision, "cuda")  # what the trainer will resolve it to
    # an edit dataset: every sample of a batch may be the one with the most reference tokens (headers only)
    refs = largest_reference_set(cfg.data_dir, cfg.resolution) if cfg.data_dir else None

    def plan(free: int, total: int):
        return plan_training(
            shape,
            resolution=cfg.resolution,
            batch=cfg.batch_size,
            rank=cfg.rank,
            checkpointing=cfg.gradient_checkpointing,
            free_bytes=free,
            total_bytes=total,
            headroom_bytes=headroom,
            base_precision=precision,
            reference_tokens=refs.tokens if refs else 0,
            reference_count=refs.count if refs else 0,
            # compile off / offload only where nobody chose them (the API sets neither; the CLI may)
            small_card_fallbacks=cfg.compile == "auto" and not cfg.offload_blocks,
            # a rank of a multi-GPU run keeps the vision tower on its GPU; else the plan's rule (the trainer's):
            # on the GPU only for a dataset with references
            vision_resident=True if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        )

    p = plan(*mem)
    if p.action != "run" and release_generation_model():  # "when_needed": it was kept until now
        _released_when_needed.set()
        p = plan(*memory_plan.gpu_memory())
    p.raise_if_refused()
    if p.message:
        log.warning("training %s: %s", job.id, p.message)
    log.info(
        "training %s: memory plan %s, checkpointing %s, eager %s, offload %d, ~%.1f GiB of %.1f GiB free",
        job.id,
        p.action,
        p.checkpointing,
        p.eager,
        p.offload_blocks,
        p.need_bytes / GIB,
        p.free_bytes / GIB,
    )
    extra = {"compile": False} if p.eager else {}
    if p.offload_blocks:
        extra["offload_blocks"] = p.offload_blocks
    return replace(cfg, gradient_checkpointing=p.checkpointing, **extra)


class _NoHeartbeat:
    """The heartbeat of the ranks other than 0 of a multi-GPU job: they never own the row, so never lose it."""

    lost = threading.Event()


NO_HEARTBEAT = _NoHeartbeat()


def run_owned(c: WorkerContext, job: TrainingJob) -> str:
    """Train a job this worker already owns: heartbeat, the trainer, and the row's final state."""
    return run_with_heartbeat(
        c,
        "training",
        job.id,
        beat=lambda: _beat(c, job.id),
        body=lambda hb: TrainingRun(c, job, hb).run(),
        fail=lambda s, error: fail_training(s, job_id=job.id, worker_id=c.worker_id, error=error),
    )


class TrainingRun:
    """This process's part of one attempt of a training job its worker owns: the data and config, the core
    trainer, and the trainer's callbacks that report to the row, the store and the event channel.

    Both paths use it: a one-process job and rank 0 of a multi-GPU job through run_owned (with the heartbeat),
    the other ranks of a multi-GPU job directly with NO_HEARTBEAT (worker.rank_entry; the core runs no
    callbacks there). ``run()`` returns the outcome: succeeded / canceled / failed / requeued / rank-done.
    """

    def __init__(self, c: WorkerContext, job: TrainingJob, hb: Heartbeat):
        self.c, self.job, self.hb = c, job, hb
        self.what = f"training {job.id}"
        self.prefix = f"trainings/{job.id}"
        self.cfg = None
        self.last: dict = {}  # the newest on_step values
        self.written_step: int | None = None  # the step the row holds
        self.stop_reason: str | None = None  # the first reason should_stop saw: lost/time/shutdown/cancel
        self.deadline = float("inf")  # set once the config is ready: preparing it is not training
        # The throttled DB calls of the loop (progress rows, the cancel flag) run on helper threads: the training
        # thread has just synchronised with the GPU when it reports, so a DB call made there leaves the GPU idle.
        # Each goes through db_call: a database blip pauses it, it never fails the job. Two threads: progress
        # writes never starve the cancel poll.
        self.db, self.cancel_poll = OffThread(), OffThread()
        self.cancel_seen = threading.Event()
        self.validation_loss: float | None = None  # the newest one (progress events carry it)

    def run(self) -> str:
        from core.train import TrainCallbacks, train

        c, job = self.c, self.job
        self.cfg = self._config()
        self.deadline = time.monotonic() + c.settings.train_time_limit_s
        self.write_due, self.poll_due = (
            Every(c.settings.progress_interval_s),
            Every(c.settings.progress_interval_s),
        )
        oom = None
        try:
            result = train(
                self.cfg,
                TrainCallbacks(
                    on_step=self.on_step,
                    on_preview=self.on_preview,
                    on_checkpoint=self.on_checkpoint,
                    should_stop=self.should_stop,
                    on_validation=self.on_validation,
                    on_prepare=self.on_prepare,
                ),
            )
            self.db.wait()
        except Exception as e:
            if type(e).__name__ != "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
                raise
            oom = out_of_memory_message("training", e)
        finally:
            # The trainer's model, optimizer and activations are garbage now (reference cycles included): hand
            # the GPU back before the next job of this worker (a generation reloads its base into it).
            self.db.close()
            self.cancel_poll.close()
            left = free_gpu_memory()
            log.info("training %s: GPU memory handed back; %.2f GiB still allocated", job.id, left / GIB)
        if oom is not None:  # raised here, outside the handler: the traceback's tensors are gone
            raise MemoryPlanError(oom)
        if not is_main_rank():
            return "rank-done"  # the core ran no callbacks here; rank 0 writes the row and the files
        if result.stopped:
            return _stopped(c, job, self.stop_reason or "cancel", result)
        return _succeeded(c, job, self.cfg, result)

    def _config(self):
        """The job's dataset and resume checkpoint as local folders, a fresh work folder, and the TrainConfig
        fitted to this GPU's free memory."""
        c, job = self.c, self.job
        dataset = (
            db_call(c, lambda s: get_dataset(s, dataset_id=job.dataset_id), what=f"{self.what}: dataset")
            if job.dataset_id
            else None
        )
        if dataset is None:
            raise ValueError(f"dataset {job.dataset_id} no longer exists")
        data_dir = local_dir(c, dataset.storage_prefix)
        validation_dir = None
        if job.params.get("validation_dataset_id"):
            vid = job.params["validation_dataset_id"]
            held = db_call(c, lambda s: get_dataset(s, dataset_id=vid), what=f"{self.what}: validation dataset")
            if held is None:
                raise ValueError(f"validation dataset {vid} no longer exists")
            validation_dir = local_dir(c, held.storage_prefix)
        # A fresh work folder per attempt: a dead attempt's unrecorded checkpoints must not mix with this one's.
        work = c.settings.data_dir.resolve() / "work" / "trainings" / job.id
        out_dir = work / f"attempt-{job.attempt}"
        if work.is_dir() and is_main_rank():
            for old in work.iterdir():
                if old != out_dir:
                    shutil.rmtree(old, ignore_errors=True)
        resume = local_dir(c, job.checkpoint_path) if job.checkpoint_path else None
        if resume is not None:
            log.info("training %s: resuming from %s (step %s)", job.id, job.checkpoint_path, job.checkpoint_step)
        return fit_to_gpu(c, job, train_config(c, job, data_dir, out_dir, resume, validation_dir))

    def _still_owned(self, ok: bool) -> None:
        if not ok:
            raise JobLost()

    def _write_progress(self, values: dict | None = None) -> None:
        c, job = self.c, self.job
        values = dict(values or self.last)
        self._still_owned(
            db_call(
                c,
                lambda s: record_progress(s, job_id=job.id, worker_id=c.worker_id, **values),
                what=f"{self.what}: progress",
            )
        )
        self.written_step = values["step"]
        publish(
            c, "training", job.id, "progress", {**values, "validation_loss": self.validation_loss, "phase": None}
        )

    def on_prepare(self, what: str, done: int, total: int) -> None:
        """Work before the first step (the prior images: minutes on a full-size model) shows on the row and the
        event stream, so the job does not look stuck at step 0; written off the training thread."""
        if self.hb.lost.is_set():
            raise JobLost()
        self.db.check()
        c, job, phase = self.c, self.job, f"{what}: {done} of {total}"

        def write() -> None:
            self._still_owned(
                db_call(
                    c,
                    lambda s: record_phase(s, job_id=job.id, worker_id=c.worker_id, phase=phase),
                    what=f"{self.what}: phase",
                )
            )
            publish(c, "training", job.id, "progress", {"phase": phase})

        self.db.submit(write)

    def _poll_cancel(self) -> None:
        if db_call(
            self.c, lambda s: is_cancel_requested(s, job_id=self.job.id), what=f"{self.what}: cancel check"
        ):
            self.cancel_seen.set()

    def on_step(self, step, total, loss, smoothed, lr, sec, eta) -> None:
        if self.hb.lost.is_set():
            raise JobLost()
        self.db.check()  # a background write that found the job taken over raises JobLost here
        self.last.update(step=step, total_steps=total, loss=smoothed, seconds_per_step=sec, eta_seconds=eta)
        # Throttled, but never skipped at a checkpoint, the end or a stop: the row then matches what a resume
        # sees (the trainer reports a step one step late and saves a stop's checkpoint after that report).
        if step == total or step % self.cfg.checkpoint_every == 0 or self.stop_reason:
            self.db.wait()
            self._write_progress()
        elif self.write_due():
            self.db.submit(self._write_progress, dict(self.last))

    def on_validation(self, step, loss, baseline, summary) -> None:
        """A validation loss (or the adapter-off baseline): the row holds the whole summary, the channel says it.
        Written off the training thread like progress; the checkpoint that follows waits for it (db.wait)."""
        c, job = self.c, self.job
        if not baseline:
            self.validation_loss = loss

        def write() -> None:
            self._still_owned(
                db_call(
                    c,
                    lambda s: record_validation(s, job_id=job.id, worker_id=c.worker_id, validation=summary),
                    what=f"{self.what}: validation",
                )
            )
            publish(
                c,
                "training",
                job.id,
                "validation",
                {"step": step, "loss": loss, "baseline": baseline, "summary": summary},
            )

        self.db.submit(write)

    def on_checkpoint(self, step, path: Path) -> None:
        # Per attempt: a worker judged dead that is still running must never write into the folder the row
        # of the new owner points at (its record_checkpoint then fails, and it stops).
        c, job = self.c, self.job
        if self.hb.lost.is_set():
            raise JobLost()
        key = f"{self.prefix}/checkpoints/attempt-{job.attempt}/{path.name}"
        c.store.put_dir(key, path)

        def record(s) -> tuple[str | None, bool]:
            previous = s.get(TrainingJob, job.id).checkpoint_path
            return previous, record_checkpoint(s, job_id=job.id, worker_id=c.worker_id, path=key, step=step)

        previous, ok = db_call(c, record, what=f"{self.what}: checkpoint")
        self._still_owned(ok)
        if previous and previous != key:
            c.store.delete_prefix(previous)  # the row points at the new one: the old one is garbage

    def on_preview(self, step, paths) -> None:
        c, job, prompts = self.c, self.job, self.cfg.sample_prompts
        for index, path in enumerate(paths):
            key = f"{self.prefix}/previews/{path.name}"
            c.store.put_file(key, path)
            prompt = prompts[index] if index < len(prompts) else ""
            db_call(
                c,
                lambda s: add_preview(s, job_id=job.id, step=step, index=index, storage_key=key, prompt=prompt),
                what=f"{self.what}: preview",
            )
            publish(
                c,
                "training",
                job.id,
                "preview",
                {"step": step, "index": index, "url": preview_url(job.id, step, index)},
            )

    def should_stop(self) -> bool:
        self.db.check()
        self.cancel_poll.check()
        reason = None
        if self.hb.lost.is_set():
            reason = "lost"
        elif time.monotonic() > self.deadline:
            reason = "time"
        elif worker_shutting_down():
            reason = "shutdown"
        elif self.cancel_seen.is_set():
            reason = "cancel"
        elif self.poll_due():
            self.cancel_poll.submit(self._poll_cancel)  # seen at a later step
        self.stop_reason = self.stop_reason or reason
        if self.stop_reason and self.last:
            self.db.wait()
            if self.written_step != self.last["step"]:
                self._write_progress()  # the trainer now saves a checkpoint here: the row must say this step
        return self.stop_reason is not None


def _stopped(c: WorkerContext, job: TrainingJob, why: str, result) -> str:
    """The trainer stopped early and saved a checkpoint (already recorded by on_checkpoint)."""
    if why == "lost":
        raise JobLost()
    what = f"training {job.id}: {why}"
    if why == "cancel":
        db_call(c, lambda s: mark_training_canceled(s, job_id=job.id, worker_id=c.worker_id), what=what)
        status = "canceled"
    elif why == "time":
        error = f"time limit: still running after {c.settings.train_time_limit_s:.0f} s (train_time_limit_s)"
        db_call(c, lambda s: fail_training(s, job_id=job.id, worker_id=c.worker_id, error=error), what=what)
        status = "failed"
    else:
        # Warm shutdown: hand the job back now rather than after a heartbeat timeout.
        hand_back(c, "training", job.id)
        log.info("training %s: worker shutting down at step %d; re-queued", job.id, result.steps_done)
        return "requeued"
    publish(c, "training", job.id, "status", {"status": status})
    log.info("training %s: %s at step %d", job.id, status, result.steps_done)
    return status


def _checkpoint_choices(c: WorkerContext, prefix: str, result) -> tuple[dict, int]:
    """Which step the LoRA row's files hold ("published": "last" or "best"), where the other one is stored when
    they differ (what GET /v1/loras/{id}/file?which=last|best serves), and the bytes that other one takes."""
    best, last = result.validation["best_step"], result.steps_done
    choices: dict = {"published": "last", "last": {"step": last}, "best": {"step": best}}
    if result.other_lora is None:  # one LoRA is both (the best is the last step), or no best yet
        return choices, 0
    which, step, folder, file = result.other_lora
    choices["published"] = "best" if which == "last" else "last"
    peft_keys = c.store.put_dir(f"{prefix}/{which}/peft", folder)
    comfy = f"{prefix}/{which}/lora.safetensors"
    c.store.put_file(comfy, file)
    choices[which] = {"step": step, "peft_prefix": f"{prefix}/{which}/peft", "comfyui_key": comfy}
    return choices, sum(c.store.size(k) for k in peft_keys) + c.store.size(comfy)


def _succeeded(c: WorkerContext, job: TrainingJob, cfg, result) -> str:
    prefix = f"trainings/{job.id}/lora/attempt-{job.attempt}"  # see on_checkpoint: per attempt
    peft_keys = c.store.put_dir(f"{prefix}/peft", result.lora_dir)
    comfy_key = f"{prefix}/lora.safetensors"
    c.store.put_file(comfy_key, result.lora_file)
    size = sum(c.store.size(k) for k in peft_keys) + c.store.size(comfy_key)
    meta = {
        "steps": result.steps_done,
        "final_loss": result.smoothed_loss,
        "resolution": cfg.resolution,
        "base_model": cfg.base_model_name,
        "attempts": job.attempt,
    }
    if result.validation is not None:
        choices, extra = _checkpoint_choices(c, prefix, result)
        meta.update(validation=result.validation, early_stopped=result.early_stopped, checkpoints=choices)
        size += extra
    tried = [False]

    def finish(s) -> str | None:
        if tried[0]:
            # A retry: the first try's COMMIT may have landed before its connection broke.
            done = s.scalar(select(Lora.id).where(Lora.training_job_id == job.id))
            if done is not None:
                return done
        tried[0] = True
        return finish_training(
            s,
            job_id=job.id,
            worker_id=c.worker_id,
            peft_prefix=f"{prefix}/peft",
            comfyui_key=comfy_key,
            rank=cfg.rank,
            alpha=cfg.alpha,
            size_bytes=size,
            meta=meta,
        )

    lora_id = db_call(c, finish, what=f"training {job.id}: finish")
    if lora_id is None:
        raise JobLost()
    publish(c, "training", job.id, "status", {"status": "succeeded", "lora_id": lora_id})
    shutil.rmtree(Path(cfg.out_dir).parent, ignore_errors=True)  # the work folder; everything is in the store
    return "succeeded"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run_training(sys.argv[1]))

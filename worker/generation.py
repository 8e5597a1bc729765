"""Generation jobs: rows -> resident model (+ LoRAs with scales) -> PNGs in the store -> rows.

Called by the `o1lora.generate` task (worker/tasks.py); runnable on its own for a queued row:

    python -m worker.generation GENERATION_ID

One request is one batch: the text prefix is encoded, the LoRAs are set and the reference images (if any) go
through the vision tower once, and every image still
missing (a re-run keeps the images already stored) is sampled in one batched sampler call, image i seeded
with seed + i, so it equals the image a one-by-one run gives. Compatible queued generations can join that
batch (worker/generation_batch.py); each row keeps its own progress, images, cancel and outcome.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field

from db.generations import (
    add_generation_image,
    add_generation_warnings,
    fail_generation,
    finish_generation,
    is_generation_cancel_requested,
    mark_generation_canceled,
    record_generation_progress,
)
from db.loras import get_lora
from db.models import Generation, GenerationImage
from worker.context import WorkerContext, ctx
from worker.memory_plan import check_generation, merge_reserve, out_of_memory_message
from worker.model_host import ModelHost, parse_sizes
from worker.pacing import Every, Heartbeat
from worker.png_encode import encode_pngs
from worker.reference_images import load_references
from worker.runs import TimeLimitExceeded, db_call, hand_back, local_dir, local_file, publish, short_error, take

log = logging.getLogger(__name__)

_host: ModelHost | None = None


def host_key(s) -> tuple:
    """The settings a resident host is built from (a change builds a new one)."""
    return (
        s.model_path,
        s.lora_cache_size,
        s.generate_compile,
        s.generate_cuda_graphs,
        s.lora_max_rank,
        s.cfg_split_pixels,
        s.generate_base_precision,
        s.generate_offload_blocks,
        s.lora_apply,
    )


def host(c: WorkerContext) -> ModelHost:
    """The process's resident model; built on the first generation, kept for every later one."""
    global _host
    s = c.settings
    key = host_key(s)
    if _host is None or _host.key != key:
        _host = ModelHost(
            s.model_path,
            s.lora_cache_size,
            compile=s.generate_compile,
            cuda_graphs=s.generate_cuda_graphs,
            lora_max_rank=s.lora_max_rank,
            cfg_split_pixels=s.cfg_split_pixels,
            compile_cache_dir=s.data_dir / "compile-cache",
            base_precision=s.generate_base_precision,
            offload_blocks=s.generate_offload_blocks,
            lora_apply=s.lora_apply,
            merge_reserve_bytes=merge_reserve(s, s.model_path, configured_sizes(s)),
        )
        _host.key = key
    return _host


def configured_sizes(s) -> list[tuple[int, int]]:
    """The sizes O1LORA_WARMUP_SIZES names ("auto" and "" name none)."""
    text = s.warmup_sizes.strip()
    return [] if text.lower() in ("", "auto") else parse_sizes(text)


def warmup_sizes(c: WorkerContext, h: ModelHost) -> list[tuple[int, int]]:
    """O1LORA_WARMUP_SIZES; "auto" = 1024x1024 when the denoise is compiled (CUDA by default), else none."""
    if c.settings.warmup_sizes.strip().lower() == "auto":
        return [(1024, 1024)] if h.compile_backend() else []
    return configured_sizes(c.settings)


def warm_up(c: WorkerContext | None = None) -> dict[str, float]:
    """Load the model and compile the configured sizes (a generation worker calls it when it starts)."""
    c = c or ctx()
    h = host(c)
    return h.warm_up(warmup_sizes(c, h))


def consumed_queues(consumer) -> set[str]:
    """Names of the queues a Celery worker consumes (from its consumer, else from its app's settings)."""
    for get in (lambda: consumer.task_consumer.queues, lambda: consumer.app.amqp.queues.consume_from.values()):
        try:
            return {q.name for q in get()}
        except AttributeError:
            continue
    return set()


def start_warm_up(consumer=None) -> threading.Thread | None:
    """warm_up in a daemon thread when this worker consumes the generate queue and sizes are configured."""
    from jobqueue.kinds import GENERATION

    queues = consumed_queues(consumer)  # empty when not started by Celery: then assume it serves generations
    c = ctx()
    if (queues and GENERATION.queue not in queues) or not warmup_sizes(c, host(c)):
        return None

    def run():
        try:
            log.info("warm-up done: %s", warm_up(c))
        except Exception:  # a failed warm-up only costs the first request its compile
            log.exception("warm-up failed")

    t = threading.Thread(target=run, name="o1lora-warm-up", daemon=True)
    t.start()
    return t


def image_url(generation_id: str, index: int) -> str:
    return f"/v1/generations/{generation_id}/images/{index}"


def lora_path(c: WorkerContext, lora_id: str, owner_id: str):
    """Local file or folder of a stored LoRA the owner may use; ValueError names what is wrong."""
    lora = db_call(c, lambda s: get_lora(s, lora_id=lora_id, owner_id=owner_id), what=f"LoRA {lora_id}: read")
    if lora is None:
        raise ValueError(f"LoRA {lora_id} does not exist (deleted after the request?)")
    if lora.comfyui_key:
        return local_file(c, lora.comfyui_key)
    if lora.peft_prefix:
        return local_dir(c, lora.peft_prefix)
    if lora.original_key:
        return local_file(c, lora.original_key)
    raise ValueError(f"LoRA {lora_id} has no stored file")


def worker_shutting_down() -> bool:
    from worker.stop_signals import worker_shutting_down as shutting_down  # the trainings' own test, reused

    return shutting_down()


@dataclass
class Row:
    """One claimed generation in the running batch."""

    gen: Generation
    todo: list[int]  # image indexes not stored yet
    progress: int = 0
    end: str | None = None  # set once the row stops: "canceled", "lost", "requeued", "failed", ...
    warnings: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.end is None


class _HandBack(Exception):
    """The worker is shutting down: give the running rows back to the queue."""


class _AllStopped(Exception):
    """Every row of the batch was canceled or lost: nothing left to compute."""


def run_generation(job_id: str, c: WorkerContext | None = None) -> str:
    """Run the generation if this worker should (see worker.runs.take); returns what happened to it."""
    c = c or ctx()
    taken = take(c, "generation", job_id)
    if not taken.runs:
        return taken.outcome
    from worker.generation_batch import join_batch

    rows = [taken.job] + join_batch(c, taken.job)
    return run_rows(c, rows)[job_id]


def missing_images(c: WorkerContext, gen: Generation) -> list[int]:
    """Image indexes without a stored image (a re-run after a hand-back or a takeover keeps the others)."""
    from sqlalchemy import select

    have = set(
        db_call(
            c,
            lambda s: list(
                s.scalars(select(GenerationImage.index).where(GenerationImage.generation_id == gen.id))
            ),
            what=f"generation {gen.id}: stored images",
        )
    )
    return [i for i in range(int(gen.num_images)) if i not in have]


def run_rows(c: WorkerContext, gens: list[Generation]) -> dict[str, str]:
    """Run claimed generations of one size and settings as one batch; {generation id: outcome}."""
    rows = [Row(g, missing_images(c, g)) for g in gens]

    def beat() -> bool:
        with c.sessions() as s:
            for r in rows:
                if (
                    r.active
                    and not record_generation_progress(s, job_id=r.gen.id, worker_id=c.worker_id, step=r.progress)
                    and r.end is None
                ):
                    r.end = "lost"  # (a row that just finished also fails this write: its end is set first)
        return any(r.active for r in rows)

    try:
        with Heartbeat(beat, c.heartbeat_interval_s, lambda e: log.warning("heartbeat: %s", e)):
            _generate(c, rows)
    except _HandBack:
        for r in rows:
            if r.active:
                hand_back(c, "generation", r.gen.id)
                log.info("generation %s: worker shutting down; handed back to the queue", r.gen.id)
                r.end = "requeued"
    except _AllStopped:
        pass
    except Exception as e:
        log.exception("generation batch %s failed", [r.gen.id for r in rows])
        oom = type(e).__name__ == "OutOfMemoryError"  # torch.cuda's: a message for the owner (memory plan)
        for r in rows:
            if r.active:
                _fail(c, r, out_of_memory_message("generation", e) if oom else short_error(e))
    for r in rows:
        if r.end == "canceled":
            db_call(
                c,
                lambda s, r=r: mark_generation_canceled(s, job_id=r.gen.id, worker_id=c.worker_id),
                what=f"generation {r.gen.id}: canceled",
            )
            publish(c, "generation", r.gen.id, "status", {"status": "canceled"})
        elif r.end == "lost":
            log.warning("generation %s: taken over by another worker; stopped", r.gen.id)
    return {r.gen.id: r.end or "succeeded" for r in rows}


def _fail(c: WorkerContext, r: Row, error: str) -> None:
    r.end = "failed"  # before the write: the heartbeat thread then leaves the row alone
    db_call(
        c,
        lambda s: fail_generation(s, job_id=r.gen.id, worker_id=c.worker_id, error=error),
        what=f"generation {r.gen.id}: failed",
    )
    publish(c, "generation", r.gen.id, "status", {"status": "failed", "error": error})


def _generate(c: WorkerContext, rows: list[Row]) -> None:
    import torch

    from core.lora import set_loras
    from core.sampler import ImageSpec, to_pil

    lead = rows[0].gen
    p = lead.params
    steps = int(p["steps"])
    width, height = int(p["width"]), int(p["height"])
    deadline = time.monotonic() + c.settings.generate_time_limit_s
    h = host(c)
    clock = PhaseClock()
    with h.serving():  # before a warm-up's remaining calls
        clock.lap("wait")
        model = h.model()
        refs = p.get("loras", [])
        loras = [
            (
                h.lora(ref["id"], lambda ref=ref: lora_path(c, ref["id"], lead.owner_id)),
                float(ref.get("scale", 1.0)),
            )
            for ref in refs
        ]
        _warn_unplaced(c, rows, loras)
        # one batch shares its references (generation_batch.batch_key), so the lead's are everyone's
        references = load_references(c, list(p.get("reference_images") or []), lead.owner_id) or None
        specs, owners = [], []
        for r in rows:
            seed0 = int(r.gen.params.get("seed") or 0)
            neg = r.gen.params.get("negative_prompt", " ") or " "
            for i in r.todo:
                specs.append(ImageSpec(r.gen.prompt, neg, seed0 + i))
                owners.append((r, i))
        if not specs:  # every image was stored by an earlier attempt
            _finish(c, rows)
            return
        # the memory plan: a batch that cannot fit fails now with the numbers, not with an OOM mid-way
        check_generation(
            c.settings,
            model_path=h.model_path,
            images=len(specs),
            width=width,
            height=height,
            cfg=p.get("guidance") is None or float(p["guidance"]) > 1,
            reference_sizes=[im.size for im in references or ()],
            vision_parked=h.model().vision_parked,
        )
        write = Every(c.settings.progress_interval_s)

        def on_step(step, total, _preview=None):
            for r in rows:
                n = int(r.gen.num_images)
                done = (n - len(r.todo)) * steps + int(step) * len(r.todo)
                r.progress = min(r.gen.total_steps, round(done * r.gen.total_steps / (n * steps)))
            if time.monotonic() > deadline:
                raise TimeLimitExceeded(f"generation exceeded {c.settings.generate_time_limit_s:.0f} s")
            if worker_shutting_down():
                raise _HandBack()
            if write():
                _write_progress(c, rows)
            if not any(r.active for r in rows):
                raise _AllStopped()

        # The LoRAs stay set after the request: the next request with the same ones (merged into the weights, or
        # in the slots) then costs nothing to set up; a request with others replaces them.
        set_loras(model, loras)
        clock.lap("setup")
        kept_before = h.sampler.kept_steps.hits
        z = h.sampler.sample(
            specs,
            width=width,
            height=height,
            steps=steps,
            guidance=p.get("guidance"),
            preset=p.get("preset", "full"),
            callback=on_step,
            references=references,
            return_latents=True,
        )
        finite = torch.isfinite(z.float()).flatten(1).all(1).tolist()  # the one host sync of the batch
        clock.lap("sampling")
        kept_graph = h.sampler.kept_steps.hits > kept_before
        images = to_pil(torch.nan_to_num(z), height, width)  # non-finite images are dropped below
        clock.lap("decode")
    for r in rows:  # a row with a non-finite image fails as a whole: none of its images is stored
        if r.active and not all(ok for ok, (o, _) in zip(finite, owners) if o is r):
            _fail(c, r, nonfinite_message(refs))
    kept = [(image, r, i) for image, (r, i) in zip(images, owners) if r.active]
    pngs = encode_pngs([image for image, _, _ in kept])
    clock.lap("png")
    for png, (image, r, i) in zip(pngs, kept):
        _store(c, r.gen, i, png, image.size, int(r.gen.params.get("seed") or 0) + i)
    clock.lap("store")
    _finish(c, rows)
    clock.lap("finish")
    # one line per batch: where a request's time went (bench/bench_service.py reads these lines)
    log.info(
        "generation %s: %d image(s) %dx%d, %d steps, %s; kept graph %s",
        ",".join(r.gen.id for r in rows),
        len(specs),
        width,
        height,
        steps,
        clock.text(),
        "yes" if kept_graph else "no",
    )


class PhaseClock:
    """Seconds between laps, by name: the per-request breakdown of a generation in the worker's log."""

    def __init__(self):
        self.t, self.phases = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name], self.t = now - self.t, now

    def text(self) -> str:
        total = sum(self.phases.values())
        return f"{total:.3f} s (" + ", ".join(f"{k} {v:.3f}" for k, v in self.phases.items()) + ")"


def nonfinite_message(lora_refs: list[dict]) -> str:
    if lora_refs:
        names = ", ".join(f"{ref['id']} (scale {float(ref.get('scale', 1.0)):g})" for ref in lora_refs)
        return (
            f"the image came out with NaN/Inf values, so nothing was saved; the likely cause is a LoRA with "
            f"non-finite or very large weights, or too large a scale: {names}. Try without it or a lower scale"
        )
    return "the image came out with NaN/Inf values, so nothing was saved (the base model gave non-finite output)"


def _warn_unplaced(c: WorkerContext, rows: list[Row], loras) -> None:
    """LoRA keys that place nowhere become a warning on each row (the user sees it, not only the log)."""
    warnings = []
    for bound, _ in loras:
        if bound.unplaced:
            first = bound.unplaced[0].split(":")[0]
            warnings.append(
                f"LoRA {bound.name}: {len(bound.unplaced)} of its keys fit no module of this model "
                f"and were ignored (e.g. {first})"
            )
    for r in rows if warnings else []:
        db_call(
            c,
            lambda s, r=r: add_generation_warnings(s, job_id=r.gen.id, warnings=warnings),
            what=f"generation {r.gen.id}: warnings",
        )


def _write_progress(c: WorkerContext, rows: list[Row]) -> None:
    """Progress of every running row, and each one's cancel flag (both at most every progress_interval_s)."""

    # Through db_call: a database blip pauses the batch, it never fails it (a heartbeat write is idempotent).
    def write(s, r):
        if not record_generation_progress(s, job_id=r.gen.id, worker_id=c.worker_id, step=r.progress):
            return "lost"
        return "canceled" if is_generation_cancel_requested(s, job_id=r.gen.id) else None

    for r in rows:
        if r.active and (end := db_call(c, lambda s, r=r: write(s, r), what=f"generation {r.gen.id}: progress")):
            r.end = end
    for r in rows:
        if r.active:
            publish(c, "generation", r.gen.id, "progress", {"step": r.progress, "total_steps": r.gen.total_steps})


def _store(c: WorkerContext, gen: Generation, index: int, png: bytes, size: tuple[int, int], seed: int) -> None:
    key = f"generations/{gen.id}/{index}.png"
    c.store.put_bytes(key, png)
    db_call(
        c,
        lambda s: add_generation_image(
            s, job_id=gen.id, index=index, storage_key=key, width=size[0], height=size[1], seed=seed
        ),
        what=f"generation {gen.id}: image {index}",
    )
    publish(c, "generation", gen.id, "image", {"index": index, "url": image_url(gen.id, index)})


def _finish(c: WorkerContext, rows: list[Row]) -> None:
    for r in rows:
        if not r.active:
            continue
        r.end = "succeeded"  # before the write: the heartbeat thread then leaves the row alone
        if not db_call(c, lambda s, r=r: _finished(s, r.gen.id, c.worker_id), what=f"generation {r.gen.id}: done"):
            r.end = "lost"
            continue
        publish(c, "generation", r.gen.id, "status", {"status": "succeeded"})


def _finished(s, job_id: str, worker_id: str) -> bool:
    """running -> succeeded; on a retry whose first COMMIT landed before the connection broke, the row already
    says succeeded by this worker, which counts as done."""
    if finish_generation(s, job_id=job_id, worker_id=worker_id):
        return True
    row = s.get(Generation, job_id)
    return row is not None and row.status == "succeeded" and row.worker_id == worker_id


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run_generation(sys.argv[1]))

"""One generation job: row -> resident model (+ LoRAs with scales) -> PNGs in the store -> row.

Called by the `o1lora.generate` task (worker/tasks.py); runnable on its own for a queued row:

    python -m worker.generation GENERATION_ID
"""
from __future__ import annotations

import io
import logging
import sys
import time

from db.generations import (add_generation_image, fail_generation, finish_generation,
                            record_generation_progress)
from db.loras import get_lora
from worker.context import WorkerContext, ctx
from worker.model_host import ModelHost
from worker.pacing import Every, Heartbeat
from worker.runs import JobLost, TimeLimitExceeded, local_dir, local_file, publish, run_with_heartbeat, take

log = logging.getLogger(__name__)

_host: ModelHost | None = None


def host(c: WorkerContext) -> ModelHost:
    """The process's resident model; built on the first generation, kept for every later one."""
    global _host
    if _host is None or _host.model_path != c.settings.model_path:
        _host = ModelHost(c.settings.model_path, c.settings.lora_cache_size)
    return _host


def image_url(generation_id: str, index: int) -> str:
    return f"/v1/generations/{generation_id}/images/{index}"


def lora_path(c: WorkerContext, lora_id: str, owner_id: str):
    """Local file or folder of a stored LoRA the owner may use; ValueError names what is wrong."""
    with c.sessions() as s:
        lora = get_lora(s, lora_id=lora_id, owner_id=owner_id)
    if lora is None:
        raise ValueError(f"LoRA {lora_id} does not exist (deleted after the request?)")
    if lora.comfyui_key:
        return local_file(c, lora.comfyui_key)
    if lora.peft_prefix:
        return local_dir(c, lora.peft_prefix)
    if lora.original_key:
        return local_file(c, lora.original_key)
    raise ValueError(f"LoRA {lora_id} has no stored file")


def run_generation(generation_id: str, c: WorkerContext | None = None) -> str:
    """Run the generation if this worker should (see worker.runs.take); returns what happened."""
    c = c or ctx()
    taken = take(c, "generation", generation_id)
    if not taken.runs:
        return taken.outcome
    gen = taken.job

    def beat() -> bool:
        with c.sessions() as s:
            return record_generation_progress(s, generation_id=gen.id, worker_id=c.worker_id, step=progress[0])

    progress = [0]
    stopped = run_with_heartbeat(
        c, "generation", gen.id, beat=beat, body=lambda hb: _generate(c, gen, progress, hb),
        fail=lambda s, error: fail_generation(s, generation_id=gen.id, worker_id=c.worker_id, error=error))
    if stopped is not None:
        return stopped
    with c.sessions() as s:
        if not finish_generation(s, generation_id=gen.id, worker_id=c.worker_id):
            return "lost"
    publish(c, "generation", gen.id, "status", {"status": "succeeded"})
    return "succeeded"


def _generate(c: WorkerContext, gen, progress: list[int], hb: Heartbeat) -> None:
    from core.lora import apply_loras
    from core.sampler import Sampler

    p = gen.params
    steps, n = int(p["steps"]), int(gen.num_images)
    deadline = time.monotonic() + c.settings.generate_time_limit_s
    h = host(c)
    model = h.model()
    loras = [(h.lora(ref["id"], lambda ref=ref: lora_path(c, ref["id"], gen.owner_id)), float(ref.get("scale", 1.0)))
             for ref in p.get("loras", [])]
    write = Every(c.settings.progress_interval_s)
    sampler = Sampler(model, h.tokenizer, preview_every=0)  # no per-step x0 decode: only the final image
    seed0 = int(p.get("seed") or 0)

    # One image per sampler call with seed + i: the sampler's own convention for image i, and each image
    # can be stored and announced as soon as it is done.
    for i in range(n):
        def on_step(step, total, _preview=None, i=i):
            # The row's total_steps is authoritative (steps per image or for all images): scale onto it.
            progress[0] = min(gen.total_steps, round((i * steps + int(step)) * gen.total_steps / (n * steps)))
            if hb.lost.is_set():
                raise JobLost()
            if time.monotonic() > deadline:
                raise TimeLimitExceeded(f"generation exceeded {c.settings.generate_time_limit_s:.0f} s")
            if write():
                with c.sessions() as s:
                    if not record_generation_progress(s, generation_id=gen.id, worker_id=c.worker_id,
                                                      step=progress[0]):
                        raise JobLost()
                publish(c, "generation", gen.id, "progress", {"step": progress[0], "total_steps": gen.total_steps})

        with apply_loras(model, loras):
            image = sampler([gen.prompt], negative_prompt=p.get("negative_prompt", " ") or " ",
                            width=int(p["width"]), height=int(p["height"]), steps=steps,
                            guidance=p.get("guidance"), seed=seed0 + i,
                            preset=p.get("preset", "full"), callback=on_step)[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        key = f"generations/{gen.id}/{i}.png"
        c.store.put_bytes(key, buf.getvalue())
        with c.sessions() as s:
            add_generation_image(s, generation_id=gen.id, index=i, storage_key=key, width=image.width,
                                 height=image.height, seed=seed0 + i)
        publish(c, "generation", gen.id, "image", {"index": i, "url": image_url(gen.id, i)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run_generation(sys.argv[1]))

"""Continuous batching: a generation that starts takes compatible queued generations into its batch.

Two generations are compatible when one batched sampler call can serve both: same size, steps, guidance,
preset, LoRA set with scales and reference images (prompts, negative prompts and seeds may differ). The
worker that claimed a generation looks for such rows, claims each with the normal conditional UPDATE (so no
two workers run a row), until `O1LORA_GENERATE_MAX_BATCH` images are gathered or
`O1LORA_GENERATE_BATCH_WAIT_S` has passed. Each joined row then has its own progress, images, cancel and
outcome (worker/generation.run_rows); its own queue message, delivered later, finds it running or finished
and does nothing (worker/runs.take).

Benchmarks drive it with the settings alone: max batch 1 turns batching off; wait 0 takes only what is
already queued.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from db.generations import claim_generation, get_generation
from db.models import Generation
from worker.context import WorkerContext
from worker.db_retry import first_line, is_transient
from worker.runs import publish

log = logging.getLogger(__name__)

POLL_S = 0.01  # how often the queue is looked at while waiting


def batch_key(gen: Generation) -> tuple:
    """What must be equal for two generations to share one batched sampler call."""
    p = gen.params
    loras = tuple((ref["id"], float(ref.get("scale", 1.0))) for ref in p.get("loras", []))
    guidance = p.get("guidance")
    references = (gen.owner_id, tuple(p.get("reference_images") or ()))  # ids are per owner; order matters
    return (
        int(p["width"]),
        int(p["height"]),
        int(p["steps"]),
        None if guidance is None else float(guidance),
        p.get("preset", "full"),
        loras,
        references if references[1] else (),
    )


def join_batch(c: WorkerContext, lead: Generation, clock=time.monotonic) -> list[Generation]:
    """Claim queued generations compatible with `lead` (already claimed by this worker), oldest first, while
    the batch holds fewer than generate_max_batch images; waits at most generate_batch_wait_s for more."""
    room = c.settings.generate_max_batch - int(lead.num_images)
    if room <= 0:
        return []
    key, joined, seen = batch_key(lead), [], {lead.id}
    deadline = clock() + c.settings.generate_batch_wait_s
    try:
        return _gather(c, lead, key, joined, seen, room, deadline, clock)
    except Exception as e:
        # Joining is an optimisation: a database blip while looking for companions must not cost the lead
        # generation. Each claim commits on its own, so the rows in `joined` are ours; a row whose claim
        # committed but could not be read back is resumed by the reconciler when its heartbeat goes stale.
        if not is_transient(e):
            raise
        log.warning(
            "generation %s: stops gathering a batch after a database error (%s); runs %d joined",
            lead.id,
            first_line(e),
            len(joined),
        )
        return joined


def _gather(
    c: WorkerContext,
    lead: Generation,
    key: tuple,
    joined: list[Generation],
    seen: set[str],
    room: int,
    deadline: float,
    clock,
) -> list[Generation]:
    while True:
        with c.sessions() as s:
            queued = s.scalars(
                select(Generation)
                .where(Generation.status == "queued", Generation.cancel_requested.is_(False))
                .order_by(Generation.created_at)
                .limit(100)
            ).all()
            for gen in queued:
                if gen.id in seen or int(gen.num_images) > room or batch_key(gen) != key:
                    continue
                seen.add(gen.id)
                if not claim_generation(s, job_id=gen.id, worker_id=c.worker_id):
                    continue  # another worker was first
                s.expire(gen)  # this row only: an expire_all would detach the rows joined before it
                gen = get_generation(s, job_id=gen.id)
                joined.append(gen)
                room -= int(gen.num_images)
                log.info("generation %s: joins the batch of %s (attempt %d)", gen.id, lead.id, gen.attempt)
                publish(c, "generation", gen.id, "status", {"status": "running", "attempt": gen.attempt})
                if room <= 0:
                    return joined
        if clock() >= deadline:
            return joined
        time.sleep(POLL_S)

"""A generation against a PostgreSQL that drops its connections: its progress write waits on a lock, its
backend is terminated (the database up throughout), and the generation still succeeds on its first attempt
with the same images as an undisturbed run (issue 16 item 6, generation side).

    .venv/bin/python -m pytest tests/worker/test_worker_generation_db_outage.py -q
"""

from __future__ import annotations

import threading
import time

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.generations import create_generation, get_generation
from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext


def new_generation(c, owner_id, steps):
    p = {
        "prompt": "a red circle",
        "negative_prompt": " ",
        "loras": [],
        "width": 64,
        "height": 32,
        "steps": steps,
        "guidance": 2.0,
        "seed": 7,
        "preset": "full",
        "num_images": 1,
    }
    with c.sessions() as s:
        return create_generation(
            s, owner_id=owner_id, prompt=p["prompt"], params=p, num_images=1, total_steps=steps
        )


def image(c, gen_id) -> np.ndarray:
    from PIL import Image

    with c.sessions() as s:
        key = get_generation(s, job_id=gen_id).images[0].storage_key
    with c.store.open(key) as f:
        return np.asarray(Image.open(f).convert("RGB"), dtype=np.int16)


def kill_lock_waiters(pg_url: str, worker: threading.Thread, within_s: float = 60) -> int:
    """Hold an exclusive lock on the generations table and terminate the first backends that wait on it (the
    database itself stays up): a connection the worker loses mid-query. Starts `worker` once the lock is held
    if it has not started yet; returns how many backends were terminated."""
    db = make_url(pg_url).database
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    locker = create_engine(pg_url)
    killed = 0
    with locker.connect() as conn:
        tx = conn.begin()
        conn.execute(text("LOCK TABLE generations IN ACCESS EXCLUSIVE MODE"))
        if worker.ident is None:
            worker.start()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and not killed and worker.is_alive():
            with admin.connect() as a:
                query = text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db "
                    "AND wait_event_type = 'Lock'"
                )
                killed = len(a.execute(query, {"db": db}).all())
            time.sleep(0.05)
        tx.commit()
    locker.dispose()
    admin.dispose()
    return killed


def test_a_killed_connection_mid_generation_costs_a_pause_not_the_generation(worker_ctx, tiny_model, pg_url):
    c = WorkerContext(
        worker_ctx.settings.model_copy(
            update={
                "model_path": tiny_model,
                "progress_interval_s": 0.0,
                "heartbeat_timeout_s": 30.0,
                "db_outage_limit_s": 30.0,
                "generate_batch_wait_s": 0.0,
            }
        )
    )
    with c.sessions() as s:
        owner = create_owner(s, name="blip")
    straight = new_generation(c, owner.id, steps=40)
    assert generation.run_generation(straight.id, c) == "succeeded"

    gen = new_generation(c, owner.id, steps=40)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", generation.run_generation(gen.id, c)), daemon=True)
    t.start()
    killed = kill_lock_waiters(pg_url, t)
    t.join(120)
    assert killed >= 1, "the generation never waited on the lock"
    assert out.get("r") == "succeeded"
    with c.sessions() as s:
        row = get_generation(s, job_id=gen.id)
        assert (row.status, row.error, row.attempt, row.step) == ("succeeded", None, 1, 40)
    assert int(np.abs(image(c, straight.id) - image(c, gen.id)).max()) == 0
    c.close()


def test_a_killed_connection_while_gathering_a_batch_leaves_the_lead_alone(worker_ctx, pg_url):
    """Joining companions is an optimisation: the batch scan's backend is terminated while it waits on a lock,
    and the lead generation carries on alone (it used to die of the OperationalError, failing the request)."""
    from db.generations import claim_generation
    from worker.generation_batch import join_batch

    c = WorkerContext(
        worker_ctx.settings.model_copy(update={"generate_max_batch": 4, "generate_batch_wait_s": 0.0})
    )
    with c.sessions() as s:
        owner = create_owner(s, name="scan")
    lead = new_generation(c, owner.id, steps=4)
    with c.sessions() as s:
        assert claim_generation(s, job_id=lead.id, worker_id=c.worker_id)
        lead = get_generation(s, job_id=lead.id)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", join_batch(c, lead)), daemon=True)
    killed = kill_lock_waiters(pg_url, t)
    t.join(60)
    assert killed >= 1, "the batch scan never waited on the lock"
    assert out.get("r") == []
    c.close()

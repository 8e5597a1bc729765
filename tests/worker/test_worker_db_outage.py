"""A training job against a PostgreSQL that drops its connections: the real server, real killed backends.

- a blip (the job's statement waits on a lock and its backend is terminated, the database up throughout)
  costs a pause: the job succeeds, on its first attempt, with the same LoRA as an undisturbed run;
- a database that refuses connections past db_outage_limit_s fails the job with a message for its owner
  (no SQL, no parameters, no host:pid);
- a claim whose read-back loses its connection is retried, and one that cannot be read back is handed back
  at once instead of staying `running` with nobody beating for it.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from safetensors.torch import load_file
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from worker_helpers import put_dataset

from db.loras import get_lora
from db.owners import create_owner
from db.testing import DEFAULT_ADMIN_URL
from db.training import create_training, get_training
from worker import training
from worker.context import WorkerContext
from worker.dispatch import waiting_job_ids


@pytest.fixture
def tctx(worker_ctx, tiny_model):
    settings = worker_ctx.settings.model_copy(
        update={
            "model_path": tiny_model,
            "progress_interval_s": 0.0,
            "heartbeat_timeout_s": 30.0,
            "db_outage_limit_s": 30.0,
        }
    )
    c = WorkerContext(settings)
    yield c
    c.close()


@pytest.fixture
def admin(pg_url):
    """An autocommit connection to the job database as the superuser (to lock tables and kill backends)."""
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def new_job(c, steps, name):
    with c.sessions() as s:
        owner = create_owner(s, name=name)
    ds = put_dataset(c, owner.id)
    params = {
        "steps": steps,
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 1e-3,
        "resolution": 64,
        "batch_size": 1,
        "sample_every": 0,
        "sample_prompts": [],
        "seed": 3,
        "gradient_checkpointing": False,
        "checkpoint_every": 4,
    }
    with c.sessions() as s:
        return create_training(
            s, owner_id=owner.id, dataset_id=ds.id, name="j", trigger="sks", params=params, total_steps=steps
        )


def start(c, job_id):
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", training.run_training(job_id, c)), daemon=True)
    t.start()
    return t, out


def wait_step(c, job_id, step, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with c.sessions() as s:
            if (get_training(s, job_id=job_id).step or 0) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach step {step}")


def database(url: str) -> str:
    return make_url(url).database


def kill_backends(admin, url) -> int:
    """Terminate every backend of the job database but the admin's own; how many there were."""
    with admin.connect() as conn:
        return len(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database(url)},
            ).all()
        )


def lora_of(c, job_id):
    with c.sessions() as s:
        lora = get_lora(s, lora_id=get_training(s, job_id=job_id).lora.id)
    return load_file(str(c.store.local_path(lora.comfyui_key)))


def test_killed_connections_while_a_statement_waits_cost_a_pause_not_the_job(tctx, admin, pg_url):
    c = tctx
    straight = new_job(c, 12, "straight")
    assert training.run_training(straight.id, c) == "succeeded"

    job = new_job(c, 12, "blip")
    t, out = start(c, job.id)
    wait_step(c, job.id, 2)
    blips = 0
    lock_engine = create_engine(pg_url)  # not autocommit: the lock lives in its transaction
    for _ in range(3):
        # The failure: the worker's statement waits (here on a table lock), its backend is
        # terminated, and the database stays up throughout.
        with lock_engine.connect() as locker:
            tx = locker.begin()
            locker.execute(text("LOCK TABLE training_jobs IN ACCESS EXCLUSIVE MODE"))
            deadline = time.monotonic() + 20
            waiting = 0
            while time.monotonic() < deadline and not waiting:
                with admin.connect() as conn:
                    waiting = conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"
                        ),
                        {"db": database(pg_url)},
                    )
                time.sleep(0.05)
            if waiting:
                blips += 1
                with admin.connect() as conn:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db "
                            "AND wait_event_type = 'Lock'"
                        ),
                        {"db": database(pg_url)},
                    )
            tx.commit()
        time.sleep(0.2)
    lock_engine.dispose()
    t.join(120)
    assert blips >= 1, "the job never waited on the lock (finished first?)"
    assert out.get("r") == "succeeded"
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        assert (row.status, row.error, row.attempt, row.step) == ("succeeded", None, 1, 12)
    a, b = lora_of(c, straight.id), lora_of(c, job.id)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # the step's work was kept


def test_a_database_down_past_the_limit_fails_the_job_with_a_message_for_its_owner(tctx, pg_url):
    c = WorkerContext(tctx.settings.model_copy(update={"db_outage_limit_s": 2.0}))
    job = new_job(c, 400, "outage")
    t, out = start(c, job.id)
    wait_step(c, job.id, 2)
    server = create_engine(DEFAULT_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = database(pg_url)
    try:
        with server.connect() as conn:
            # Down for the worker: new connections refused, the open ones killed.
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"), {"db": name}
            )
            time.sleep(5.0)
    finally:
        with server.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        server.dispose()
    t.join(60)
    c.close()
    assert out.get("r") == "failed"
    with tctx.sessions() as s:
        row = get_training(s, job_id=job.id)
    assert row.status == "failed" and row.step < 400
    assert "database was unreachable for more than 2 s" in row.error
    for leak in (
        "SELECT",
        "UPDATE",
        "training_jobs",
        "psycopg",
        "[SQL",
        "5432",
        socket.gethostname(),
        c.worker_id,
    ):
        assert leak not in row.error


class KillReadBack:
    """After the claim's UPDATE, terminate the worker's own backend just before its next read of the whole job
    row (the read-back), ``times`` times: a real connection loss at exactly that statement."""

    def __init__(self, c: WorkerContext, admin, times: int):
        self.admin, self.left, self.claimed = admin, times, False
        self.engine = c.sessions.kw["bind"]
        event.listen(self.engine, "before_cursor_execute", self.before)

    def before(self, conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE training_jobs SET status"):
            self.claimed = True
        elif (
            self.claimed and self.left and statement.startswith("SELECT training_jobs.id, training_jobs.owner_id")
        ):
            self.left -= 1
            pid = conn.connection.dbapi_connection.info.backend_pid
            with self.admin.connect() as a:
                a.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    def remove(self):
        event.remove(self.engine, "before_cursor_execute", self.before)


def test_a_claim_whose_read_back_loses_its_connection_runs_the_job(tctx, admin):
    c = tctx
    job = new_job(c, 4, "reread")
    killer = KillReadBack(c, admin, times=1)
    try:
        assert training.run_training(job.id, c) == "succeeded"
    finally:
        killer.remove()
    assert killer.left == 0
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
    assert (row.status, row.attempt, row.error) == ("succeeded", 1, None)


def test_a_claim_that_cannot_be_read_back_is_handed_back_at_once(tctx, admin):
    c = WorkerContext(tctx.settings.model_copy(update={"db_outage_limit_s": 1.0}))
    job = new_job(c, 4, "handback")
    killer = KillReadBack(c, admin, times=1000)
    try:
        assert training.run_training(job.id, c) == "handed_back"
    finally:
        killer.remove()
        c.close()
    with tctx.sessions() as s:
        row = get_training(s, job_id=job.id)
    # Queued again with its message sent: not `running` until the heartbeat timeout.
    assert (row.status, row.worker_id, row.attempt) == ("queued", None, 1)
    assert job.id in waiting_job_ids("training")


def test_a_database_error_reaches_the_owner_without_sql_or_parameters(admin):
    from sqlalchemy.exc import ProgrammingError

    from worker.db_retry import is_transient
    from worker.runs import short_error

    with pytest.raises(ProgrammingError) as raised, admin.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table WHERE id = :id"), {"id": "secret-parameter"})
    error = short_error(raised.value)
    assert not is_transient(raised.value)  # a mistake, not an outage: it fails at once
    assert "database error" in error and "UndefinedTable" in error
    assert "no_such_table" not in error and "secret-parameter" not in error and "SELECT" not in error

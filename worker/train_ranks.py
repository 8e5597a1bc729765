"""One training job on several GPUs of this host: PyTorch DDP, one process per GPU, started by torchrun.

    # started by worker.training when train_processes (or the number of visible GPUs) is above 1:
    python -m torch.distributed.run --standalone --nproc_per_node N -m worker.rank_entry JOB_ID OWNER

This module is the worker's side (start torchrun, wait, pass a shutdown on); worker.rank_entry is what each
process runs. The Celery task has already claimed the job as OWNER (its worker id). Rank 0 runs it as that owner, exactly
like a one-process job (heartbeat, throttled progress, cancel, checkpoints in the store, the final state);
the other ranks only train (core.train runs no callbacks there, shards the batches and broadcasts rank 0's
stop decision). The worker process waits for torchrun, passes a warm shutdown on as SIGTERM, and fails the
job if the processes die without writing a final state.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from db.training import fail_training, get_training
from service.settings import Settings
from worker.context import WorkerContext
from worker.runs import publish
from worker.stop_signals import worker_shutting_down

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """O1LORA_* variables that rebuild `settings` in a child, also when the parent built them in code."""
    return {
        f"O1LORA_{name.upper()}": str(value) for name, value in settings.model_dump().items() if value is not None
    }


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the worker dies (even by SIGKILL), so that no orphaned
    torchrun keeps training (and holding the GPUs) a job the reconciler will hand to another worker."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_ranks(c: WorkerContext, job, ranks: int) -> str:
    """Run the owned job as `ranks` DDP processes and wait for them; returns the job's final status."""
    logs = c.settings.data_dir.resolve() / "logs" / "trainings"  # outlives the job's work folder
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{job.id}-attempt-{job.attempt}.log"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        "-m",
        "worker.rank_entry",
        job.id,
        c.worker_id,
    ]
    env = {**os.environ, **settings_env(c.settings)}
    log.info("training %s: %d processes (log %s)", job.id, ranks, log_path)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        passed_on = False
        while proc.poll() is None:
            if not passed_on and worker_shutting_down():
                proc.send_signal(signal.SIGTERM)  # rank 0 stops at its next step and re-queues the job
                passed_on = True
            time.sleep(0.5)
    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        if row.status == "running" and row.worker_id == c.worker_id:
            tail = log_path.read_text(errors="replace")[-1500:]
            error = f"training processes exited with code {proc.returncode} before finishing:\n{tail}"
            if fail_training(s, job_id=job.id, worker_id=c.worker_id, error=error):
                publish(c, "training", job.id, "status", {"status": "failed", "error": error})
            return "failed"
        return "requeued" if row.status == "queued" else row.status

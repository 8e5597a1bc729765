"""What each process of a multi-GPU training job runs (started by worker.train_ranks through torchrun):

    python -m worker.rank_entry JOB_ID OWNER

Rank 0 runs the job as OWNER, the worker that claimed it, exactly like a one-process job (worker.training.
run_owned: heartbeat, progress, cancel, checkpoints, the final state); the other ranks run the same
TrainingRun with NO_HEARTBEAT and report nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from db.training import get_training
from service.settings import get_settings
from worker import training
from worker.context import WorkerContext
from worker.stop_signals import is_main_rank, terminate_requested


def die_with_torchrun() -> None:
    """SIGKILL this rank when its parent, torchrun, dies. torchrun starts every rank in a session of its own and
    ends them itself when stopped (a SIGTERM passes on); but a torchrun killed outright (SIGKILL of the worker's
    process group) left its ranks running: rank 0 beating for the job as the dead worker (no other worker could
    take it over) and hung in a collective with a rank that had died (seen in the test of a killed job)."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # torchrun died before the prctl: nobody would signal us
        os._exit(1)


def main(argv: list[str]) -> int:
    job_id, owner = argv
    die_with_torchrun()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s rank" + os.environ.get("RANK", "0") + " %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, lambda *_: terminate_requested.set())
    c = WorkerContext(get_settings(), claimed_by=owner)  # act as the worker that claimed the job
    with c.sessions() as s:
        job = get_training(s, job_id=job_id)
    if is_main_rank():
        outcome = training.run_owned(c, job)
        print(f"training {job_id}: {outcome}", flush=True)
        # A failed or lost run exits non-zero so torchrun stops ranks that may be waiting in a collective.
        return 0 if outcome in ("succeeded", "canceled", "requeued") else 1
    training.TrainingRun(c, job, training.NO_HEARTBEAT).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

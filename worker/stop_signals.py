"""When a job should stop at its next step boundary, and which process of a multi-GPU job reports.

Its own module so that the trainer, the generation runner and the DDP launcher (worker.train_ranks) share
these without importing each other.
"""

from __future__ import annotations

import os
import threading

# Set by SIGTERM in the processes of a multi-GPU job (worker/train_ranks.py), which have no Celery state.
terminate_requested = threading.Event()


def worker_shutting_down() -> bool:
    """True once this worker got a warm-shutdown request (SIGTERM): stop at the step boundary."""
    if terminate_requested.is_set():
        return True
    try:
        from celery.worker import state
    except ImportError:
        return False
    return state.should_stop is not None or state.should_terminate is not None


def is_main_rank() -> bool:
    """False in the extra processes of a multi-GPU job (torchrun's RANK > 0): they train, rank 0 reports."""
    return int(os.environ.get("RANK", "0")) == 0

"""This worker's own heartbeat row: alive, and what its GPUs hold (for /metrics; the jobs' heartbeats are on
their rows). A daemon thread beats every heartbeat interval, from the worker's start, busy or idle.

GPU figures are read only when this process has already initialised CUDA for a job: an idle worker never
imports torch (nor creates a CUDA context) for the sake of a metric, and reports 0 until it has.
"""

from __future__ import annotations

import logging
import sys
import threading

from db.worker_beats import beat_worker
from worker.context import WorkerContext, ctx

log = logging.getLogger(__name__)


def gpu_memory() -> dict[str, int]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {"gpu_count": 0, "gpu_allocated_bytes": 0, "gpu_reserved_bytes": 0, "gpu_total_bytes": 0}
    n = torch.cuda.device_count()
    return {
        "gpu_count": n,
        "gpu_allocated_bytes": sum(torch.cuda.memory_allocated(i) for i in range(n)),
        "gpu_reserved_bytes": sum(torch.cuda.memory_reserved(i) for i in range(n)),
        "gpu_total_bytes": sum(torch.cuda.get_device_properties(i).total_memory for i in range(n)),
    }


def beat(c: WorkerContext) -> None:
    with c.sessions() as s:
        beat_worker(s, worker_id=c.worker_id, **gpu_memory())


def start_thread(c: WorkerContext | None = None) -> threading.Event:
    c = c or ctx()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                beat(c)
            except Exception as e:  # noqa: BLE001 - a metric must never take a worker down
                log.warning("worker beat failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
            stop.wait(c.heartbeat_interval_s)

    threading.Thread(target=run, name="worker-beat", daemon=True).start()
    return stop

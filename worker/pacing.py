"""Rate limits for the worker's writes: progress rows, cancel-flag reads and heartbeats.

A tiny model trains dozens of steps a second; writing the job row (and publishing an event) on every step
would make the database the bottleneck, so progress is written at most every `interval` seconds, plus
always on checkpoints and at the end (`force=True`).
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class Every:
    """Calling it returns True at most once per `interval` seconds (and always when forced)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.interval, self.clock = interval, clock
        self.last: float | None = None

    def __call__(self, force: bool = False) -> bool:
        now = self.clock()
        if force or self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class Heartbeat:
    """Calls `beat()` every `interval` seconds from a daemon thread while the job runs.

    A thread rather than a per-step callback: loading an 8B model or encoding a long prompt can take
    minutes without a step, and the heartbeat must say "this process is alive", not "a step finished".
    `beat()` returns False when the job row is no longer ours (the reconciler judged us dead and another
    worker took over); `lost` is then set and the task stops without writing anything more.
    """

    def __init__(self, beat: Callable[[], bool], interval: float, on_error: Callable[[BaseException], None]):
        self.beat, self.interval, self.on_error = beat, interval, on_error
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="o1lora-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.beat():
                    self.lost.set()
                    return
            except Exception as e:  # a DB blip must not kill the job; the next beat retries
                self.on_error(e)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.interval, 1.0) * 2)

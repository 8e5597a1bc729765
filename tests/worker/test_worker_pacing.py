"""The write throttle and the heartbeat thread of the worker."""

from __future__ import annotations

import threading
import time

import pytest

from worker.pacing import Every, Heartbeat


def test_every_limits_rate_and_force_always_passes():
    now = [0.0]
    every = Every(1.5, clock=lambda: now[0])
    assert every()  # the first call always writes
    now[0] = 1.0
    assert not every()  # too soon
    assert every(force=True)  # checkpoints / the end are never dropped
    now[0] = 2.0
    assert not every()  # forcing restarted the interval
    now[0] = 2.6
    assert every()


def test_every_rejects_negative_interval():
    with pytest.raises(ValueError, match="interval"):
        Every(-1)


def test_heartbeat_beats_until_exit_and_survives_errors():
    calls, errors = [], []

    def beat():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("db blip")
        return True

    with Heartbeat(beat, 0.05, errors.append) as hb:
        time.sleep(0.4)
    n = len(calls)
    time.sleep(0.15)
    assert n >= 4 and len(calls) == n  # kept beating after the error, stopped at exit
    assert [str(e) for e in errors] == ["db blip"]
    assert not hb.lost.is_set()


def test_heartbeat_sets_lost_when_the_job_is_taken_over():
    seen = threading.Event()

    def beat():
        seen.set()
        return False  # the conditional heartbeat UPDATE matched no row: another worker owns the job

    with Heartbeat(beat, 0.02, lambda e: None) as hb:
        assert hb.lost.wait(2)
    assert seen.is_set()

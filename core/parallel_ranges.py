"""An index range cut into chunks and mapped over forked worker processes (pretraining renders its pools so).

parts = map_ranges(render_chunk, start, n, workers, seed, size)   # [render_chunk(a, b, seed, size), ...]
"""

from __future__ import annotations

import multiprocessing as mp


def _call(job):
    fn, a, b, args = job
    return fn(a, b, *args)


def map_ranges(fn, start: int, n: int, workers: int, *args) -> list:
    """fn(a, b, *args) over consecutive chunks [a, b) of [start, start + n), about 8 per worker, in `workers`
    forked processes (in this one when workers <= 1); the results in range order. `fn` must be a module-level
    function: the pool pickles it by name. Fork before CUDA is initialised in this process."""
    step = max(1, n // (workers * 8))
    jobs = [(fn, a, min(start + n, a + step), args) for a in range(start, start + n, step)]
    if workers <= 1:
        return [_call(j) for j in jobs]
    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(_call, jobs)

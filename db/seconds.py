"""seconds_between(start, end): the seconds from one timestamp column to another, computed by the database.

/metrics builds its histograms in SQL (one grouped row per label set, not one Python loop per job row), so the
durations must be SQL expressions. The two databases spell them differently; both store naive UTC
(db.models.UTCDateTime).
"""

from __future__ import annotations

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class seconds_between(FunctionElement):  # noqa: N801 (an SQL function, named like one)
    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between)
def _epoch_difference(element, compiler, **kw) -> str:  # PostgreSQL: an interval's length in seconds
    start, end = list(element.clauses)
    return f"EXTRACT(EPOCH FROM ({compiler.process(end, **kw)} - {compiler.process(start, **kw)}))"


@compiles(seconds_between, "sqlite")
def _julian_difference(element, compiler, **kw) -> str:
    # SQLite: Julian days as doubles resolve ~50 microseconds today, and SQLite reads times to the millisecond:
    # rounded to the millisecond, a whole number of seconds comes out whole (1.0 falls in the <= 1 bucket).
    start, end = list(element.clauses)
    days = f"(julianday({compiler.process(end, **kw)}) - julianday({compiler.process(start, **kw)}))"
    return f"ROUND({days} * 86400.0, 3)"

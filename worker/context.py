"""What a worker process shares between its tasks: settings, DB sessions, the artifact store, a Redis client.

Built lazily on first use, in the process that runs the tasks (never in a parent that forks), and rebuilt by
`reset()` (tests point one process at several databases).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cached_property

import redis
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_sessionmaker
from service.settings import Settings, get_settings
from service.store import ArtifactStore
from service.store_cache import StoreCache
from service.stores import make_store


@dataclass
class WorkerContext:
    settings: Settings
    # The worker id to act as: set in the processes of a multi-GPU job, which act for the worker that claimed it.
    claimed_by: str | None = None

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.settings.resolved_database_url)

    @cached_property
    def store(self) -> ArtifactStore:
        return make_store(self.settings)

    @cached_property
    def store_cache(self) -> StoreCache:
        """Local copies of what jobs read from a remote store (nothing is copied from a local one)."""
        s = self.settings
        return StoreCache(
            self.store,
            s.resolved_store_cache_dir,
            max_bytes=int(s.store_cache_max_gib * 2**30),
            keep_s=s.train_time_limit_s,  # a training reads its dataset for as long as it may run
        )

    @cached_property
    def redis(self) -> redis.Redis:
        # Short timeouts: a live event is a hint, and a Redis outage must not stall a training step.
        return redis.Redis.from_url(self.settings.resolved_redis_url, socket_timeout=2, socket_connect_timeout=2)

    @cached_property
    def worker_id(self) -> str:
        """Owner tag written on claimed rows: host and pid, so a log line names the process."""
        if self.claimed_by is not None:
            return self.claimed_by
        return f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        """Dispose of the database engine, if this context made one (tests point one process at many)."""
        if "sessions" in self.__dict__:
            self.sessions.kw["bind"].dispose()

    @property
    def heartbeat_interval_s(self) -> float:
        # Six beats per timeout: one lost write (a DB blip) never makes a live worker look dead.
        return self.settings.heartbeat_timeout_s / 6


_ctx: WorkerContext | None = None


def ctx() -> WorkerContext:
    global _ctx
    if _ctx is None:
        _ctx = WorkerContext(get_settings())
    return _ctx


def reset() -> None:
    global _ctx
    if _ctx is not None:
        _ctx.close()
    _ctx = None
    get_settings.cache_clear()

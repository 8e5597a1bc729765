"""One call at a time on a helper thread, for the training loop's throttled database writes and polls."""

from __future__ import annotations


class OffThread:
    """At most one call at a time on a helper thread; a call is dropped while the previous one runs (progress
    and cancel polls are periodic: the next period repeats them). Its exception is raised on the calling
    thread by the next check() / wait()."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="training-db")
        self._future = None

    def submit(self, fn, *args) -> bool:
        self.check()
        if self._future is not None:
            return False
        self._future = self._pool.submit(fn, *args)
        return True

    def check(self) -> None:
        f = self._future
        if f is not None and f.done():
            self._future = None
            f.result()

    def wait(self) -> None:
        f, self._future = self._future, None
        if f is not None:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

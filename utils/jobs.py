"""Lists of independent jobs shared between the calling thread and helper threads.

For work that is one core's beside an idle one (a dark master's comparison: predictions and
row tiles; a rate map's row tiles), where a per-call thread pool would cost more than it
gives.  The jobs must be thread-safe (numpy, nogil numba kernels, ``os.pread`` reads) and
write disjoint outputs; the results come back in list order, so what is made of them does
not depend on which thread ran what.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Jobs:
    """Runs lists of independent jobs on the calling thread and ``helpers`` helper threads
    (default: one per usable CPU beyond the first, at most one): each job once, the next
    free thread taking the next job in list order.  Use as a context manager (the helper
    threads stop on leaving it)."""

    def __init__(self, helpers: int | None = None):
        if helpers is None:
            helpers = min(1, usable_cpus() - 1)
        self.helpers = max(0, helpers)
        self._pool = ThreadPoolExecutor(self.helpers, thread_name_prefix="jobs") \
            if self.helpers else None

    def run(self, jobs: list, own: int = 0) -> list:
        """``[job() for job in jobs]``, the jobs shared among the threads, but the first
        ``own`` run by the calling thread (its allocations stay in its malloc arena); the
        first error raised once every thread stopped (no job is started after an error)."""
        results = [None] * len(jobs)
        order = iter(range(own, len(jobs)))
        lock = threading.Lock()
        errors: list = []

        def work(first=()) -> None:
            for k in first:
                if not run_one(k):
                    return
            while True:
                with lock:
                    k = None if errors else next(order, None)
                if k is None or not run_one(k):
                    return

        def run_one(k: int) -> bool:
            try:
                results[k] = jobs[k]()
            except BaseException as err:  # re-raised on the calling thread
                with lock:
                    errors.append(err)
                return False
            return True
        helpers = [self._pool.submit(work)
                   for _ in range(min(self.helpers, len(jobs) - own))] \
            if self._pool is not None else []
        work(range(own))
        for helper in helpers:
            helper.result()
        if errors:
            raise errors[0]
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Jobs", "usable_cpus"]

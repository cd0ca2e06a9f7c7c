"""Write behind: a product's file is written in a background thread while the next product is
computed.

Writing a master is mostly copying its bytes into new page-cache pages (on a virtual machine,
pages the guest may first have to obtain from its host: 0.3-3.5 s per GiB measured); stacking
the next master is mostly arithmetic on its inputs.  Done one after the other, each waits for
the other; with the write of product ``k`` running while product ``k + 1`` is stacked, the two
overlap.  At most ``depth`` writes are pending, so at most that many finished products are
held beyond the one being computed.

Each write is still atomic (the writer's own temporary file and rename); a failed write raises
its error at the next :meth:`WriteBehind.submit` or at :meth:`WriteBehind.drain`, in the
calling thread, as a write done in place would have.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

logger = logging.getLogger(__name__)


class WriteBehind:
    """Run write jobs in one background thread, at most ``depth`` pending.

    Use as a context manager: leaving the block waits for every pending job (and raises the
    first error).  ``depth=0`` runs each job at once in the caller's thread.

    Examples
    --------
    >>> done = []
    >>> with WriteBehind() as writer:
    ...     writer.submit(lambda: done.append(1))
    ...     writer.submit(lambda: done.append(2))
    >>> done
    [1, 2]
    """

    def __init__(self, depth: int = 1):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, not {depth}")
        self.depth = int(depth)
        self._pool = ThreadPoolExecutor(max_workers=1) if self.depth else None
        self._pending: deque[Future] = deque()

    def submit(self, job: Callable[[], object]) -> None:
        """Run ``job()`` in the background once fewer than ``depth`` jobs are pending."""
        if self._pool is None:
            job()
            return
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job))

    def drain(self) -> None:
        """Wait for every pending job; raise the first one's error, if any (the others are
        still waited for: no write is left running)."""
        error = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as err:  # noqa: BLE001 - re-raised below, after the rest
                error = error or err
        if error is not None:
            raise error

    def close(self) -> None:
        """:meth:`drain`, then stop the thread."""
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # the block failed: its error is the one to report; the pending writes still finish
        # (each is atomic), a failure among them only logged
        try:
            self.close()
        except BaseException as err:  # noqa: BLE001
            logger.warning("a pending write failed too: %s: %s", type(err).__name__, err)


__all__ = ["WriteBehind"]

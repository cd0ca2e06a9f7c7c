"""Where the independent tasks of a run execute: a local pool, or a Dask cluster.

The campaign's parallel steps -- conversion (per attempt), index statistics (per
frame), master building (per calibration set) and model fitting (per tile) -- map
one picklable function over their items through :func:`current`, the scheduler of
the run.  It is local (the steps' own thread or process pools, as before) unless
a command was given ``--scheduler dask``: then every task is submitted to a
``dask.distributed`` cluster (``--dask-address HOST:8786``, or a cluster started in
this process without an address).  Each task is deterministic and results are
assembled in submission order, so the products are identical bit for bit
whichever scheduler ran them.

Dask is an optional extra (``pip install -e ".[dask]"``); the workers must see the
data and output folders at the same paths (a shared file system).

Example
-------
>>> from utils import scheduler
>>> with scheduler.using(scheduler.LocalScheduler()) as s:
...     s.map(abs, [-1, 2, -3], kind="thread", workers=2)
[1, 2, 3]
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

from .errors import ConfigError

logger = logging.getLogger(__name__)

SCHEDULERS = ("local", "dask")


class LocalScheduler:
    """Tasks in this process: a thread or process pool of ``workers``, or a plain loop."""

    name = "local"
    remote = False

    def map(self, func: Callable, items: Iterable, *, kind: str = "thread",
            workers: int = 1, chunksize: int = 1) -> list:
        """``[func(item) for item in items]``, in order.

        Parameters
        ----------
        func : callable
            The task (picklable for ``kind="process"``).
        items : iterable
            One task argument each.
        kind : {"thread", "process"}, optional
            Pool of the local run (threads for work that releases the GIL).
        workers : int, optional
            Pool size; 1 runs the tasks in a loop.
        chunksize : int, optional
            Items per process-pool task.
        """
        items = list(items)
        if workers <= 1 or len(items) < 2:
            return [func(item) for item in items]
        pool_type = ProcessPoolExecutor if kind == "process" else ThreadPoolExecutor
        with pool_type(max_workers=workers) as pool:
            if kind == "process":
                return list(pool.map(func, items, chunksize=chunksize))
            return list(pool.map(func, items))

    def close(self) -> None:
        """Nothing to release."""


class DaskScheduler:
    """Tasks on a ``dask.distributed`` cluster.

    Parameters
    ----------
    address : str, optional
        Scheduler address (``tcp://host:8786``); without one, a local cluster of
        processes is started for the run (``n_workers``, one thread each).
    client : distributed.Client, optional
        An existing client (tests); then ``address`` is ignored and the client is
        not closed by :meth:`close`.
    n_workers : int, optional
        Workers of the local cluster started without an address.

    Raises
    ------
    ConfigError
        When ``dask.distributed`` is not installed or the scheduler cannot be reached.
    """

    name = "dask"
    remote = True

    def __init__(self, address: str | None = None, *, client=None, n_workers: int = 2):
        self._own = client is None
        if client is None:
            try:
                from distributed import Client
            except ImportError as err:
                raise ConfigError("--scheduler dask needs dask.distributed: "
                                  'pip install -e ".[dask]"') from err
            try:
                client = Client(address, timeout="20s") if address else \
                    Client(n_workers=n_workers, threads_per_worker=1, processes=True)
            except (OSError, TimeoutError) as err:
                raise ConfigError(f"cannot reach the Dask scheduler at {address}: {err}; start "
                                  "it with 'dask scheduler' or check --dask-address") from err
        self.client = client
        logger.info("tasks run on the Dask cluster %s", getattr(client, "dashboard_link", ""))

    def map(self, func: Callable, items: Iterable, *, kind: str = "thread",
            workers: int = 1, chunksize: int = 1) -> list:
        """``[func(item) for item in items]`` on the cluster, in order (``kind``,
        ``workers`` and ``chunksize`` are the local pool's and are ignored)."""
        items = list(items)
        if not items:
            return []
        futures = self.client.map(func, items, pure=False)
        return self.client.gather(futures)

    def close(self) -> None:
        """Close the client (and the cluster it started)."""
        if self._own:
            self.client.close()


_CURRENT: list = [LocalScheduler()]


def current() -> LocalScheduler | DaskScheduler:
    """The scheduler of the running command (local unless one was set by :func:`using`)."""
    return _CURRENT[-1]


@contextlib.contextmanager
def using(scheduler):
    """Make ``scheduler`` :func:`current` inside the ``with`` block; close it on exit."""
    _CURRENT.append(scheduler)
    try:
        yield scheduler
    finally:
        _CURRENT.pop()
        scheduler.close()


def from_options(name: str = "local", address: str | None = None):
    """The scheduler named on the command line (``--scheduler``, ``--dask-address``)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, not {name!r}")
    if name == "local":
        if address:
            raise ConfigError("--dask-address needs --scheduler dask")
        return LocalScheduler()
    return DaskScheduler(address or None)


def add_options(parser) -> None:
    """``--scheduler {local,dask}`` and ``--dask-address ADDR`` of a command."""
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="local",
                        help="where tasks run: local thread/process pools (default), or a Dask "
                             "cluster (conversion per attempt, index statistics per frame, "
                             "masters per set, model fits per tile); needs the dask extra")
    parser.add_argument("--dask-address", "--dask_address", default=None, metavar="ADDR",
                        help="Dask scheduler, e.g. tcp://labhost:8786 (default with "
                             "--scheduler dask: a local cluster for this run)")


def map_tasks(func: Callable, items: Sequence, *, kind: str = "thread", workers: int = 1,
              chunksize: int = 1) -> list:
    """:meth:`LocalScheduler.map` / :meth:`DaskScheduler.map` of the current scheduler."""
    return current().map(func, items, kind=kind, workers=workers, chunksize=chunksize)


__all__ = ["LocalScheduler", "DaskScheduler", "current", "using", "from_options",
           "add_options", "map_tasks", "SCHEDULERS"]

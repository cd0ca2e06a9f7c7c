"""utils.io.write_behind: jobs in order, at most ``depth`` pending, errors surfaced."""

from __future__ import annotations

import threading
import time

import pytest

from utils.io.write_behind import WriteBehind


def test_jobs_run_in_order_and_are_done_on_exit():
    done = []
    with WriteBehind() as writer:
        for i in range(20):
            writer.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
    assert done == list(range(20))


def test_at_most_depth_pending():
    release, order = threading.Event(), []

    def slow():
        release.wait(5)
        order.append("first written")

    with WriteBehind(depth=1) as writer:
        writer.submit(slow)  # returns at once: the write runs in the background
        order.append("first submitted")
        threading.Timer(0.05, release.set).start()
        writer.submit(lambda: order.append("second written"))  # waits for the first
        order.append("second submitted")
    assert order == ["first submitted", "first written", "second submitted", "second written"]


def test_error_raised_in_caller_after_the_other_jobs():
    done = []

    def fail():
        raise OSError("disk full")
    writer = WriteBehind(depth=2)
    writer.submit(fail)
    writer.submit(lambda: done.append("after"))
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert done == ["after"]  # no write left running


def test_depth_zero_writes_in_place():
    caller = threading.get_ident()
    seen = []
    with WriteBehind(depth=0) as writer:
        writer.submit(lambda: seen.append(threading.get_ident()))
        assert seen == [caller]


def test_the_blocks_error_wins_over_a_pending_writes():
    # the block's own failure is what the caller sees; the pending write is still waited for
    done = []

    def fail_later():
        time.sleep(0.02)
        done.append("waited")
        raise OSError("disk full")
    with pytest.raises(ValueError, match="stacking failed"):
        with WriteBehind() as writer:
            writer.submit(fail_later)
            raise ValueError("stacking failed")
    assert done == ["waited"]

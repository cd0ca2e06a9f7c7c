"""utils.jobs.Jobs: independent jobs shared between the calling thread and helper threads."""

from __future__ import annotations

import threading

import pytest

from utils.jobs import Jobs


@pytest.mark.parametrize("helpers", [0, 1, 3])
def test_results_in_list_order(helpers):
    with Jobs(helpers=helpers) as jobs:
        assert jobs.run([lambda k=k: k * k for k in range(20)]) == [k * k for k in range(20)]
        assert jobs.run([]) == []


def test_own_jobs_run_on_the_calling_thread():
    caller = threading.get_ident()
    with Jobs(helpers=1) as jobs:
        threads = jobs.run([threading.get_ident for _ in range(6)], own=2)
    assert threads[:2] == [caller, caller]


def test_first_error_raised_and_no_job_started_after_it():
    started = []

    def job(k):
        started.append(k)
        if k == 1:
            raise ValueError("job 1")
        return k

    with Jobs(helpers=0) as jobs, pytest.raises(ValueError, match="job 1"):
        jobs.run([lambda k=k: job(k) for k in range(5)])
    assert started == [0, 1]
    with Jobs(helpers=1) as jobs, pytest.raises(ValueError, match="job 1"):
        jobs.run([lambda k=k: job(k) for k in range(5)])

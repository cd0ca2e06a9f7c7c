"""utils.memory: free heap pages go back to the system."""

from __future__ import annotations

import os

import numpy as np
import pytest

from utils.memory import _malloc_trim, release_free_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(_malloc_trim() is None or not os.path.exists("/proc/self/statm"),
                    reason="glibc's malloc_trim and /proc are needed")
def test_freed_heap_memory_is_returned():
    """128 MB of small arrays (heap-allocated, below the mmap threshold), all freed but the
    last: glibc keeps the pages below it; the release returns them."""
    blocks = [np.ones(8192) for _ in range(2048)]  # 64 kB each, written: resident
    keep = blocks[-1]
    del blocks
    before = _rss_bytes()
    assert release_free_memory()
    assert before - _rss_bytes() > 64e6
    assert keep.sum() == 8192

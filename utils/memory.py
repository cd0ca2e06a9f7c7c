"""Give the memory a finished step freed back to the system.

A pipeline step frees full-frame maps of a few to a few tens of MB (a 2048 x 2048
float32 map is 16.8 MB).  glibc's allocator serves blocks below its mmap threshold
from its heap, and raises that threshold up to 32 MB as large blocks are freed, so
after the first steps the maps live in the heap and what a step frees stays in the
process (its resident size) until the same sizes are asked for again: the dark
pipeline at 2048^2 carried 150-250 MB of such free memory into its 2-D stage, on top
of what it held.  :func:`release_free_memory` returns the free pages (glibc's
``malloc_trim``, which also releases whole free pages inside the heap); elsewhere
(another C library, another system) it does nothing.

Example
-------
>>> release_free_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system (glibc); True if any was returned.

    Cheap (a walk over the heap's free lists, ~1 ms per 100 MB): call it between the steps
    of a pipeline that free large arrays, not in inner loops.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


__all__ = ["release_free_memory"]

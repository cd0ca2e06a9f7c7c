"""Sorting networks of the stacking kernels (:mod:`utils.stack.kernels`)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def batcher_network(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Comparators of Batcher's odd-even merge sort for ``n`` elements.

    Built for the next power of two and pruned of comparators touching an
    index ``>= n``: those would only compare with virtual ``+inf`` padding,
    which never moves, so the pruned network still sorts ``n`` elements.

    Returns
    -------
    lo, hi : numpy.ndarray
        int64 index pairs, ``lo[c] < hi[c]``; apply in order, min goes to ``lo``.
    """
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])

"""One wrapper around tqdm so every long loop shows progress the same way."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None,
             enabled: bool = False, unit: str = "frame") -> Iterable[T]:
    """Wrap ``iterable`` in a progress bar when ``enabled``.

    Library functions default to no bar; entry points pass ``enabled=True``.
    The bar hides itself when stderr is not a terminal (CI logs stay clean).
    """
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, leave=False,
                dynamic_ncols=True)

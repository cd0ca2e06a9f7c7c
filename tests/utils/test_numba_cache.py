"""numba's on-disk cache of a compiled function is keyed by its own source file only: a
compiled function it calls from another file is built into the cached code, and a later change
to that file is not seen (numba's documented cache limitation), so an editable install updated
by ``git pull`` would keep running the old callee.  Every cached kernel of the project must
therefore call compiled functions of its own file only, or declare the other file in its
module's ``NUMBA_DEPENDS`` (``{file name: first 16 hex digits of its SHA-256}``, checked here):
a change to the callee's file then has to change the caller's file as well, which
invalidates its cache."""

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

numba = pytest.importorskip("numba")
from numba.core.caching import NullCache  # noqa: E402
from numba.core.registry import CPUDispatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("utils", "bias_pipeline", "dark_pipeline", "flat_pipeline", "analysis")


def _stamp(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _modules():
    # every module file (some subpackages are namespace packages, which pkgutil skips)
    for name in PACKAGES:
        for path in sorted((ROOT / name).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] in ("__main__", "run_pipeline") or "templates" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield importlib.import_module(".".join(parts))


def _cached_kernels():
    seen = {}
    for module in _modules():
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and not isinstance(obj._cache, NullCache):
                seen[id(obj)] = obj
    return list(seen.values())


def test_cached_kernels_call_compiled_functions_of_their_own_file_or_declared_ones():
    kernels = _cached_kernels()
    assert len(kernels) > 20  # the stacking, fitting and dark-model kernels were found
    wrong = []
    declared = 0
    for kernel in kernels:
        func = kernel.py_func
        home = func.__code__.co_filename
        codes = [func.__code__] + [c for c in func.__code__.co_consts if hasattr(c, "co_names")]
        for code in codes:
            for name in code.co_names:
                callee = func.__globals__.get(name)
                if not isinstance(callee, CPUDispatcher):
                    continue
                other = callee.py_func.__code__.co_filename
                if other == home:
                    continue
                depends = getattr(sys.modules[func.__module__], "NUMBA_DEPENDS", {})
                if depends.get(Path(other).name) == _stamp(other):
                    declared += 1
                    continue
                wrong.append(f"{func.__module__}.{func.__name__} -> "
                             f"{callee.py_func.__module__}.{name}: put the callee in the "
                             f"caller's file, or set NUMBA_DEPENDS[{Path(other).name!r}] = "
                             f"{_stamp(other)!r} in the caller's module")
    assert not wrong, wrong
    assert declared >= 2  # the linear and exponential fits' shared moment loop


def test_numba_depends_stamps_are_current():
    """A stale stamp fails even where no kernel is found calling the file (numba absent)."""
    stale = []
    for module in _modules():
        for name, stamp in getattr(module, "NUMBA_DEPENDS", {}).items():
            path = Path(module.__file__).with_name(name)
            if _stamp(path) != stamp:
                stale.append(f"{module.__name__}: NUMBA_DEPENDS[{name!r}] = {_stamp(path)!r}")
    assert not stale, stale

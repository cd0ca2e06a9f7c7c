"""numba's on-disk cache of a compiled function is keyed by its own source file only: a
compiled function it calls from another file is built into the cached code, and a later change
to that file is not seen (numba's documented cache limitation), so an editable install updated
by ``git pull`` would keep running the old callee.  Every cached kernel of the project must
therefore call compiled functions of its own file only."""

import importlib
from pathlib import Path

import pytest

numba = pytest.importorskip("numba")
from numba.core.caching import NullCache  # noqa: E402
from numba.core.registry import CPUDispatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("utils", "bias_pipeline", "dark_pipeline", "flat_pipeline", "analysis")
#: Known cross-file calls, not yet moved: the shared moment loop of the linear and exponential
#: fits (``utils.models._parallel._moment_py``, inlined into both files' kernels).  A change
#: to it needs the ``__pycache__`` of ``utils/models`` cleared.
KNOWN = {"_nb_moment"}


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


def test_cached_kernels_call_compiled_functions_of_their_own_file_only():
    kernels = _cached_kernels()
    assert len(kernels) > 20  # the stacking, fitting and dark-model kernels were found
    wrong = []
    for kernel in kernels:
        func = kernel.py_func
        home = func.__code__.co_filename
        codes = [func.__code__] + [c for c in func.__code__.co_consts if hasattr(c, "co_names")]
        for code in codes:
            for name in code.co_names:
                callee = func.__globals__.get(name)
                if isinstance(callee, CPUDispatcher) and name not in KNOWN and \
                        callee.py_func.__code__.co_filename != home:
                    wrong.append(f"{func.__module__}.{func.__name__} -> "
                                 f"{callee.py_func.__module__}.{name}")
    assert not wrong, wrong

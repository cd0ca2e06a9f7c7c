"""Mutation testing of the science modules: plant one fault at a time, see if the tests catch it.

Each mutant changes one thing in one function of a science module -- an
arithmetic operator (``+`` <-> ``-``, ``*`` <-> ``/``), a comparison (``<`` <->
``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``), a number (x 1.05, or +1 for small
integers), ``and`` <-> ``or``, ``True`` <-> ``False``, a dropped unary minus, or
a whole function body replaced by ``return None`` -- then runs the tests that
cover that module in a scratch copy of the repository.  A mutant is *killed*
when the tests fail (or time out), *survives* when they pass.  The report lists
every survivor with its location, so each one gets a test that kills it or a
written reason it is equivalent (``tools/mutation_equivalent.json``).

Logging, messages, docstrings, header-card text and plotting functions are
not mutated: a fault there does not change a number a user sees.  Mutants are
sampled deterministically (``--per-module``, ``--seed``) from all candidates.

This is slow (one test run per mutant, numba kernels recompiled when touched)
and is not part of CI; run it on demand, e.g. on a quiet machine::

    python -m tools.mutation --per-module 25 --jobs 2
    python -m tools.mutation --modules utils/stack/combine.py --per-module 40

It prints one line per mutant, a table per module and a final JSON line, and
writes ``bench/results/mutation.json``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("tools.mutation")

ROOT = Path(__file__).resolve().parents[1]

_STACK = ["tests/utils/test_stacking.py", "-k", "not peak_memory"]  # the 18 s memory test
_NONLINEAR = ["tests/utils/test_fitting_nonlinear.py"]
_BIAS = ["tests/bias_pipeline/test_bias_pipeline.py"]
_DARK = ["tests/dark_pipeline/test_dark_pipeline.py", "tests/dark_pipeline/test_dark_mutants.py"]
_FLAT = ["tests/flat_pipeline/test_flat_pipeline.py", "tests/flat_pipeline/test_flat_models.py"]
_GAIN = ["tests/utils/test_gain.py", "tests/flat_pipeline/test_flat_models.py"]
#: Science modules and the tests that cover them (fast subsets where possible: a subset is run
#: once per mutant, so it decides the cost of the whole run).
TARGETS: dict[str, list[str]] = {
    "utils/stack/combine.py": _STACK,
    "utils/stack/kernels.py": _STACK,
    "utils/stack/stats.py": ["tests/utils/test_stats.py", "tests/utils/test_index.py"],
    "utils/models/linear.py": ["tests/utils/test_fitting.py",
                               "tests/flat_pipeline/test_flat_models.py"],  # multi-linear fits
    "utils/models/nonlinear.py": [*_NONLINEAR,  # its first pass on a cluster (one task a tile)
                                  "tests/test_scheduler.py::"
                                  "test_per_pixel_fit_on_a_dask_cluster_equals_the_local_fit"],
    "utils/models/nonlinear_numpy.py": _NONLINEAR,
    "utils/models/exp_kernels.py": _NONLINEAR,
    "utils/models/bias_model.py": _BIAS,
    "utils/models/read_noise.py": [*_BIAS, "tests/utils/test_stats.py"],
    "dark_pipeline/rates.py": _DARK,
    "dark_pipeline/temperature_model.py": _DARK,
    "dark_pipeline/model_2d.py": _DARK,
    "dark_pipeline/hot_pixels.py": _DARK,
    "dark_pipeline/evaluation.py": _DARK,
    "dark_pipeline/masters.py": _DARK,
    "dark_pipeline/pipeline.py": _DARK,
    "analysis/masters.py": ["tests/analysis/test_process_index.py"],
    # flat
    "utils/models/illumination.py": ["tests/flat_pipeline/test_flat_models.py"],
    "utils/models/photon_transfer.py": [*_GAIN, "tests/flat_pipeline/test_flat_pipeline.py"],
    "utils/models/gain.py": _GAIN,
    "flat_pipeline/illumination.py": _FLAT,
    "flat_pipeline/prnu.py": _FLAT,
    "flat_pipeline/master.py": _FLAT,
    "flat_pipeline/reduction.py": _FLAT,
    "flat_pipeline/flat_model.py": _FLAT,
    "flat_pipeline/photon_transfer.py": _FLAT,
    "flat_pipeline/quality.py": _FLAT,
    "flat_pipeline/evaluation.py": _FLAT,
    # radiation
    "utils/models/population.py": ["tests/dark_pipeline/test_low_signal.py"],
    "utils/io/dose.py": ["tests/analysis/test_radiation_dose_bookkeeping.py",
                         "tests/utils/test_radiation_log.py"],
    "analysis/damage.py": ["tests/analysis/test_radiation_damage.py"],
}
#: Functions never mutated (no number a user sees depends on them).
SKIP_FUNCTIONS = {"warmup", "main", "build_parser", "settings_from", "summary_line",
                  "_build_header", "_inputs_table", "header", "headline", "__repr__"}
SKIP_PREFIXES = ("plot_", "_plot", "_save", "describe")
SKIP_CALLS = {"debug", "info", "warning", "error", "exception", "set_card", "card",
              "append", "_card"}


@dataclass
class Mutant:
    module: str
    index: int
    function: str
    line: int
    kind: str
    detail: str
    status: str = "pending"
    seconds: float = 0.0


_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
           ast.FloorDiv: ast.Mult, ast.Pow: ast.Mult}
_CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq}


def _skipped_function(name: str) -> bool:
    return name in SKIP_FUNCTIONS or name.startswith(SKIP_PREFIXES)


class _Finder(ast.NodeVisitor):
    """Collect ``(path of node ids, kind, detail, line, function)`` mutation points."""

    def __init__(self):
        self.points = []
        self.func: list[str] = []
        self.quiet = 0  # inside a call whose arguments are messages (logging, header cards)

    def visit_FunctionDef(self, node):
        if _skipped_function(node.name):
            return
        self.func.append(node.name)
        body = node.body[1:] if ast.get_docstring(node) else node.body
        if body and not (len(body) == 1 and isinstance(body[0], (ast.Pass, ast.Raise))):
            self.points.append((node, "body", f"{node.name}: body -> return None", node.lineno))
        for child in body:
            self.visit(child)
        self.func.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.visit(child)

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else \
            node.func.id if isinstance(node.func, ast.Name) else ""
        if name in SKIP_CALLS:
            return
        self.generic_visit(node)

    def visit_Raise(self, node):
        return  # the message of an error is not science

    def visit_JoinedStr(self, node):
        return

    def _add(self, node, kind, detail):
        if self.func:
            self.points.append((node, kind, f"{self.func[-1]}: {detail}", node.lineno))

    def visit_BinOp(self, node):
        if type(node.op) in _BINOPS:
            self._add(node, "binop", f"{type(node.op).__name__} -> "
                                     f"{_BINOPS[type(node.op)].__name__}")
        self.generic_visit(node)

    def visit_Compare(self, node):
        if len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
            self._add(node, "compare", f"{type(node.ops[0]).__name__} -> "
                                       f"{_CMPOPS[type(node.ops[0])].__name__}")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        self._add(node, "boolop", f"{type(node.op).__name__} -> "
                                  f"{'Or' if isinstance(node.op, ast.And) else 'And'}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self._add(node, "unary", "drop unary minus")
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            self._add(node, "const", f"{v} -> {not v}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            self._add(node, "const", f"{v!r} -> {_mutate_number(v)!r}")


def _mutate_number(v):
    if isinstance(v, int):
        return v + 1
    return v * 1.05 if v != 0 else 1e-3


class _Apply(ast.NodeTransformer):
    def __init__(self, target, kind):
        self.target, self.kind = target, kind

    def visit(self, node):
        if node is not self.target:
            return super().visit(node)
        if self.kind == "body":
            doc = node.body[:1] if ast.get_docstring(node) else []
            node.body = doc + [ast.Return(value=ast.Constant(value=None))]
            return node
        if self.kind == "binop":
            node.op = _BINOPS[type(node.op)]()
        elif self.kind == "compare":
            node.ops = [_CMPOPS[type(node.ops[0])]()]
        elif self.kind == "boolop":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif self.kind == "unary":
            return node.operand
        elif self.kind == "const":
            v = node.value
            node.value = (not v) if isinstance(v, bool) else _mutate_number(v)
        return node


def candidates(module: str) -> tuple[ast.Module, list]:
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    finder = _Finder()
    for node in tree.body:
        finder.visit(node)
    return tree, finder.points


def mutated_source(tree: ast.Module, point) -> str:
    # mutate a deep copy: locate the same node by walking both trees in parallel
    clone = copy.deepcopy(tree)
    originals = list(ast.walk(tree))
    clones = list(ast.walk(clone))
    target = clones[originals.index(point[0])]
    _Apply(target, point[1]).visit(clone)
    ast.fix_missing_locations(clone)
    return ast.unparse(clone) + "\n"


def _scratch_copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache",
                                    "bench", "demo_output", "demo_campaign")
    shutil.copytree(ROOT, dest, ignore=ignore)


def _run_tests(repo: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=str(repo), NUMBA_CACHE_DIR=str(repo / ".numba"))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               "-m", "not slow", *tests], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.perf_counter() - t0
    status = "survived" if proc.returncode == 0 else "killed"
    if proc.returncode not in (0, 1):  # collection error, crash: counts as killed, say so
        status = f"killed (exit {proc.returncode})"
    return status, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: python -m tools.mutation --per-module 25")
    parser.add_argument("--modules", nargs="+", default=list(TARGETS),
                        help="science modules to mutate (default: all of TARGETS)")
    parser.add_argument("--per-module", type=int, default=25, help="mutants sampled per module")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--list", action="store_true", help="list the sampled mutants only")
    parser.add_argument("--only", nargs="+", type=int, default=None, metavar="INDEX",
                        help="run these candidate indices (of one module) instead of a sample")
    parser.add_argument("--mutants", nargs="+", default=None, metavar="MODULE:INDEX",
                        help="run these mutants (of any modules, e.g. to re-run the survivors "
                             "of a merged report) instead of a sample")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="merge the results of earlier runs (chunks) into one report")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "mutation.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merge:
        result = merge(args.merge, Path(args.output))
    else:
        result = _run(args)
        if result is None:
            return 1
    print(result)  # the command's result, on stdout (progress went to the log)
    return 0


def _run(args) -> str | None:
    """Sample, run and report the mutants of ``args``: the report's text (the list of
    sampled mutants with ``--list``), or None when the unmutated tests fail."""
    equivalent = _equivalents()
    picked: dict[str, list[int]] = {}
    for item in args.mutants or []:
        module, _, index = item.rpartition(":")
        picked.setdefault(module, []).append(int(index))
    if picked:
        args.modules = list(picked)

    plan = []
    for module in args.modules:
        tree, points = candidates(module)
        rng = random.Random(f"{args.seed}:{module}")
        chosen = sorted(picked[module]) if picked else sorted(args.only) if args.only else \
            sorted(rng.sample(range(len(points)), min(args.per_module, len(points))))
        for i in chosen:
            node, kind, detail, line = points[i]
            plan.append((module, tree, points[i],
                         Mutant(module, i, detail.split(":")[0], line, kind, detail)))
        logger.info("%s: %d candidate mutants, %d sampled", module, len(points), len(chosen))
    if args.list:
        return "\n".join(f"  {m.module}:{m.line} [{m.kind}] {m.detail}" for _, _, _, m in plan)

    work = Path(tempfile.mkdtemp(prefix="mutation-"))
    slots = []
    for k in range(max(1, args.jobs)):
        repo = work / f"repo{k}"
        _scratch_copy(repo)
        slots.append(repo)
    # baseline, once per test subset: the unparsed originals of every module it covers must
    # pass, and give the time budget of a mutant
    budget = {}
    modules = sorted({m for m, *_ in plan})
    for tests in sorted({tuple(TARGETS[m]) for m in modules}):
        covered = [m for m in modules if tuple(TARGETS[m]) == tests]
        repo = slots[0]
        originals = {m: (ROOT / m).read_text(encoding="utf-8") for m in covered}
        for m in covered:
            (repo / m).write_text(ast.unparse(candidates(m)[0]) + "\n", encoding="utf-8")
        status, seconds = _run_tests(repo, list(tests), timeout=1800)
        for m, text in originals.items():
            (repo / m).write_text(text, encoding="utf-8")
        if status != "survived":
            logger.error("baseline FAILED for %s: fix the tests first", " ".join(tests))
            return None
        for m in covered:
            budget[m] = max(60.0, 3 * seconds)
        logger.info("baseline %s: tests pass in %.1f s", " ".join(tests), seconds)

    free = list(slots)
    from threading import Lock
    lock = Lock()

    def run(item):
        module, tree, point, mutant = item
        with lock:
            repo = free.pop()
        try:
            original = (repo / module).read_text(encoding="utf-8")
            (repo / module).write_text(mutated_source(tree, point), encoding="utf-8")
            mutant.status, mutant.seconds = _run_tests(repo, TARGETS[module], budget[module])
            (repo / module).write_text(original, encoding="utf-8")
        finally:
            with lock:
                free.append(repo)
        if mutant.status == "survived" and _is_equivalent(mutant, equivalent):
            mutant.status = "equivalent"
        logger.info("%16s  %s:%d [%s] %s (%.0f s)", mutant.status, mutant.module, mutant.line,
                    mutant.kind, mutant.detail, mutant.seconds)
        return mutant

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        results = list(pool.map(run, plan))
    shutil.rmtree(work, ignore_errors=True)

    return report(results, args.modules, Path(args.output))


def report(results: list[Mutant], modules: list[str], out: Path | None) -> str:
    """The table per module, the summary line and the survivors (text); writes ``out``
    (JSON)."""
    lines = ["", f"{'module':40s} mutants  killed  equivalent  survived  rate"]
    total = killed = eq = 0
    for module in modules:
        rows = [m for m in results if m.module == module]
        k = sum(m.status.startswith("killed") for m in rows)
        e = sum(m.status == "equivalent" for m in rows)
        s = sum(m.status == "survived" for m in rows)
        rate = (k / (len(rows) - e)) if len(rows) > e else float("nan")
        lines.append(f"{module:40s} {len(rows):7d} {k:7d} {e:11d} {s:9d}  {100 * rate:5.1f} %")
        total, killed, eq = total + len(rows), killed + k, eq + e
    rate = killed / (total - eq) if total > eq else float("nan")
    summary = {"mutants": total, "killed": killed, "equivalent": eq,
               "survived": total - killed - eq, "kill_rate": rate,
               "cpu_seconds": round(sum(m.seconds for m in results)),
               "survivors": [asdict(m) for m in results if m.status == "survived"]}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"summary": summary, "mutants": [asdict(m) for m in results]},
                                  indent=1) + "\n")
    lines.append(json.dumps({k: v for k, v in summary.items() if k != "survivors"}))
    lines += [f"survived: {m['module']}:{m['line']} [{m['kind']}] {m['detail']}"
              for m in summary["survivors"]]
    return "\n".join(lines)


def merge(paths: list[str], out: Path | None) -> str:
    """One report from the JSON files of several runs (chunks); a mutant rerun later (after
    a test was added) replaces its earlier result, and equivalents are applied again."""
    equivalent = _equivalents()
    by_key: dict = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["mutants"]:
            m = Mutant(**row)
            if m.status in ("survived", "equivalent"):
                m.status = "equivalent" if _is_equivalent(m, equivalent) else "survived"
            by_key[(m.module, m.index)] = m
    results = list(by_key.values())
    modules = [m for m in TARGETS if any(r.module == m for r in results)]
    return report(results, modules, out)


def _is_equivalent(m: Mutant, equivalent: dict) -> bool:
    """Listed as ``module:line:detail`` (one mutant) or ``module:detail`` (every mutant of
    that kind in that function)."""
    return f"{m.module}:{m.line}:{m.detail}" in equivalent or \
        f"{m.module}:{m.detail}" in equivalent


def _equivalents() -> dict:
    path = ROOT / "tools" / "mutation_equivalent.json"
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())

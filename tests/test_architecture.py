"""Import direction and command-line conventions of the whole repository."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("bias_pipeline", "dark_pipeline", "flat_pipeline")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((str(path), alias.name.split(".")[0]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path), node.module.split(".")[0]))
    return found


def test_utils_imports_no_pipeline_or_analysis():
    bad = [(f, m) for f, m in _imports("utils") if m in PIPELINES + ("analysis",)]
    assert not bad


@pytest.mark.parametrize("package", PIPELINES)
def test_pipelines_do_not_import_each_other(package):
    bad = [(f, m) for f, m in _imports(package) if m in PIPELINES and m != package]
    assert not bad


@pytest.mark.parametrize("module", ["utils.raw_to_fits", "utils.index_dataset", "utils.simulate",
                                    "analysis.process_index", "run_calibration",
                                    "bias_pipeline.run_pipeline", "bias_pipeline.generate_bias",
                                    "bias_pipeline.bias_temp_analysis",
                                    "dark_pipeline.run_pipeline", "run_full_radiation_pipeline",
                                    "analysis.fit_radiation_model"])
def test_every_command_has_help_with_example(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out and "--verbose" in out


def test_snake_case_aliases_are_accepted():
    from utils.raw_to_fits import build_parser

    args = build_parser().parse_args(["a", "b", "c", "--search_depth", "3", "--skip_flat"])
    assert args.search_depth == 3 and args.skip_flat

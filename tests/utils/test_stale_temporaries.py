"""Leftovers of a killed run (``.<name>.<random>.tmp``) are deleted by the next run of every
command, not only by index processing and the bias and dark pipelines."""

from __future__ import annotations

from utils.settings import dump_settings


def _plant(folder):
    folder.mkdir(parents=True, exist_ok=True)
    leftover = folder / ".master.fits.ab12cd34.tmp"
    leftover.write_bytes(b"half a file")
    return leftover


def test_config_dump_removes_leftovers_of_a_killed_run(tmp_path):
    """dump_settings marks the start of every command's writing; the leftovers below its
    folder go there.  A file that is not an atomic-write temporary stays."""
    top, deep = _plant(tmp_path / "out"), _plant(tmp_path / "out" / "plots" / "sub")
    other = tmp_path / "out" / "notes.tmp"
    other.write_text("mine")
    dump_settings(tmp_path / "out", example={"a": 1})
    assert not top.exists() and not deep.exists() and other.exists()
    assert (tmp_path / "out" / "config_used.json").is_file()


def test_structure_analysis_rerun_removes_leftovers(tmp_path):
    """README (Errors and re-runs): a killed run leaves '.<name>.<random>.tmp' files 'which
    the next run of the same command deletes'.  Only index processing, the bias and dark
    pipelines and the converter did; the structure analysis (like the flat pipeline, the
    radiation, dose, damage, operation, outgassing and RTS analyses, the radiation model and
    the report) left them for ever."""
    from analysis import structure_analysis
    from utils.sim.sequences import simulate_flat_sequence

    campaign = simulate_flat_sequence(tmp_path / "seq", seed=3, visits=2, flats=2,
                                      width=16, height=12)
    out = tmp_path / "out"
    leftovers = [_plant(out), _plant(out / "differences")]
    assert structure_analysis.main([str(campaign.root), "--output-dir", str(out),
                                    "--no-progress"]) == 0
    assert not any(p.exists() for p in leftovers)


def test_config_dump_waits_only_for_figures_bound_below_its_folder(tmp_path):
    """Cleaning a folder waits for the figures still rendering into it (their temporaries
    must not be deleted), not for those of other folders, which keep rendering behind the
    computation (a wait for every figure at each pipeline's start cost the overlap)."""
    from concurrent.futures import Future

    from utils.plotting import FigureWriter

    writer = FigureWriter("summary")
    inside, outside = Future(), Future()
    inside.set_result("ok")
    writer._pending = [(tmp_path / "out" / "plots" / "a.png", inside),
                       (tmp_path / "elsewhere" / "b.png", outside)]
    writer.wait_under(tmp_path / "out")
    assert [p for p, _ in writer._pending] == [tmp_path / "elsewhere" / "b.png"]
    assert not outside.done()


def test_full_radiation_rerun_removes_its_own_leftovers(tmp_path):
    """run_full_radiation_pipeline.py writes index.csv, summary.json, procedure_checks.csv
    and <stage>/plots/ itself, outside every step pipeline's folder: a run killed while
    writing them left '.bias_intensity.png.<random>.tmp' (seen after a SIGKILL at 80 % of a
    64x48 campaign) that no re-run removed, also when the re-run found nothing to redo."""
    import run_full_radiation_pipeline as full
    from utils.sim import simulate_dosedirs

    campaign = simulate_dosedirs(tmp_path / "campaign", seed=5, width=16, height=12, frames=3,
                                 doses=(5, 10), with_log=(False,), dose_profile="increments")
    out = tmp_path / "out"
    argv = [str(campaign.root), str(out), "--no-progress", "--plots", "none"]
    early = [_plant(out), _plant(out / "pre" / "plots")]
    assert full.main(argv) == 0
    assert not any(p.exists() for p in early)
    late = [_plant(out), _plant(out / "radiating" / "plots")]   # a later run, killed
    assert full.main(argv) == 0                                  # nothing to redo
    assert not any(p.exists() for p in late)

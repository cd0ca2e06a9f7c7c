"""utils.stack.master.real_paths resolves paths as os.path.realpath does (folders once), so a
master's INHASH is the same with and without it."""

from __future__ import annotations

import os

from utils.stack.master import CombineSettings, inputs_hash, real_paths


def test_real_paths_equal_realpath(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for name in ("a.fits", "b.fits"):
        (data / "sub" / name).write_bytes(b"")
    (tmp_path / "link_dir").symlink_to(data)                        # a linked folder
    (data / "sub" / "c.fits").symlink_to(data / "sub" / "a.fits")   # a linked file
    monkeypatch.chdir(tmp_path)
    paths = [str(data / "sub" / "a.fits"), str(tmp_path / "link_dir" / "sub" / "b.fits"),
             str(data / "sub" / "c.fits"), "link_dir/sub/a.fits", "a_missing.fits",
             str(tmp_path / "link_dir" / "sub" / ".." / "sub" / "b.fits"),
             str(tmp_path / "link_dir" / "sub" / "..")]
    real = real_paths(paths)
    assert real == {p: os.path.realpath(p) for p in paths}
    assert real[paths[2]] == str(data / "sub" / "a.fits")  # the link's target, not its name
    settings = CombineSettings()
    assert inputs_hash(paths, settings, "ref", real=real) == inputs_hash(paths, settings, "ref")

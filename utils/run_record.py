"""``summary.json`` as the record of a complete pipeline run, so a re-run can skip it.

A pipeline hashes what determines its products (the masters' ``INHASH`` and
every setting) and writes ``summary.json`` last, with that hash and the list
of files it wrote.  A later run with the same hash, whose files all still
exist, keeps them and does nothing; a crash before the summary leaves no
record, so the next run redoes the work.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from . import headers as kw
from .io.fitsio import read_header, write_text

SUMMARY = "summary.json"


def run_digest(settings, masters: Iterable[str | os.PathLike], *extra: str) -> str:
    """Short hash of ``repr(settings)``, each master's ``INHASH`` (else its path) and ``extra``."""
    digest = hashlib.sha1(repr(settings).encode())
    for path in masters:
        digest.update(str(read_header(path).get(kw.INHASH, path)).encode())
    for item in extra:
        digest.update(str(item).encode())
    return digest.hexdigest()[:16]


def completed_run(out_dir: str | os.PathLike, digest: str) -> dict | None:
    """The previous summary when it has the same hash and all its files still exist."""
    out_dir = Path(out_dir)
    try:
        summary = json.loads((out_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if summary.get("inputs_hash") != digest:
        return None
    if not all((out_dir / f).is_file() for f in summary.get("files", [])):
        return None
    return summary


def write_run_summary(out_dir: str | os.PathLike, summary: dict, files: Iterable[Path],
                      digest: str | None, default=str) -> Path:
    """Write ``summary.json`` (atomically) with the hash and the files below ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    record = dict(summary)
    if digest is not None:
        record["inputs_hash"] = digest
    record["files"] = sorted({Path(p).resolve().relative_to(out_dir).as_posix() for p in files
                              if Path(p).resolve().is_relative_to(out_dir)} | {SUMMARY})
    return write_text(json.dumps(record, indent=2, default=default) + "\n", out_dir / SUMMARY)


__all__ = ["run_digest", "completed_run", "write_run_summary", "SUMMARY"]

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
import logging
import os
from pathlib import Path
from typing import Iterable

from . import headers as kw
from .io.fitsio import json_text, read_header, write_text

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
    """Write ``summary.json`` (atomically) with the hash and the files below ``out_dir``;
    undefined numbers (NaN: e.g. the error of a fit with no degree of freedom) as null."""
    out_dir = Path(out_dir).resolve()
    record = dict(summary)
    if digest is not None:
        record["inputs_hash"] = digest
    record["files"] = sorted({Path(p).resolve().relative_to(out_dir).as_posix() for p in files
                              if Path(p).resolve().is_relative_to(out_dir)} | {SUMMARY})
    return write_text(json_text(record, default), out_dir / SUMMARY)


class StageRuns:
    """Results of one pipeline run per (stage, dose step), each in its own sub-folder.

    Attributes
    ----------
    out_dir : pathlib.Path
        Parent output folder.
    results : dict
        ``{stage tag: result}`` of the groups that completed.
    failures : dict
        ``{stage tag: one-line reason}`` of the groups that could not be modelled.
    """

    def __init__(self, out_dir: Path, what: str):
        self.out_dir, self.what = Path(out_dir), what
        self.results: dict = {}
        self.failures: dict = {}

    def run(self, tag: str, make) -> None:
        """Run ``make()``; a :class:`~utils.errors.UserError` is recorded, not raised."""
        from .errors import UserError

        try:
            self.results[tag] = make()
        except UserError as err:
            logging.getLogger(__name__).warning("%s %s: %s", self.what, tag, err)
            self.failures[tag] = str(err)

    def check(self) -> "StageRuns":
        """Raise one :class:`~utils.errors.UserError` when no group completed."""
        from .errors import UserError

        if not self.results:
            reasons = "; ".join(f"{tag}: {why}" for tag, why in self.failures.items())
            raise UserError(f"{self.what}: none of the {len(self.failures)} (stage, dose step) "
                            f"groups could be modelled ({reasons})")
        return self

    def summary_line(self) -> str:
        """One line: per group, its result's line or why it failed."""
        parts = [f"{tag}: {r.summary_line()}" for tag, r in self.results.items()]
        parts += [f"{tag}: not modelled ({why})" for tag, why in self.failures.items()]
        return f"{self.what} per (stage, dose step) in {self.out_dir}: " + " | ".join(parts)


__all__ = ["run_digest", "completed_run", "write_run_summary", "StageRuns", "SUMMARY"]

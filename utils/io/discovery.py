"""Finding attempts (folders of raw frames) and FITS frames inside a campaign section.

An *attempt* is a folder holding a ``frames/`` sub-folder of raw files, with
its config and per-frame log beside it; usually it is called ``attempt<n>``,
but attempt-less folders (``20Frames/T20/T0/0.4s/frames/``) count too.  Each
attempt is found exactly once: the walk does not descend into an attempt once
it has been recorded (the old code recorded many attempts twice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputPathError

FRAMES_DIR = "frames"
FITS_DIR = "fits"
RAW_SUFFIXES = (".raw", ".bin")
#: How deep to look when telling the user the depth they need.
_PROBE_DEPTH = 30


@dataclass(frozen=True)
class Attempt:
    """One acquisition attempt.

    Attributes
    ----------
    path : Path
        The attempt folder (contains ``frames/``).
    section_root : Path
        Root of the campaign section it was found in; folder names are parsed below it.
    """

    path: Path
    section_root: Path

    @property
    def name(self) -> str:
        """Attempt label: the folder name if it is ``attempt*``, else its path below the root."""
        if self.path.name.lower().startswith("attempt"):
            return self.path.name
        rel = self.path.relative_to(self.section_root)
        return "/".join(rel.parts) or self.path.name

    @property
    def frames_dir(self) -> Path:
        """Folder of raw files."""
        return self.path / FRAMES_DIR

    @property
    def fits_dir(self) -> Path:
        """Folder the converted FITS files go to."""
        return self.path / FITS_DIR

    def raw_files(self) -> list[Path]:
        """Raw frame files, sorted by name (frame-number order for zero-padded names)."""
        if not self.frames_dir.is_dir():
            return []
        return sorted(p for p in self.frames_dir.iterdir()
                      if p.is_file() and p.suffix.lower() in RAW_SUFFIXES
                      and not p.name.startswith("."))


def _is_attempt(path: Path) -> bool:
    return (path / FRAMES_DIR).is_dir()


def _walk(root: Path, max_depth: int):
    """Yield (dir, depth) breadth-first, pruning at max_depth and inside attempts."""
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        yield folder, depth
        if depth >= max_depth or (folder != root and _is_attempt(folder)):
            continue
        try:
            children = sorted((e for e in os.scandir(folder) if e.is_dir(follow_symlinks=True)),
                              key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in children:
            if entry.name in (FRAMES_DIR, FITS_DIR) or entry.name.startswith("."):
                continue
            stack.append((Path(entry.path), depth + 1))


def find_attempts(section_root: str | os.PathLike, max_depth: int = 6) -> list[Attempt]:
    """Find every attempt folder at most ``max_depth`` levels below ``section_root``.

    The section root itself counts (depth 0) when it holds ``frames/`` directly.

    Raises
    ------
    InputPathError
        If ``section_root`` is not a folder, or holds no attempt within the
        depth (the message says which depth would find them, if any).
    """
    root = Path(section_root)
    if not root.is_dir():
        raise InputPathError(f"{root}: section folder does not exist; check the path")
    attempts = [Attempt(folder, root) for folder, _ in _walk(root, max_depth)
                if _is_attempt(folder)]
    if attempts:
        return sorted(attempts, key=lambda a: str(a.path))
    deeper = [depth for folder, depth in _walk(root, _PROBE_DEPTH) if _is_attempt(folder)]
    if deeper:
        # suggest the depth that reaches every attempt, not just the shallowest one
        low, high = min(deeper), max(deeper)
        levels = f"{low}" if low == high else f"{low} to {high}"
        raise InputPathError(f"{root}: no attempts found within --search-depth {max_depth}; "
                             f"attempts exist {levels} levels down: re-run with "
                             f"--search-depth {high}")
    raise InputPathError(f"{root}: no attempts found (no folder with a '{FRAMES_DIR}/' "
                         "sub-folder of raw files); check the path or try a larger --search-depth")


def find_fits(root: str | os.PathLike, max_depth: int = 8) -> list[Path]:
    """Every ``*.fits``/``*.fit`` file at most ``max_depth`` folders below ``root``, sorted.

    Temporary files of interrupted writes (``.name.tmp``) are not frames and are skipped.
    """
    root = Path(root)
    found: list[Path] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                if depth < max_depth and entry.name != FRAMES_DIR:
                    stack.append((Path(entry.path), depth + 1))
            elif entry.name.lower().endswith((".fits", ".fit")):
                found.append(Path(entry.path))
    return sorted(found)


#: Section folders of the standard campaign.
STANDARD_SECTIONS = {"BIAS": "TestSection1", "DARK": "TestSection2", "FLAT": "TestSection3"}
#: Section folders inside each irradiation stage.
STAGE_SECTIONS = {"BIAS": "Bias", "DARK": "Darks", "FLAT": "Flats"}
#: Stage folders of an irradiation campaign.
STAGE_FOLDERS = {"pre": "Preirradiation", "radiating": "Irradiation", "post": "Postirradiation"}


@dataclass(frozen=True)
class StageSections:
    """The calibration sections of one stage (or dose step) of a campaign."""

    stage: str               # '' for a standard campaign
    root: Path               # folder holding the sections
    sections: dict           # caltype -> Path (only those that exist)


def _child(folder: Path, name: str) -> Path | None:
    """``folder/name``, matching the name case-insensitively."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    return None


def campaign_sections(root: str | os.PathLike, layout: str) -> list[StageSections]:
    """List the sections of a ``standard`` or ``irradiation`` campaign.

    Standard: ``TestSection1/2/3``.  Irradiation: ``Preirradiation``, every
    sub-folder of ``Irradiation`` (one per dose step) and ``Postirradiation``,
    each with ``Bias``, ``Darks``, ``Flats``.  Missing sections are left out.

    Raises
    ------
    InputPathError
        ``root`` is missing or holds none of the expected folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputPathError(f"{root}: dataset folder does not exist; check the path")
    found: list[StageSections] = []
    if layout == "standard":
        sections = {cal: p for cal, name in STANDARD_SECTIONS.items()
                    if (p := _child(root, name)) is not None}
        if sections:
            found.append(StageSections("", root, sections))
        expected = ", ".join(STANDARD_SECTIONS.values())
    elif layout == "irradiation":
        stage_roots: list[tuple[str, Path]] = []
        for stage, name in STAGE_FOLDERS.items():
            folder = _child(root, name)
            if folder is None:
                continue
            if stage == "radiating":
                stage_roots += [(stage, step) for step in sorted(folder.iterdir()) if step.is_dir()]
            else:
                stage_roots.append((stage, folder))
        for stage, folder in stage_roots:
            sections = {cal: p for cal, name in STAGE_SECTIONS.items()
                        if (p := _child(folder, name)) is not None}
            if sections:
                found.append(StageSections(stage, folder, sections))
        expected = ", ".join(STAGE_FOLDERS.values()) + " (each with Bias, Darks, Flats)"
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if not found:
        raise InputPathError(f"{root}: none of {expected} found; is this a {layout} campaign?")
    return found

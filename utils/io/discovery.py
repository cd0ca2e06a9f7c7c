"""Finding attempts (folders of raw frames) and FITS frames inside a campaign section.

An *attempt* is a folder holding a ``frames/`` sub-folder of raw files, with
its config and per-frame log beside it; usually it is called ``attempt<n>``,
but attempt-less folders (``20Frames/T20/T0/0.4s/frames/``) count too.  Each
attempt is found exactly once: the walk does not descend into an attempt once
it has been recorded (the old code recorded many attempts twice).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError, InputPathError

logger = logging.getLogger(__name__)
#: Links already reported as unfollowable (one warning per link per process).
_WARNED: set = set()

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


def real_paths(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{path: os.path.realpath(path)}``, each folder resolved once (``Path.resolve`` is
    ``realpath``).

    A path whose last component is not a symbolic link (nor ``.``/``..``) resolves to
    its resolved folder joined with that name, which is what ``realpath`` computes one
    ``lstat`` per component at a time (~10 per frame, a few ms a set on a VM).
    """
    folders: dict[str, str] = {}
    real = {}
    for path in map(os.fspath, paths):
        head, tail = os.path.split(path)
        if tail in ("", ".", "..") or os.path.islink(path):
            real[path] = os.path.realpath(path)
            continue
        if head not in folders:
            folders[head] = os.path.realpath(head or ".")
        real[path] = os.path.join(folders[head], tail)
    return real


def _is_attempt(path: Path) -> bool:
    return (path / FRAMES_DIR).is_dir()


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(device, inode)`` of the real folder behind ``path`` (None when it cannot be reached)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def subfolders(folder: str | os.PathLike, seen: set | None = None) -> list[os.DirEntry]:
    """Sub-folders of ``folder`` (symbolic links followed), sorted by name.

    With ``seen`` (a set of ``(device, inode)``), a folder already reached by
    another path (a symbolic link back up the tree, a second link to the same
    place) is left out and its identity added otherwise, so a walk visits each
    real folder once and symlink loops end.  Links that cannot be followed
    (dangling, or a loop of links) are logged and skipped; they never hide
    their siblings.  An unreadable folder gives an empty list.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        logger.warning("%s: cannot list this folder (%s); skipped", folder,
                       err.strerror or err)
        return []
    out = []
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError as err:  # ELOOP: a link that points (through links) to itself
            if entry.path not in _WARNED:
                _WARNED.add(entry.path)
                logger.warning("%s: symbolic link cannot be followed (%s); skipped", entry.path,
                               err.strerror or err)
            continue
        if not is_dir:
            if entry.is_symlink() and not os.path.exists(entry.path):
                logger.debug("%s: dangling symbolic link; skipped", entry.path)
            continue
        if seen is not None:
            identity = _identity(entry.path)
            if identity is None or identity in seen:
                if entry.is_symlink():
                    logger.debug("%s: symbolic link to a folder already visited; skipped",
                                 entry.path)
                continue
            seen.add(identity)
        out.append(entry)
    return out


def _walk(root: Path, max_depth: int):
    """Yield (dir, depth) depth-first in name order, pruning at max_depth and inside attempts;
    each real folder once (symbolic links followed, loops cut)."""
    seen = {_identity(root)}
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        yield folder, depth
        if depth >= max_depth or (folder != root and _is_attempt(folder)):
            continue
        children = [e for e in subfolders(folder, seen)
                    if e.name not in (FRAMES_DIR, FITS_DIR) and not e.name.startswith(".")]
        for entry in reversed(children):
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
    seen = {_identity(root)}
    files_seen: set = set()
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if depth < max_depth:
            for entry in subfolders(folder, seen):
                if entry.name != FRAMES_DIR and not entry.name.startswith("."):
                    stack.append((Path(entry.path), depth + 1))
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().endswith((".fits", ".fit")):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    continue
            except OSError:
                pass  # a link loop named *.fits: listed, so the index flags it unreadable
            identity = _identity(entry.path)
            if identity is not None:
                if identity in files_seen:
                    continue  # the same file through a second link
                files_seen.add(identity)
            found.append(Path(entry.path))
    return sorted(found)


def check_distinct_sections(sections: list[tuple[str, str | os.PathLike]]) -> None:
    """One-line error when two sections are the same folder or one lies inside another.

    Every frame would otherwise be converted or indexed twice, possibly under two
    calibration types.

    Parameters
    ----------
    sections : list of (caltype, path)
        The sections as the user gave them.

    Raises
    ------
    ConfigError
        Two sections overlap.
    """
    resolved = [(cal.lower() or "mixed", Path(path), Path(path).resolve())
                for cal, path in sections]
    for i, (a, pa, ra) in enumerate(resolved):
        for b, pb, rb in resolved[i + 1:]:
            if ra == rb:
                raise ConfigError(f"{pb}: the same folder is given twice (as the {a} and the {b} "
                                  "section); give each section once")
            if ra in rb.parents:
                inner, inner_path, outer, outer_path = b, pb, a, pa
            elif rb in ra.parents:
                inner, inner_path, outer, outer_path = a, pa, b, pb
            else:
                continue
            raise ConfigError(f"{inner_path}: the {inner} section lies inside the {outer} section "
                              f"{outer_path}; its frames would be listed twice: give separate "
                              "folders")


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

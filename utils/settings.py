"""Typed, validated, frozen settings and the ``config_used.json`` they leave behind.

Each pipeline declares its settings as a frozen dataclass whose fields carry a
type, a default and a one-line ``doc`` in their metadata; ``__post_init__``
validates them.  :func:`dump_settings` writes the effective values next to the
outputs so a product can always be traced to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .io.fitsio import remove_stale_temporaries, software_version, utc_now, write_json

logger = logging.getLogger(__name__)


def field(default: Any, doc: str, **kwargs):
    """A dataclass field with a one-line documentation string (units in brackets)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["doc"] = doc
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def describe(settings_cls) -> str:
    """One line per field: name, default and doc (used in ``--help`` texts)."""
    lines = []
    for f in dataclasses.fields(settings_cls):
        lines.append(f"  {f.name} = {f.default!r}: {f.metadata.get('doc', '')}")
    return "\n".join(lines)


def to_dict(settings) -> dict[str, Any]:
    """Plain-JSON view of a settings dataclass (nested ones included)."""
    def convert(value):
        if dataclasses.is_dataclass(value):
            return {k: convert(v) for k, v in dataclasses.asdict(value).items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, os.PathLike):
            return str(value)
        return value
    return convert(settings)


def remove_interrupted_writes(out_dir: str | os.PathLike) -> int:
    """Delete the ``.<name>.<random>.tmp`` files a killed run left below ``out_dir``, once
    the figures still being rendered into it are written (a figure of an earlier step may be
    on its way into a sub-folder; figures bound elsewhere keep rendering behind the
    computation).  Every command calls it (through :func:`dump_settings`, or itself when it
    writes no ``config_used.json``) once its inputs are checked.

    Returns
    -------
    int
        The number of files removed.
    """
    from . import plotting

    plotting.figures().wait_under(out_dir)
    removed = remove_stale_temporaries(out_dir, recursive=True)
    if removed:
        logger.info("removed %d temporary files of an interrupted run in %s", removed, out_dir)
    return removed


def dump_settings(out_dir: str | os.PathLike, **sections) -> Path:
    """Write ``config_used.json`` in ``out_dir`` with each named settings object.

    Every command calls it once its inputs are checked, before its first product, so it
    also deletes the ``.<name>.<random>.tmp`` files a killed run left below ``out_dir``
    (:func:`~utils.io.fitsio.remove_stale_temporaries`).

    Parameters
    ----------
    out_dir : path-like
        Output folder of the run.
    **sections
        ``name=settings_or_dict`` pairs, e.g. ``conversion=ConversionSettings()``.
    """
    # the run starts writing here (inputs checked): the temporaries a killed run left in
    # this folder tree go first
    remove_interrupted_writes(out_dir)
    payload = {"software": software_version(), "written": utc_now()}
    payload.update({name: to_dict(value) for name, value in sections.items()})
    return write_json(payload, Path(out_dir) / "config_used.json", sort_keys=True)


def replace_checked(settings, **changes):
    """``dataclasses.replace`` that turns validation errors into :class:`ConfigError`."""
    try:
        return dataclasses.replace(settings, **changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid settings: {err}") from err

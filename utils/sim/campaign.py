"""Truth records of a simulated campaign and how to read them back (:func:`load_campaign`)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .physics import Physics

TRUTH_DIR = "truth"
TRUTH_JSON = "truth.json"
TRUTH_NPZ = "truth.npz"


# ================================================================================================
# Truth records and the campaign
# ================================================================================================

@dataclass(frozen=True)
class FrameTruth:
    """What went into one frame.

    Attributes
    ----------
    path : str
        File path relative to the campaign root (POSIX separators).
    attempt : str
        Folder holding the frame's configuration and log (raw layouts) or its FITS folder.
    kind : str
        ``bias``, ``dark`` or ``flat``.
    stage : str or None
        ``pre``, ``radiating`` or ``post``; None in the standard campaign.
    step : str or None
        Dose-step folder, e.g. ``10kRads``; None outside irradiation.
    setpoint : float
        Temperature set point [degC] (the one in folder and file names).
    temperature : float
        Recorded sensor temperature [degC]; the frame's physics used this value.
    exposure : float
        Requested exposure time [s].
    real_exposure : float
        Real exposure time reported by the camera [s]; the physics integrated this.
    dose : float
        Accumulated dose in the logs at the frame's time [krad].
    damage_dose : float
        Dose the damage physics used [krad] (lower than ``dose`` after annealing).
    frame : int
        Frame number within its attempt (``FrameNum``).
    timestamp : float
        Acquisition time, Unix time [s].
    defect : str or None
        ``truncated``, ``all_zero``, ``dead_region``, ``zero_band``, ``lamp_drift`` or None.
    dose_rate : float
        True dose rate during the frame's exposure [krad/s] (0 with the beam off).
    beam : bool
        True when the beam was on during the frame.
    since_beam_off : float or None
        Time since the beam last went off [s]; None while it is on or before any irradiation.
    illumination : float
        Flat lamp flux relative to ``Physics.flat_flux`` [1] (1 for bias and darks).
    """

    path: str
    attempt: str
    kind: str
    stage: str | None
    step: str | None
    setpoint: float
    temperature: float
    exposure: float
    real_exposure: float
    dose: float
    damage_dose: float
    frame: int
    timestamp: float
    defect: str | None = None
    dose_rate: float = 0.0
    beam: bool = False
    since_beam_off: float | None = None
    illumination: float = 1.0


@dataclass(frozen=True)
class AttemptTruth:
    """How one attempt folder was written (file names and formatting variants).

    Attributes
    ----------
    path : str
        Folder relative to the campaign root.
    kind : str
        Frame kind of the attempt.
    setpoint : float
        Temperature set point [degC].
    exposure : float
        Requested exposure [s].
    frames : int
        Number of frames.
    config : str or None
        Configuration file name (``configFile.txt`` or ``config.txt``), None for FITS folders.
    config_style : str or None
        ``"KEY: value"``, ``"key=value"``, ``"KEY = value"``.
    log : str or None
        Per-frame log name.
    delimiter : str
        Log field delimiter.
    temperature_column : str
        Name of the sensor-temperature column of the log.
    """

    path: str
    kind: str
    setpoint: float
    exposure: float
    frames: int
    config: str | None
    config_style: str | None
    log: str | None
    delimiter: str = ","
    temperature_column: str = "Temperature"


@dataclass
class Campaign:
    """A simulated campaign on disk.

    Attributes
    ----------
    root : pathlib.Path
        Campaign folder (``OUT``).
    layout : str
        ``standard``, ``irradiation`` or ``dosedirs``.
    seed : int
        Seed of the generator.
    width, height : int
        Frame size [pixel].
    physics : Physics
        Parameters used.
    records : list of FrameTruth
        One record per frame file, in acquisition order.
    attempts : list of AttemptTruth
        One record per attempt (or FITS group), in acquisition order.
    truth_json, truth_npz : pathlib.Path
        The truth files.
    """

    root: Path
    layout: str
    seed: int
    width: int
    height: int
    physics: Physics
    records: list[FrameTruth]
    attempts: list[AttemptTruth]
    truth_json: Path
    truth_npz: Path

    def select(self, **criteria: Any) -> list[FrameTruth]:
        """Records matching all ``criteria``, e.g. ``select(kind="dark", defect=None)``."""
        unknown = set(criteria) - {f.name for f in dataclasses.fields(FrameTruth)}
        if unknown:
            raise ValueError(f"unknown FrameTruth fields: {sorted(unknown)}")
        return [r for r in self.records if all(getattr(r, k) == v for k, v in criteria.items())]

    def path(self, record: FrameTruth) -> Path:
        """Absolute path of a record's frame file."""
        return self.root / record.path

    def maps(self) -> dict[str, np.ndarray]:
        """Load the per-pixel truth maps (see :func:`truth_maps`, :func:`damage_maps`)."""
        with np.load(self.truth_npz, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def summary(self) -> str:
        """One line: what was written where."""
        defects = sum(r.defect is not None for r in self.records)
        return (f"{self.layout} campaign, seed {self.seed}, {self.width}x{self.height} px: "
                f"{len(self.records)} frames ({defects} defective) in {len(self.attempts)} groups "
                f"under {self.root}; truth in {self.truth_json.parent}")


def load_campaign(root: str | os.PathLike) -> Campaign:
    """Read back a simulated campaign from its ``truth/truth.json``.

    Raises
    ------
    UserError
        When ``root`` holds no truth file.
    """
    root = Path(root)
    path = root / TRUTH_DIR / TRUTH_JSON
    if not path.is_file():
        raise UserError(f"{path}: no simulation truth here; run python -m utils.simulate first")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return Campaign(root=root, layout=doc["layout"], seed=doc["seed"], width=doc["width"],
                    height=doc["height"], physics=Physics(**doc["physics"]),
                    records=[FrameTruth(**r) for r in doc["frames"]],
                    attempts=[AttemptTruth(**a) for a in doc["attempts"]],
                    truth_json=path, truth_npz=root / TRUTH_DIR / TRUTH_NPZ)

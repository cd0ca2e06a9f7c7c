"""The campaign simulator: physics (:mod:`.physics`), truth records (:mod:`.campaign`), the
plan of a campaign (:mod:`.plan`) and its on-disk layouts (:mod:`.layouts`); the command line
is :mod:`utils.simulate`."""

from .campaign import AttemptTruth, Campaign, FrameTruth, load_campaign
from .layouts import (
    simulate_dosedirs,
    simulate_irradiation,
    simulate_standard,
)
from .physics import (
    Physics,
    Sensor,
    bias_level,
    damage_maps,
    dark_current,
    digitise,
    flat_illumination,
    make_sensor,
    radiation_model_truth,
    render_frame,
    truth_maps,
)
from .plan import (
    CAMPAIGN_RADIATION_LOG,
    CAMPAIGN_START,
    DOSEDIR_LOG,
    RADIATION_LOG,
    TEMPERATURE_LOG,
    TRUNCATE_BYTES,
)

__all__ = [
    "Physics", "Sensor", "FrameTruth", "AttemptTruth", "Campaign",
    "simulate_standard", "simulate_irradiation", "simulate_dosedirs", "load_campaign",
    "make_sensor", "bias_level", "dark_current", "flat_illumination", "render_frame",
    "digitise", "truth_maps", "radiation_model_truth", "damage_maps", "CAMPAIGN_START",
    "CAMPAIGN_RADIATION_LOG",
    "DOSEDIR_LOG", "RADIATION_LOG", "TEMPERATURE_LOG", "TRUNCATE_BYTES",
]

"""Figures of the flat pipeline as a reader sees them: titles inside the figure, values
instead of header keywords."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from flat_pipeline import plots
from flat_pipeline.illumination import fit_master


def _title_inside_figure(ax) -> bool:
    """Whether the rendered title lies within the figure (a clipped one does not)."""
    fig = ax.figure
    fig.canvas.draw()
    box, frame = ax.title.get_window_extent(), fig.bbox
    return box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_illumination_profile_title_fits():
    """The title (tag, centre, corner fall-off with its error) ran off the right edge."""
    y, x = np.mgrid[0:128, 0:128]
    r2 = ((x - 63.5) ** 2 + (y - 63.5) ** 2) / 90.0 ** 2
    rng = np.random.default_rng(1)
    data = (1.0 - 0.15 * r2) * (1 + 0.01 * rng.standard_normal((128, 128)))
    ill = fit_master("T20.0C_E0.35s", data.astype(np.float32))
    ax = plots.plot_illumination_profile(data, ill)
    assert "corner fall-off" in ax.get_title() and _title_inside_figure(ax)


def test_flat_model_map_titles_fit_and_name_the_reference():
    """A's title gives the reference temperature and exposure (was 'TREF, EXPREF'); B's
    'not fitted' reason no longer clips the title at both edges."""
    model = SimpleNamespace(coef=np.zeros((3, 16, 16), np.float32), t_ref=19.95984,
                            exp_ref=0.3, dropped={"B": "masters at one temperature"})
    a = plots.plot_model_map(model, 0)
    assert "19.96 degC, 0.3 s" in a.get_title() and "TREF" not in a.get_title()
    b = plots.plot_model_map(model, 1)
    assert "masters at one temperature" in b.get_title() and _title_inside_figure(b)


def test_frame_levels_legend_lists_excluded_frames_only_when_there_are_some():
    """The legend showed an 'excluded' entry between the first two sets even when the frame
    QC excluded nothing; now it is last, and only when a frame was excluded."""
    qc = pd.DataFrame({"TBIN": 20.0, "EXPTIME": [0.05, 0.05, 0.15, 0.15],
                       "LEVEL_RATE": [63170.0, 63180.0, 63190.0, 63000.0],
                       "STATUS": ["used", "used", "used", "used"]})
    labels = plots.plot_frame_levels(qc).get_legend_handles_labels()[1]
    assert labels == ["20 degC, 0.05 s", "20 degC, 0.15 s"]
    qc.loc[3, "STATUS"] = "excluded"
    labels = plots.plot_frame_levels(qc).get_legend_handles_labels()[1]
    assert labels == ["20 degC, 0.05 s", "20 degC, 0.15 s", "excluded"]

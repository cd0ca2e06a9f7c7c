"""warnings.log: what a run warned, once per message (utils.cli.WarningCollector)."""

from __future__ import annotations

import logging

from utils import cli


def test_repeated_warnings_are_written_once_with_their_count(tmp_path):
    """Steps that measure the same groups say the same thing: an irradiation run's
    warnings.log held 63 lines, 10 of them one photon-transfer message and 6 one dark
    message.  Each now appears once, in first-seen order, with its count; INFO stays out."""
    log = logging.getLogger("qa.warnings")
    with cli.WarningCollector() as collector:
        for _ in range(10):
            log.warning("no photon-transfer gain: 1 flat level below saturation")
        log.warning("dark 19.9 degC: one exposure time")
        log.info("not collected")
        log.warning("dark 19.9 degC: one exposure time")
        log.error("a line\nbroken in two")
    collector.write(tmp_path / "warnings.log")
    assert (tmp_path / "warnings.log").read_text(encoding="utf-8").splitlines() == [
        "WARNING qa.warnings: no photon-transfer gain: 1 flat level below saturation "
        "(10 times)",
        "WARNING qa.warnings: dark 19.9 degC: one exposure time (2 times)",
        "ERROR qa.warnings: a line broken in two"]
    assert len(collector.lines) == 13          # every record kept in memory


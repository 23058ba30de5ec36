"""The session fixture in conftest.py keeps ossbench away from the user's real files."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import REAL_HOME
from ossbench.measure.calibrate import calibration_dir


def test_calibration_dir_is_inside_the_session_home(isolated_home):
    where = calibration_dir().resolve()
    assert where.is_relative_to(Path(isolated_home).resolve())
    assert not where.is_relative_to(Path(REAL_HOME).resolve() / ".cache")
    assert Path.home() == Path(isolated_home) and os.environ["XDG_CACHE_HOME"].startswith(str(isolated_home))

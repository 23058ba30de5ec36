"""Session-wide isolation: no test reads or writes the user's home, cache or calibration files.

A calibration saved on the developer's machine (~/.cache/ossbench/calibration) would otherwise change
what reports and rooflines show in tests; HOME and the XDG folders point into one temporary folder.
"""

from __future__ import annotations

import os
import pwd

import pytest

REAL_HOME = pwd.getpwuid(os.getuid()).pw_dir  # the account's home, whatever HOME says


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    base = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(base))
        for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
            mp.setenv(name, str(base / name.lower()))
        mp.delenv("OSSBENCH_CALIBRATION_DIR", raising=False)
        yield base

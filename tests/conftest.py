"""Session-wide settings: no test touches the user's files, and tests hold on a loaded machine.

A calibration saved on the developer's machine (~/.cache/ossbench/calibration) would otherwise change
what reports and rooflines show in tests; HOME and the XDG folders point into one temporary folder.

torch runs one CPU thread in the tests (and in the ossbench processes they start). With two OpenMP threads
on a 2-core machine whose other core is busy, each parallel region waits for a descheduled partner: a tiny
attention case that takes ~1 ms took 80-180 ms at a load average of 6, and cases ran out of their time
budget before reaching min_samples. One thread keeps such timings near their quiet-machine values.

OSSBENCH_TEST_TIMEOUT_S=N (set by scripts/gpu-check) fails a test whose call runs past N seconds where
pytest-timeout is not installed (where it is, the script passes `--timeout` instead): a SIGALRM, so a
kernel stuck inside one C call is only interrupted when it returns.
"""

from __future__ import annotations

import os
import pwd
import signal

import pytest
import torch

REAL_HOME = pwd.getpwuid(os.getuid()).pw_dir  # the account's home, whatever HOME says


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    base = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(base))
        for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
            mp.setenv(name, str(base / name.lower()))
        mp.delenv("OSSBENCH_CALIBRATION_DIR", raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")  # for child processes; this one is set below
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield base
        torch.set_num_threads(threads)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = os.environ.get("OSSBENCH_TEST_TIMEOUT_S")
    if not limit or item.config.pluginmanager.hasplugin("timeout") or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        pytest.fail(f"timed out after {limit} s (OSSBENCH_TEST_TIMEOUT_S)", pytrace=False)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, float(limit))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

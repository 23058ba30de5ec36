"""ossbench's pytest plugin: the ``gpu_bench`` fixture, the ``ossbench_case`` mark and ``--ossbench-*`` options.

Enabled with ``-p ossbench`` (through the ``pytest11`` entry point's switch, ``ossbench.pytest_shim``),
``-p ossbench.pytest_plugin``, or ``pytest_plugins = ["ossbench.pytest_plugin"]`` in a conftest; never by
merely being installed. See docs/pytest.md.

- ``gpu_bench(fn, *args, **kwargs)`` times ``fn`` with ``ossbench.bench`` and returns its result
  (``ossbench.pytest_timing``); with pytest-benchmark active, its samples join that plugin's session.
- ``@pytest.mark.ossbench_case(suite=..., case=...)`` runs one suite case in the test (numerics check and
  timing) and fails the test unless the case is ok; the ``ossbench_case`` fixture returns its record.
- ``--ossbench-out DIR`` writes every timed case of the session to ``DIR/results.json``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from .errors import UserError
from .measure.spec import BenchSpec
from .pytest_results import Collector, run_suite_case, timed_case
from .pytest_timing import GpuBench, feed_pytest_benchmark
from .units import fmt_ms

COLLECTOR = pytest.StashKey[Collector]()
STARTED = pytest.StashKey[str]()
WRITTEN = pytest.StashKey[str]()  # the results file written, or why it was not
OUTCOME = pytest.StashKey[tuple]()  # (status, error) of a test's call phase
FIXTURES = ("gpu_bench", "ossbench_case")
MARK_HELP = ("ossbench_case(suite, case, quick=None): run one case of an ossbench suite in this test (the "
             "float64 numerics check, then timing) and fail unless it is ok; the `ossbench_case` fixture returns "
             "its record. `suite` is relative to the rootdir; `case` is an id or text only one case's id contains.")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ossbench", "ossbench (gpu_bench fixture, ossbench_case mark; docs/pytest.md)")
    group.addoption("--ossbench-out", metavar="DIR", default=None,
                    help="write the session's timed cases to DIR/results.json, for `ossbench report/compare/gate`")
    group.addoption("--ossbench-device", metavar="DEVICE", default="auto",
                    help="where gpu_bench and suite cases run: auto (a GPU if torch sees one), cpu, cuda, cuda:N. "
                         "Default: auto")
    group.addoption("--ossbench-quick", action="store_true", default=False,
                    help="a smoke run: ossbench's --quick timing (BenchSpec.quick()) for gpu_bench and suite cases")
    group.addoption("--ossbench-name", metavar="NAME", default=None,
                    help="the run's name in results.json. Default: the rootdir's name")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARK_HELP)
    device = config.getoption("ossbench_device")
    if device != "auto":
        from .hardware import resolve_device

        try:
            resolve_device(device)
        except UserError as e:
            raise pytest.UsageError(f"--ossbench-device: {e}") from None
    out = config.getoption("ossbench_out")
    if out and Path(out).exists() and not Path(out).is_dir():
        raise pytest.UsageError(f"--ossbench-out {out}: exists and is not a folder")
    config.stash[COLLECTOR] = Collector(config.rootpath, config.getoption("ossbench_name") or config.rootpath.name)
    config.stash[STARTED] = _now()


def _pytest_benchmark_active(config: pytest.Config) -> bool:
    return getattr(config, "_benchmarksession", None) is not None


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's, which decides --benchmark-only/--benchmark-skip by it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    with_benchmark = _pytest_benchmark_active(config)
    for item in items:
        names = getattr(item, "fixturenames", None)
        if names is None:
            continue
        if item.get_closest_marker("ossbench_case") is not None and "ossbench_case" not in names:
            names.append("ossbench_case")  # the mark alone runs the case
        # A gpu_bench test is a benchmark to pytest-benchmark too: it keeps its fixture (name, group,
        # extra_info, --benchmark-skip/-only/-disable) and its files
        if with_benchmark and any(n in names for n in FIXTURES) and "benchmark" not in names:
            names.append("benchmark")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        error = call.excinfo.exconly()[:500] if call.excinfo is not None else None
        status = "ok" if report.passed else "skipped" if report.skipped else "failed"
        item.stash[OUTCOME] = (status, f"the test {'skipped' if status == 'skipped' else 'failed'} after timing: "
                                       f"{error}" if error else None)
    return report


def _default_spec(config: pytest.Config) -> BenchSpec:
    spec = BenchSpec()
    return spec.quick() if config.getoption("ossbench_quick") else spec


@pytest.fixture
def gpu_bench(request: pytest.FixtureRequest):
    """Time a callable with ossbench.bench: ``result = gpu_bench(fn, *args, **kwargs)`` (docs/pytest.md)."""
    config = request.config
    pb = request.getfixturevalue("benchmark") if _pytest_benchmark_active(config) else None
    timer = GpuBench(request.node, _default_spec(config), config.getoption("ossbench_device"), pb)
    yield timer
    m = timer.measurement
    if m is not None:
        record = timed_case(request.node, m, flops=timer.flops, bytes=timer.bytes, tokens=timer.tokens,
                            extra_info=timer.extra_info, outcome=request.node.stash.get(OUTCOME, ("ok", None)))
        config.stash[COLLECTOR].add(record, request.node.path, m.device)


@pytest.fixture
def ossbench_case(request: pytest.FixtureRequest):
    """The record (an ``ossbench.results.CaseResult``) of the suite case the test's ``ossbench_case`` mark names."""
    marker = request.node.get_closest_marker("ossbench_case")
    if marker is None:
        pytest.fail("the ossbench_case fixture needs @pytest.mark.ossbench_case(suite=..., case=...)", pytrace=False)
    kwargs = dict(zip(("suite", "case"), marker.args)) | dict(marker.kwargs)
    unknown = set(kwargs) - {"suite", "case", "quick"}
    if unknown or not {"suite", "case"} <= set(kwargs):
        pytest.fail(f"@pytest.mark.ossbench_case takes suite=, case= and quick=; got {sorted(kwargs)}", pytrace=False)
    config = request.config
    pb = request.getfixturevalue("benchmark") if _pytest_benchmark_active(config) else None
    suite = Path(kwargs["suite"])
    suite = suite if suite.is_absolute() else config.rootpath / suite
    quick = config.getoption("ossbench_quick") if kwargs.get("quick") is None else bool(kwargs["quick"])
    if pb is not None:
        pb._mode = "ossbench_case"  # the case uses the benchmark fixture, even when it fails before timing
    try:
        record = run_suite_case(suite, str(kwargs["case"]), device=config.getoption("ossbench_device"), quick=quick)
    except UserError as e:
        record, error = None, str(e)
    if record is None:
        pytest.fail(error, pytrace=False)
    record.info = {**record.info, "pytest": {"nodeid": request.node.nodeid, "name": request.node.name}}
    config.stash[COLLECTOR].add(record, request.node.path, (record.timing or {}).get("device"))
    if pb is not None and record.status == "ok" and not pb.disabled:
        pb.extra_info.update(case=record.id, flops=record.flops, bytes=record.bytes, tokens=record.tokens)
        feed_pytest_benchmark(pb, record.samples_ms, record.timing, record.stats.model_dump())
    if record.status == "skipped":
        pytest.skip(f"{record.id}: {record.error}")
    if record.status != "ok":
        pytest.fail(f"{record.id}: {record.status}: {record.error}", pytrace=False)
    return record


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    out, collector = config.getoption("ossbench_out"), config.stash.get(COLLECTOR, None)
    if not out or collector is None or not collector.cases:
        return
    path = Path(out) / "results.json"
    try:
        collector.run_result(config.stash[STARTED], _now()).save(path)
        config.stash[WRITTEN] = f"results: {path} (`ossbench report {path}` renders it)"
    except OSError as e:
        config.stash[WRITTEN] = f"results NOT written: {path}: {e.strerror or e}"


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    collector = config.stash.get(COLLECTOR, None)
    if collector is None:
        return
    if not collector.cases:
        if config.getoption("ossbench_out"):
            terminalreporter.line(f"ossbench: no test was timed, so {config.getoption('ossbench_out')}/results.json "
                                  "was not written")
        return
    terminalreporter.section("ossbench")
    for c in collector.cases:
        if c.stats is None:
            terminalreporter.line(f"{c.id}: {c.status}: {c.error}")
            continue
        s = c.stats
        note = "" if s.converged else f" [not converged: {c.timing.get('stop_reason', '')}]"
        status = "" if c.status == "ok" else f" [{c.status}]"
        terminalreporter.line(f"{c.id}: {fmt_ms(s.median)} ± {s.rel_ci * 100:.2g}% (median, CI95, n={s.n}, "
                              f"{c.timing.get('cache')}, {c.timing.get('device')}){note}{status}")
    if WRITTEN in config.stash:
        terminalreporter.line(config.stash[WRITTEN])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""What the pytest plugin records: one ossbench case per test, gathered into a results file.

A test timed by ``gpu_bench`` becomes a case of family ``pytest``: its variant is the test's node id
without the parameters (``tests/test_mm.py::test_matmul``), its axes and params the test's
``parametrize`` values, its id ``pytest/<variant>/<axis>=<value>,...`` (``ossbench.suite_cases``' format).
A suite case run by the ``ossbench_case`` mark keeps the suite's own id, family and variant.
``run_suite_case`` is the helper behind that mark, usable on its own. See docs/pytest.md.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from pathlib import Path
from typing import Any

from .errors import UserError
from .results import SCHEMA, CaseResult, Environment, RunResult, SuiteInfo
from .suite_cases import case_identifier
from .suite_errors import did_you_mean

FAMILY = "pytest"


def _scalar(value: Any) -> str | int | float | bool | None:
    """A parametrize value as a results-file scalar: numbers (numpy's too), text and booleans as they are, anything
    else (a torch dtype, a function) by its text; a torch dtype without its ``torch.`` prefix."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else str(value)
    text = str(value)
    return text.removeprefix("torch.") if type(value).__module__ == "torch" else text


def item_axes(item: Any) -> dict[str, Any]:
    """The test's parametrize values, in the order pytest holds them."""
    callspec = getattr(item, "callspec", None)
    return {name: _scalar(v) for name, v in (callspec.params.items() if callspec else ())}


def item_variant(item: Any) -> str:
    """The node id without the parameters: ``tests/test_mm.py::TestX::test_matmul``."""
    return item.nodeid.split("[", 1)[0]


def timed_case(item: Any, m: Any, *, flops=None, bytes=None, tokens=None, extra_info=None,
               outcome: tuple[str, str | None] = ("ok", None)) -> CaseResult:
    """The case of a test that ``gpu_bench`` timed: measurement `m`, and the test's outcome after timing."""
    axes = item_axes(item)
    variant = item_variant(item)
    dtype = axes.get("dtype")
    record = CaseResult(
        id=case_identifier(FAMILY, variant, axes) if axes else f"{FAMILY}/{variant}", family=FAMILY,
        variant=variant, axes=axes, params=dict(axes), dtype=str(dtype) if dtype is not None else "n/a",
        status=outcome[0], error=outcome[1], samples_ms=list(m.samples_ms), stats=m.stats(), timing=m.settings(),
        flops=flops, bytes=bytes, tokens=tokens,
        info={"pytest": {"nodeid": item.nodeid, "name": item.name},
              **({"extra_info": dict(extra_info)} if extra_info else {})})
    seconds = m.median_ms / 1e3
    if seconds > 0:
        record.derived.tflops = flops / seconds / 1e12 if flops else None
        record.derived.gbps = bytes / seconds / 1e9 if bytes else None
        record.derived.tokens_per_s = tokens / seconds if tokens else None
    return record


# ----------------------------------------------------------------------------------------- suite cases


def run_suite_case(suite: str | Path, case: str, *, device: str = "auto", quick: bool = False,
                   timing: Any = None) -> CaseResult:
    """Run one case of a suite as ``ossbench run`` would (build, float64 numerics check, timing) and
    return its record; never raises for a failure of the case itself (see its ``status`` and ``error``).

    `case`: the case's id, or text that only that one case's id contains. The suite's CPU profile applies
    on a CPU, as in ``ossbench run``; `quick` shortens its timing like ``--quick``; `timing` (a
    ``BenchSpec``) replaces it. A bad suite, an unknown case or a bad device raise ``UserError``.
    """
    from .hardware import resolve_device
    from .runner import run_case
    from .suite import Timing, load_suite

    loaded = load_suite(suite)
    dev = resolve_device(device)
    profile = loaded.profile_for(dev.type)
    found = find_case(loaded.cases(profile), case, str(suite))
    spec = loaded.timing(profile) if timing is None else Timing.model_validate(timing.to_dict())
    return run_case(found, dev, spec.quick() if quick else spec)


def find_case(cases: list, text: str, where: str):
    """The case whose id is `text`, else the only one whose id contains it; UserError otherwise."""
    exact = [c for c in cases if c.id == text]
    if exact:
        return exact[0]
    matching = [c for c in cases if text in c.id]
    if len(matching) == 1:
        return matching[0]
    ids = [c.id for c in cases]
    if not matching:
        raise UserError(f"{where}: no case {text!r}" + did_you_mean(text, ids) + f" ({len(ids)} case(s), "
                        f"e.g. {ids[0] if ids else 'none'})")
    raise UserError(f"{where}: {text!r} matches {len(matching)} cases ({', '.join(c.id for c in matching[:4])}"
                    f"{', ...' if len(matching) > 4 else ''}); give the full id")


# ------------------------------------------------------------------------------------------ collecting


class Collector:
    """The session's cases, in the order the tests finished, written as one results file at the end."""

    def __init__(self, rootdir: Path, name: str) -> None:
        self.rootdir, self.name = rootdir, name
        self.cases: list[CaseResult] = []
        self.files: set[Path] = set()  # the test files that produced cases: the "suite" the hash covers
        self.device: str | None = None  # of the first timed case: the results file's environment

    def add(self, record: CaseResult, test_file: Path | None, device: str | None) -> None:
        ids = {c.id for c in self.cases}
        if record.id in ids:  # two tests ran the same suite case: results files need unique ids
            n = 2
            while f"{record.id}~{n}" in ids:
                n += 1
            record.id = f"{record.id}~{n}"
        self.cases.append(record)
        if test_file is not None:
            self.files.add(test_file)
        if self.device is None and device:
            self.device = device

    def run_result(self, start_time: str, end_time: str) -> RunResult:
        from .env import capture, git_revision

        env = capture(self.device or "cpu")
        # The commit that matters is the project's whose tests ran, not ossbench's own.
        env["git_revision"] = git_revision(self.rootdir)
        env.update(start_time=start_time, end_time=end_time)
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(str(path.relative_to(self.rootdir) if path.is_relative_to(self.rootdir) else path).encode())
            digest.update(path.read_bytes() if path.is_file() else b"")
        suite = SuiteInfo(name=self.name, description="cases timed by ossbench's pytest plugin", path=str(self.rootdir),
                          sha256=digest.hexdigest(), family=FAMILY, preset="n/a")
        return RunResult(schema=SCHEMA, suite=suite, environment=Environment.model_validate(env), cases=self.cases)

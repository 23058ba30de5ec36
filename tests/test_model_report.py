"""The model family's report charts (ossbench/report/model_charts.py), on runs built from known figures."""

from __future__ import annotations

import pytest

from ossbench.analysis import analyze_run
from ossbench.measure.roofline import peak_for
from ossbench.measure.stats import summarize
from ossbench.report import render_report
from ossbench.report.html import report_charts
from ossbench.results import CaseResult, Derived, Environment, Memory, RunResult, Stats, SuiteInfo

H100 = "NVIDIA H100 80GB HBM3"
STORED = {"stored_experts_bytes": 10.2e9, "stored_attention_bytes": 1.3e9, "stored_router_bytes": 2e6,
          "stored_embeddings_bytes": 2.3e9}


def _case(variant: str, batch: int, kv_len: int, ms: float, nbytes: float) -> CaseResult:
    samples = [ms * (1 + 0.001 * i) for i in range(10)]
    median = summarize(samples)["median"]
    return CaseResult(
        id=f"model/{variant}/mode=decode,batch={batch},kv_len={kv_len}", family="model", variant=variant,
        axes={"mode": "decode", "batch": batch, "kv_len": kv_len}, params={"mode": "decode", "batch": batch,
                                                                          "kv_len": kv_len},
        dtype="bfloat16", status="ok", samples_ms=samples, stats=Stats(**summarize(samples)), flops=1e9,
        bytes=nbytes, tokens=batch, cost_extra={**STORED, "kv_cache_bytes": 2048.0 * 24 * kv_len,
                                                "activation_bytes_estimate": 4e8},
        derived=Derived(tokens_per_s=batch / median * 1e3, gbps=nbytes / median / 1e6),
        memory=Memory(kind="cuda", peak_bytes=15e9))


def _run(device: str = H100) -> RunResult:
    cases = [_case(v, 1, n, ms, b) for v, ms, b in (("20b-mxfp4", 6.0, 4.5e9), ("20b-all-full", 7.0, 5e9))
             for n in (4096, 32768)]
    gpu = device == H100
    env = Environment(device_type="cuda" if gpu else "cpu", device_name=device, python="3.11", platform="Linux",
                      host="ci", ossbench_version="0.1.0", git_revision="abc", start_time="2025-01-01T00:00:00+00:00",
                      torch="2.11.0", peak=peak_for(device) if gpu else None)
    suite = SuiteInfo(name="model", description="", path="suites/model.yaml", sha256="0" * 64, family="model",
                      preset="gpt-oss-20b", compare=[])
    return RunResult(suite=suite, environment=env, cases=cases)


def _figure(charts, title: str) -> dict:
    return next(c.figure for c in charts if title in c.figure["layout"]["title"]["text"])


def test_memory_breakdown_stacks_the_cost_model_parts():
    run = _run()
    fig = _figure(report_charts(run, analyze_run(run))["memory"], "Memory of the whole model, decode")
    assert fig["layout"]["barmode"] == "stack" and fig["layout"]["xaxis"]["type"] == "category"
    bars = {t["name"]: t["y"] for t in fig["data"] if t["type"] == "bar"}
    assert bars["experts"] == [pytest.approx(10.2)] * 4
    assert bars["KV cache"][1] == pytest.approx(2048 * 24 * 32768 / 1e9)
    assert bars["activations (estimate)"] == [pytest.approx(0.4)] * 4
    (peak,) = [t for t in fig["data"] if t["name"] == "measured peak"]
    assert peak["y"] == [pytest.approx(15.0)] * 4


def test_decode_rate_with_the_bandwidth_bound():
    run = _run()
    fig = _figure(report_charts(run, analyze_run(run))["latency"], "Decode tokens/s vs context, batch 1")
    by_name = {t["name"]: t for t in fig["data"]}
    measured = by_name["20b-mxfp4"]
    assert measured["x"] == [4096, 32768]
    assert measured["y"][0] == pytest.approx(1e3 / (6.0 * 1.0045), rel=1e-6)  # batch / median
    bound = by_name["20b-mxfp4: bandwidth bound"]
    assert bound["line"]["dash"] == "dash"
    assert bound["y"][0] == pytest.approx(3350e9 / 4.5e9)  # tokens / (bytes / H100's 3350 GB/s)
    assert "Decode tokens/s" in render_report(run)


def test_no_bound_without_a_bandwidth_ceiling():
    run = _run("AMD EPYC")
    charts = report_charts(run, analyze_run(run))["latency"]
    fig = _figure(charts, "Decode tokens/s vs context")
    assert not any("bandwidth bound" in t["name"] for t in fig["data"])
    assert any("bound is not drawn" in c.note for c in charts)


def test_a_run_without_model_cases_has_no_model_charts():
    run = _run()
    other = run.model_copy(update={"cases": [c.model_copy(update={"family": "block"}) for c in run.cases]})
    charts = report_charts(other, analyze_run(other))
    titles = [c.figure["layout"]["title"]["text"] for cs in charts.values() for c in cs]
    assert not any("whole model" in t or "Decode tokens/s" in t for t in titles)

"""The run planner (ossbench/plan.py): predictions from the cost model alone, the run order, the run budget
(`--max-minutes`), the not-fit skip, `ossbench plan` / `run --plan`, and what results record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ossbench import plan as planner
from ossbench.cli import main
from ossbench.hardware import resolve_device
from ossbench.measure.spec import BenchSpec
from ossbench.plan import Budget, predict_case, run_order
from ossbench.resume import plan_resume
from ossbench.runner import plan_run, run_plan
from ossbench.suite import load_suite, parse_suite
from ossbench.suite_cases import Case
from ossbench.workloads import get_family

HERE = Path(__file__).parent
TINY = HERE / "suites" / "tiny.yaml"
STEPS = HERE / "suites" / "steps.yaml"
CPU = resolve_device("cpu")
CEILINGS, BASIS = planner.planning_ceilings(None, CPU)
TIMING = BenchSpec(cache="hot", warmup_s=0.01, min_samples=5, min_time_s=0.02, max_time_s=0.5)


def attention_case(**params) -> Case:
    """One gpt-oss attention case at real head shapes (nothing is built: only planned)."""
    fam = get_family("attention")
    from ossbench.layers.config import get_preset

    values = {**fam.defaults(get_preset("gpt-oss-20b")), "backend": "sdpa", "sinks": False, **params}
    p = fam.params_model.model_validate(values)
    return Case(id=f"attention/x/{sorted(params.items())}", family="attention", variant="x", axes=(),
                params=tuple(p.model_dump().items()), dtype="bfloat16", preset="gpt-oss-20b")


def predict(case: Case, free: float | None = None, device=CPU, ceilings=CEILINGS):
    return predict_case(case, TIMING, ceilings, BASIS, device, free_bytes=free)


def test_prediction_grows_with_seq_len_and_builds_nothing(monkeypatch):
    import dataclasses

    import torch

    import ossbench.workloads

    def refuse(*a, **k):
        raise AssertionError("the planner must not build a workload or allocate a tensor")

    fam = dataclasses.replace(get_family("attention"), build=refuse)
    monkeypatch.setattr(ossbench.workloads, "get_family", lambda name: fam)
    for name in ("empty", "zeros", "randn", "ones", "full"):
        monkeypatch.setattr(torch, name, refuse)
    preds = [predict(attention_case(mode="prefill", seq_len=s)) for s in (1024, 4096, 16384, 32768)]
    times = [p.time_s for p in preds]
    calls = [p.call_s for p in preds]
    peaks = [p.peak_bytes for p in preds]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert calls == sorted(calls) and calls[-1] > 10 * calls[0]  # attention is quadratic in seq_len
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    assert all(p.basis == "default" for p in preds)  # a CPU without calibration: the conservative default


def test_decode_memory_holds_the_kv_cache_and_a_window_shrinks_it():
    from ossbench.workloads.attention import kv_bytes

    full = predict(attention_case(mode="decode", batch=8, kv_len=65536))
    short = predict(attention_case(mode="decode", batch=8, kv_len=1024))
    window = predict(attention_case(mode="decode", batch=8, kv_len=65536, window=128))
    cache = kv_bytes(65537, 8, 64, batch=8, dtype_bytes=2)  # positions 0..kv_len, bf16, 8 KV heads of 64
    assert full.persistent_bytes >= cache > short.persistent_bytes
    assert full.peak_bytes >= full.persistent_bytes + full.activation_bytes - 1
    assert full.persistent_bytes - window.persistent_bytes > 0.99 * cache  # the window holds a ring of 128 slots
    mha = predict(attention_case(mode="decode", batch=8, kv_len=65536, n_kv_heads=64))
    assert mha.persistent_bytes - full.persistent_bytes >= 0.8 * 7 * cache  # 8x the KV heads


def test_every_family_declares_a_footprint():
    from ossbench.workloads import all_families

    assert all(f.footprint is not None for f in all_families())


def test_phases_follow_the_timing_spec_and_compiling_backends():
    eager = predict(attention_case(mode="prefill", seq_len=256, backend="eager"))
    flex = predict(attention_case(mode="prefill", seq_len=256, backend="flex"))
    assert eager.phases["compile"] == 0 and flex.phases["compile"] == planner.COMPILE_S["cpu"]
    assert eager.phases["sampling"] >= TIMING.min_time_s
    assert eager.phases["sampling"] <= max(TIMING.max_time_s, eager.call_s + 1e-9)
    assert eager.phases["warmup"] >= TIMING.warmup_s + eager.call_s - 1e-12
    assert eager.phases["check"] > eager.call_s  # one call and the float64 reference
    assert eager.time_s == pytest.approx(sum(eager.phases.values()))
    record = eager.record()
    assert {"time_s", "peak_bytes", "call_ms", "phases", "basis"} <= set(record)


def test_calibrated_ceilings_are_used_and_named():
    ceilings = {"compute_tflops": {"fp32": 1.0, "bf16": 1.0}, "bandwidth_gbps": 50.0,
                "sources": {"fp32": "calibrated", "bf16": "calibrated", "bandwidth": "calibrated"}}
    usable, basis = planner.planning_ceilings(ceilings, CPU)
    assert basis == "calibrated" and usable is ceilings
    case = attention_case(mode="prefill", seq_len=4096)
    fast = predict_case(case, TIMING, usable, basis, CPU)
    slow = predict(case)  # the default's 0.02 TFLOP/s
    assert fast.call_s < slow.call_s / 10


def test_a_case_larger_than_free_memory_is_marked():
    case = attention_case(mode="decode", batch=8, kv_len=131072, n_kv_heads=64)
    p = predict(case, free=2**30)
    assert not p.fits
    assert p.fit_reason.startswith(planner.NO_FIT)
    assert "GiB > free 1.00 GiB on cpu" in p.fit_reason
    assert predict(case, free=2**50).fits and predict(case).fits  # unknown free memory: not checked


def test_run_order_visits_every_variant_and_mode_first():
    suite = load_suite(HERE.parent / "suites" / "attention.yaml")
    cases = suite.cases("full")
    order = run_order(cases)
    assert sorted(c.id for c in order) == sorted(c.id for c in cases)
    pairs = {(c.variant, c.params_dict["mode"]) for c in cases}  # some variants are excluded from some modes
    first_round = order[:len(pairs)]
    assert {(c.variant, c.params_dict["mode"]) for c in first_round} == pairs
    first_prefill = {}  # each variant's first prefill point in the suite's order
    for c in cases:
        if c.params_dict["mode"] == "prefill":
            first_prefill.setdefault(c.variant, c.params_dict["seq_len"])
    assert {c.variant: c.params_dict["seq_len"] for c in first_round if c.params_dict["mode"] == "prefill"} == \
        first_prefill


def test_budget_refuses_once_the_prediction_would_pass_it():
    now = [100.0]
    budget = Budget(1.0, _clock=lambda: now[0])
    assert budget.allows(30)
    now[0] += 40
    assert budget.allows(19)  # 40 + 19 < 60
    now[0] += 1
    assert not budget.allows(20)  # 41 + 20 > 60
    assert not budget.allows(0)  # stops launching: later cases are refused too
    assert budget.reason == "run budget (1 min) reached"


def test_plan_command_prints_every_case_with_totals():
    result = CliRunner().invoke(main, ["plan", str(TINY), "--device", "cpu"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for case in load_suite(TINY).cases("full"):
        assert case.id in result.output
    assert "total" in result.output and "peak memory" in result.output and "run plan on cpu" in result.output
    same = CliRunner().invoke(main, ["run", str(TINY), "--device", "cpu", "--plan"], env={"COLUMNS": "250"})
    assert same.exit_code == 0 and "total" in same.output
    budgeted = CliRunner().invoke(main, ["plan", str(TINY), "--device", "cpu", "--max-minutes", "0.001"],
                                  env={"COLUMNS": "250"})
    assert budgeted.exit_code == 0 and "over budget" in budgeted.output
    bad = CliRunner().invoke(main, ["plan", str(TINY), "--max-minutes", "0"])
    assert bad.exit_code == 2 and "--max-minutes" in bad.output


def test_a_tiny_budget_skips_the_rest_keeps_suite_order_and_resume_runs_them(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(STEPS), "--device", "cpu", "--out", str(out),
                                       "--max-minutes", "0.01"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert f"ossbench run --resume {out}" in result.output
    data = json.loads((out / "results.json").read_text())
    ids = [c.id for c in load_suite(STEPS).cases("full")]
    assert [c["id"] for c in data["cases"]] == ids  # suite order
    skipped = [c for c in data["cases"] if c["status"] == "skipped"]
    assert skipped, "a 0.6 s budget cannot hold six cases of ~0.4 s"
    assert all(c["error"] == "run budget (0.01 min) reached" for c in skipped)
    assert all(c["predicted"]["time_s"] > 0 for c in data["cases"])
    assert data["options"]["max_minutes"] == 0.01
    assert (out / "report.html").exists() and (out / "journal.jsonl").exists()  # kept for --resume

    plan, resumed = plan_resume(out, max_minutes=30)
    assert sorted(resumed.ids_to_run(plan)) == sorted(c["id"] for c in skipped)
    run = run_plan(plan, resume=resumed)
    assert [c.id for c in run.cases] == ids and all(c.status == "ok" for c in run.cases)
    assert all(c.predicted and c.duration_s for c in run.cases)
    assert not (out / "journal.jsonl").exists()


def test_a_case_predicted_not_to_fit_is_skipped_with_the_reason(tmp_path, monkeypatch):
    import ossbench.runner

    monkeypatch.setattr(ossbench.runner, "free_memory_bytes", lambda device: 1024)
    plan = plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path / "run")
    run = run_plan(plan)
    assert [c.status for c in run.cases] == ["skipped"] * len(run.cases)
    assert all(c.error.startswith("does not fit: predicted ") and c.error.endswith("GiB > free 0.00 GiB on cpu")
               for c in run.cases)
    assert not (tmp_path / "run" / "journal.jsonl").exists()  # a verdict, not a case left to resume


def test_results_record_the_prediction_beside_what_happened(tmp_path):
    plan = plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path / "run", filter_text="prefill,seq_len=32")
    run = run_plan(plan)
    case = run.cases[0]
    assert case.status == "ok" and case.predicted["time_s"] > 0 and case.predicted["peak_bytes"] > 0
    again = json.loads((tmp_path / "run" / "results.json").read_text())["cases"][0]["predicted"]
    assert again["time_s"] == case.predicted["time_s"]
    spread = planner.ratio_spread(run.cases)
    ratios = [c.duration_s / c.predicted["time_s"] for c in run.cases]
    assert spread["time"]["n"] == len(run.cases) == 2
    assert spread["time"]["min"] == pytest.approx(min(ratios)) and spread["time"]["max"] == pytest.approx(max(ratios))


def test_a_suite_without_a_mode_axis_keeps_its_order():
    suite = parse_suite(STEPS.read_text(), str(STEPS))
    cases = suite.cases("full")
    assert run_order(cases) == cases


@pytest.mark.slow
def test_the_budget_with_isolated_cases_counts_the_worker_start(tmp_path):
    plan = plan_run(load_suite(STEPS), device="cpu", out_dir=tmp_path / "run", isolate=True, max_minutes=0.012)
    run = run_plan(plan)
    statuses = [c.status for c in run.cases]
    assert statuses[0] == "ok"  # the first case always fits a budget longer than its prediction
    assert "skipped" in statuses  # the worker's start (importing torch) and the case took the 0.72 s
    assert all(c.error == "run budget (0.012 min) reached" for c in run.cases if c.status == "skipped")
    assert [c.id for c in run.cases] == [c.id for c in plan.cases]


def test_a_stop_request_wins_over_the_budget(tmp_path):
    import signal

    from ossbench.stopping import StopRequest

    plan = plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path / "run", max_minutes=60)
    stop = StopRequest()

    def on_case(case, result):
        if result is not None:
            stop.signum = signal.SIGINT  # as Ctrl-C after the first case

    run = run_plan(plan, on_case, stop=stop)
    skipped = [c for c in run.cases if c.status == "skipped"]
    assert len(skipped) == len(run.cases) - 1
    assert all(c.error.startswith("interrupted (SIGINT)") for c in skipped)
    plan, resumed = plan_resume(tmp_path / "run")
    assert plan.max_minutes == 60 and len(resumed.ids_to_run(plan)) == len(skipped)


def test_planning_the_full_gpu_suites_is_fast_and_marks_what_an_h100_cannot_hold():
    import time

    from ossbench.hardware import Device
    from ossbench.measure.roofline import resolve_ceilings
    from ossbench.peaks import peak_row

    h100 = Device(type="cuda", index=0, name="NVIDIA H100 80GB HBM3", l2_cache_bytes=50 * 2**20,
                  peak_row="H100 SXM")
    ceilings = resolve_ceilings(peak_row("H100 SXM"), None)
    cases = [c for name in ("attention", "moe") for c in load_suite(HERE.parent / "suites" / f"{name}.yaml").cases()]
    assert len(cases) > 100
    started = time.perf_counter()
    preds = planner.predict_cases(cases, BenchSpec(), ceilings, h100, l2_bytes=h100.l2_cache_bytes,
                                  free_bytes=79 * 2**30)
    assert time.perf_counter() - started < 30  # milliseconds on a quiet machine: nothing is built
    assert all(p.basis == "datasheet" for p in preds.values())
    flex = preds["attention/full-gqa/mode=prefill,seq_len=1024"]
    assert flex.phases["compile"] == planner.COMPILE_S["cuda"]  # flex compiles; sdpa does not
    assert preds["attention/full-gqa-nosinks-sdpa/mode=prefill,seq_len=1024"].phases["compile"] == 0
    assert flex.peak_bytes > 2 * 50 * 2**20  # the cold-cache flush buffer (2 x L2) counts on CUDA
    # MHA decode at 128k tokens, batch 8: a 17 GB bf16 cache, cast to float64 by the check (4x): > 79 GiB
    big = "attention/full-mha/mode=decode,batch=8,kv_len=131072"
    assert [i for i, p in preds.items() if not p.fits] == [big]
    h200 = planner.predict_cases([c for c in cases if c.id == big], BenchSpec(), ceilings, h100,
                                 free_bytes=139 * 2**30)
    assert h200[big].fits


def test_the_plan_table_shows_a_case_without_a_prediction(tmp_path):
    from rich.console import Console

    from ossbench.plan_table import plan_table

    plan = plan_run(load_suite(TINY), device="cpu", out_dir=tmp_path / "run")
    unplanned = plan.cases[0].id
    del plan.predictions[unplanned]  # as for a family that declares no footprint
    console = Console(width=300, record=True)
    console.print(plan_table(plan))
    text = console.export_text()
    assert unplanned in text and "no footprint" in text and "total" in text


@pytest.mark.gpu
def test_free_memory_on_a_gpu_agrees_with_torch():
    import torch

    from ossbench.measure.nvml import free_memory_bytes as nvml_free

    dev = resolve_device("cuda")
    free = planner.free_memory_bytes(dev)
    torch_free, total = torch.cuda.mem_get_info(dev.torch_device)
    assert 0 < free <= total
    if nvml_free(dev.index) is not None:  # NVML and the runtime see the same device within a context's size
        assert abs(free - torch_free) < 2 * 2**30


def test_every_shipped_suite_can_be_planned(tmp_path):
    """Each family's footprint takes the case's flat parameters (the block family nests its specs)."""
    for path in sorted((HERE.parent / "suites").glob("*.yaml")):
        suite = load_suite(path)
        plan = plan_run(suite, device="cpu", out_dir=tmp_path / path.stem)
        assert set(plan.predictions) == {c.id for c in plan.cases}, path


def test_the_triton_moe_backend_is_not_charged_for_a_decoded_copy_of_mxfp4_experts():
    from ossbench.layers.config import get_preset
    from ossbench.workloads import get_family
    from ossbench.workloads.model import activation_bytes

    moe = get_family("moe")
    base = {**moe.flat_defaults(get_preset("gpt-oss-120b")), "weights": "mxfp4", "mode": "decode", "tokens": 64}
    grouped = moe.footprint(moe.validate(base), 2).activation_bytes
    triton = moe.footprint(moe.validate({**base, "backend": "triton"}), 2).activation_bytes
    assert grouped - triton > 1e9  # grouped decodes the ~64 touched experts to bf16 (GBs); triton in its GEMMs
    cfg = get_preset("gpt-oss-120b")
    for experts in ("mxfp4", "dtype"):
        assert activation_bytes(cfg, experts, 4096, 8, "decode", moe_backend="triton")["expert_decode"] == 0

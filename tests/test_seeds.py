"""Per-case data seeds: the runner derives one seed per case from its id, every family draws its weights,
inputs and caches from it, and the results record it, so one case can be rebuilt alone."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

import isolate_helpers
import ossbench.runner as runner
import ossbench.workloads as workloads
from ossbench.layers.config import get_preset
from ossbench.results import load_results
from ossbench.runner import plan_run, run_plan
from ossbench.suite import load_suite
from ossbench.workloads import case_seed, family_names, get_family

TINY_SUITE = Path(__file__).parent / "suites" / "tiny.yaml"

# Shapes small enough to build and check in a fraction of a second on a CPU, per family (a new family
# needs an entry here: the parametrized tests below cover every registered one).
TINY = {
    "attention": dict(backend="eager", batch=2, seq_len=16, kv_len=16, hidden=32, n_heads=4, n_kv_heads=2,
                      head_dim=8),
    "moe": dict(backend="loop", tokens=8, hidden=32, intermediate=16, n_experts=4, top_k=2),
    "ffn": dict(tokens=8, hidden=32, intermediate=16),
    "activation": dict(tokens=8, width=32),
    "norm": dict(tokens=8, hidden=32),
    "positions": dict(batch=2, seq_len=12, kv_len=300, hidden=16, max_position=512, n_heads=4, n_kv_heads=2,
                      head_dim=16),
    "block": {"moe_backend": "loop", "batch": 2, "seq_len": 12, "kv_len": 20, "hidden": 32, "attention.n_heads": 4,
              "attention.n_kv_heads": 2, "attention.head_dim": 8, "attention.window": 4, "mlp.n_experts": 4,
              "mlp.top_k": 2, "mlp.intermediate": 16},
    # collective families: built only inside a process group; tests/test_distributed.py checks moe-ep's seeds
    "comm": dict(op="all_reduce", size=4096),
    "moe-ep": dict(tokens=8, hidden=32, intermediate=16, n_experts=4, top_k=2),
    "model": dict(moe_backend="loop", batch=2, seq_len=12, kv_len=20, hidden=32, n_layers=2, vocab=64, n_heads=4,
                  n_kv_heads=2, head_dim=8, window=4, n_experts=4, top_k=2, intermediate=32),
}


def tiny_params(family: str, mode: str):
    fam = get_family(family)
    return fam.validate({**fam.flat_defaults(get_preset("gpt-oss-20b")), **TINY[family], "mode": mode})


def build(family: str, mode: str, seed: int, global_seed: int):
    """The family's workload built with `seed`, after seeding torch's global generator with `global_seed`
    (so a draw from the global generator instead of the case's would show as a difference)."""
    torch.manual_seed(global_seed)
    return get_family(family).build(tiny_params(family, mode), torch.device("cpu"), torch.float32, seed=seed)


def outputs(workload) -> list[torch.Tensor]:
    """The timed call's result (train: the gradients) as a list of tensors."""
    out = workload.fn()
    return [t.detach().clone() for t in (out if isinstance(out, (tuple, list)) else [out])]


def test_the_seed_is_a_stable_function_of_the_case_id():
    case_id = "attention/window128-gqa/mode=prefill,seq_len=4096"
    assert case_seed(case_id) == case_seed(case_id)
    # pinned: a different derivation would give every recorded case new data, and old records a wrong seed
    assert case_seed(case_id) == 2928259798
    assert case_seed("attention/full-gqa/mode=prefill,seq_len=4096") != case_seed(case_id)


@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
@pytest.mark.parametrize("family", family_names())
def test_every_family_draws_its_data_from_the_seed(family, mode):
    if get_family(family).collective:
        pytest.skip(f"{family} builds only in a process group of 2+ ranks (tests/test_distributed.py)")
    if mode not in typing.get_args(get_family(family).params_model.model_fields["mode"].annotation):
        pytest.skip(f"{family} has no {mode} mode")
    first = build(family, mode, seed=11, global_seed=1)
    again = build(family, mode, seed=11, global_seed=2)
    other = build(family, mode, seed=12, global_seed=1)
    assert first.inputs, f"{family} exposes no inputs"
    assert first.inputs.keys() == again.inputs.keys() == other.inputs.keys()
    for name, t in first.inputs.items():
        assert torch.equal(t, again.inputs[name]), f"{family}/{mode}: input {name} differs with the same seed"
        assert not torch.equal(t, other.inputs[name]), f"{family}/{mode}: input {name} ignores the seed"
    # The timed call's output depends on the weights too: the same seed gives the same result whatever
    # the global generator says, another seed a different one.
    same, changed = outputs(first), outputs(other)
    assert all(torch.equal(a, b) for a, b in zip(same, outputs(again)))
    assert not all(torch.equal(a, b) for a, b in zip(same, changed))


def test_the_attention_reference_draws_its_random_rows_from_the_seed():
    from ossbench.workloads.attention_reference import reference_rows

    long = tiny_params("attention", "prefill").model_copy(update={"seq_len": 8192})  # too long for every row
    assert reference_rows(long, seed=11) == reference_rows(long, seed=11)
    assert reference_rows(long, seed=11) != reference_rows(long, seed=12)


def capture_builds(monkeypatch) -> dict[int, dict]:
    """Route the attention family's build through a recorder: seed -> the inputs the runner's build made."""
    real = workloads.get_family("attention")
    built: dict[int, dict] = {}

    def recording_build(params, device, dtype, *, seed):
        workload = real.build(params, device, dtype, seed=seed)
        built[seed] = {name: t.detach().clone() for name, t in workload.inputs.items()}
        return workload

    fake = dataclasses.replace(real, build=recording_build)
    monkeypatch.setattr(workloads, "get_family", lambda name: fake)
    return built


def test_the_recorded_seed_rebuilds_the_case_alone(monkeypatch, tmp_path):
    built = capture_builds(monkeypatch)
    run_plan(plan_run(load_suite(TINY_SUITE), device="cpu", out_dir=tmp_path, filter_text="seq_len=32"))
    monkeypatch.undo()
    records = load_results(tmp_path / "results.json").cases
    assert [r.variant for r in records] == ["full", "window8"] and all(r.status == "ok" for r in records)

    # two cases of the same shape: different seeds, hence different inputs
    full, window = records
    assert full.seed == case_seed(full.id) and window.seed == case_seed(window.id)
    assert full.seed != window.seed
    assert set(built) == {full.seed, window.seed}  # the recorded seeds are the ones the builds got
    assert not torch.equal(built[full.seed]["x"], built[window.seed]["x"])

    # from Python, the record alone gives back the case's data and its numerics check
    family = get_family(full.family)
    for record in records:
        params = family.validate(record.params)  # flat, dotted names for nested specs
        workload = family.build(params, torch.device("cpu"), getattr(torch, record.dtype), seed=record.seed)
        assert all(torch.equal(t, built[record.seed][name]) for name, t in workload.inputs.items())
        assert workload.check().max_abs_err == record.numerics.max_abs_err


PROBES = """\
name: probes
family: probe
dtype: float32
variants:
  fine: {}
  segfault: {action: segfault}
timing: {cache: hot, warmup_s: 0.0, min_samples: 3, min_time_s: 0.0, max_time_s: 0.2, target_rel_ci: 0.5,
         case_timeout_s: 60}
"""


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_isolated_cases_record_their_seed_also_when_the_child_dies(monkeypatch, tmp_path):
    monkeypatch.setitem(workloads._MODULES, "probe", isolate_helpers.__name__)
    monkeypatch.setattr(runner, "run_case", isolate_helpers.run_case)
    suite = tmp_path / "probes.yaml"
    suite.write_text(PROBES)
    run = run_plan(plan_run(load_suite(suite), device="cpu", out_dir=tmp_path / "out", isolate=True))
    assert {c.variant: c.status for c in run.cases} == {"fine": "ok", "segfault": "failed"}
    assert all(c.seed == case_seed(c.id) for c in run.cases)

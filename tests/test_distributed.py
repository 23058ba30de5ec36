"""Multi-rank runs without GPUs: 2 and 4 gloo processes on the CPU (tests/dist_helpers.py starts them as
torchrun would). Sharding and merging, a killed rank, the comm family's data and bus-bandwidth arithmetic,
moe-ep against the single-process block; plus the pure parts (queue order, torchrun's environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dist_helpers
from ossbench.distributed import nproc_command, queue_order, rank_from_env
from ossbench.errors import UserError
from ossbench.results import load_results

ROOT = Path(__file__).resolve().parent.parent
SLEEPY = """\
name: sleepy
family: sleepy
dtype: float32
variants:
{variants}
timing: {{cache: hot, warmup_s: 0.0, min_samples: 3, min_time_s: 0.0, max_time_s: 0.1, target_rel_ci: 0.5}}
"""


def write_suite(tmp_path: Path, variants: dict[str, str]) -> Path:
    path = tmp_path / "sleepy.yaml"
    path.write_text(SLEEPY.format(variants="\n".join(f"  {k}: {v}" for k, v in variants.items())))
    return path


# --- the pure parts


def test_rank_from_env_reads_torchruns_variables():
    assert rank_from_env({}) is None
    assert rank_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None  # one rank: an ordinary run
    info = rank_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank) == (2, 4, 1)
    with pytest.raises(UserError, match="RANK=4 is outside WORLD_SIZE=4"):
        rank_from_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(UserError, match="must be integers"):
        rank_from_env({"WORLD_SIZE": "two"})


def test_the_queue_takes_the_heaviest_cases_first_and_keeps_the_suite_order_on_ties():
    from ossbench.suite_cases import Case

    cases = [Case(id=f"x/{n}", family="x", variant=n, axes=(), params=(("w", w),), dtype="float32", preset="p")
             for n, w in (("a", 1), ("b", 3), ("c", 1), ("d", 2))]
    assert [c.variant for c in queue_order(cases)] == ["a", "b", "c", "d"]
    weight = lambda c: dict(c.params)["w"]  # noqa: E731
    assert [c.variant for c in queue_order(cases, weight)] == ["b", "d", "a", "c"]


def test_nproc_becomes_a_torchrun_command_without_nproc():
    cmd = nproc_command(4, ["run", "suites/comm.yaml", "--nproc", "4", "--quick", "--nproc=4"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "ossbench",
                       "run", "suites/comm.yaml", "--quick"]


def test_comm_bus_factors_and_uneven_splits_follow_nccl_tests():
    from ossbench.workloads.comm import bus_factor, uneven_splits

    assert bus_factor("all_reduce", 8) == 2 * 7 / 8
    assert all(bus_factor(op, 4) == 3 / 4 for op in ("all_gather", "reduce_scatter", "all_to_all"))
    splits = uneven_splits(1000, 3)
    assert all(sum(row) == 1000 for row in splits) and len({tuple(r) for r in splits}) == 3


def test_collective_families_skip_without_a_process_group():
    import torch

    from ossbench.errors import SkipCase
    from ossbench.workloads import get_family

    for name, params in (("comm", {"op": "all_reduce", "size": 4096}), ("moe-ep", {"mode": "decode"})):
        fam = get_family(name)
        assert fam.collective
        with pytest.raises(SkipCase, match="process group"):
            fam.build(fam.validate({**fam.flat_defaults(_preset()), **params}), "cpu", torch.float32, seed=0)


def _preset():
    from ossbench.layers.config import get_preset

    return get_preset("gpt-oss-20b")


# --- 2 and 4 gloo ranks


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_two_ranks_share_the_cases_and_rank_0_writes_one_results_file(tmp_path):
    suite = write_suite(tmp_path, {f"v{i}": "{seconds: 0.5}" for i in range(4)})
    out = tmp_path / "out"
    codes = dist_helpers.launch(2, dist_helpers.cli, ["run", str(suite), "--device", "cpu", "--out", str(out)])
    assert codes == [0, 0]
    run = load_results(out / "results.json")
    assert [c.variant for c in run.cases] == ["v0", "v1", "v2", "v3"]  # the suite's order
    assert all(c.status == "ok" and c.device == "cpu" for c in run.cases)
    assert {c.rank for c in run.cases} == {0, 1}  # both ranks took cases (each takes 0.5 s to build)
    assert run.environment.world_size == 2 and [d["rank"] for d in run.environment.devices] == [0, 1]
    share = load_results(out / "ranks" / "rank-1" / "results.json")  # rank 1's own share
    assert {c.id for c in share.cases} == {c.id for c in run.cases if c.rank == 1}
    assert (out / "report.html").exists() and not (out / "ranks" / "rank-1" / "report.html").exists()


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_a_killed_rank_loses_only_its_case(tmp_path):
    suite = write_suite(tmp_path, {"doomed": "{die: true, seconds: 0.0}",
                                   **{f"v{i}": "{seconds: 0.2}" for i in range(3)}})
    out = tmp_path / "out"
    # rank 0 starts taking cases 3 s late, so rank 1 takes the first one, which kills it (SIGKILL)
    codes = dist_helpers.launch(2, dist_helpers.cli, ["run", str(suite), "--device", "cpu", "--out", str(out)],
                                3.0, env={"OSSBENCH_DEAD_RANK_S": "3"})
    assert codes == [1, -9]  # rank 0's status says a case failed
    run = load_results(out / "results.json")
    status = {c.variant: (c.status, c.rank) for c in run.cases}
    assert status == {"doomed": ("failed", 1), "v0": ("ok", 0), "v1": ("ok", 0), "v2": ("ok", 0)}
    assert "rank 1 died while running it (no heartbeat for 3 s)" in run.case("sleepy/doomed").error


@pytest.mark.slow  # starts fresh interpreters that import torch
def test_comm_and_moe_ep_on_four_ranks(tmp_path):
    assert dist_helpers.launch(4, dist_helpers.collectives, str(tmp_path)) == [0, 0, 0, 0]
    found = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(4)]
    for key, rec in found[0].items():
        if "/torch." in key:  # comm: op/dtype/size
            assert rec["ok"] and rec["err"] == 0.0, key  # small integers: exact in every dtype at 4 ranks
            op = key.split("/")[0]
            assert rec["bus_factor"] == (2 * 3 / 4 if op == "all_reduce" else 3 / 4)
            assert rec["bus_bytes"] == rec["size_bytes"] * rec["bus_factor"]
            assert rec["size_bytes"] % (4 * 4) == 0 or "bfloat16" in key  # whole elements per rank
    assert found[0]["broken_all_gather_ok"] is False  # the check sees data that did not move
    for name in ("decode", "prefill-skewed", "prefill-padded"):
        rec = found[0][f"moe-ep/{name}"]
        assert rec["ok"] and rec["err"] < 1e-5, name
        assert set(rec["phases"]) == {"route", "dispatch", "experts", "combine", "total"}
        assert all(v > 0 for v in rec["phases"].values())
        assert rec["world_size"] == 4 and rec["experts_per_rank"] == 2
        sent = [f[f"moe-ep/{name}"]["a2a_bytes_sent"] for f in found]
        assert rec["a2a_bytes_sent_max"] == max(sent) and rec["a2a_bytes_sent_mean"] == sum(sent) / 4
        # every token-copy a rank sends comes back: twice (hidden 32 x 4 bytes) per copy sent elsewhere
        assert all(s % (2 * 32 * 4) == 0 for s in sent)
    # the skewed router sends most copies to rank 0's experts (0 and 1, the most popular)
    rows = found[0]["moe-ep/prefill-skewed"]["rows_per_rank"]
    assert rows[0] == max(rows) and sum(rows) == 4 * 24 * 2
    assert found[0]["moe-ep/seeds"] == {"same": True, "differ": True}
    assert "6 experts do not split evenly over 4 ranks" in found[0]["moe-ep/uneven"]


COLLECTIVE = """\
name: {name}
family: {family}
preset: gpt-oss-20b
dtype: float32
variants:
{variants}
timing: {{cache: cold, warmup_s: 0.0, min_samples: 5, min_time_s: 0.0, max_time_s: 0.2, target_rel_ci: 0.5}}
"""


def run_nproc(tmp_path: Path, suite: str, device: str) -> subprocess.CompletedProcess:
    """`ossbench run SUITE --nproc 2` in a subprocess: the real torchrun, started by the CLI."""
    path = tmp_path / "suite.yaml"
    path.write_text(suite)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "ossbench", "run", str(path), "--nproc", "2", "--device", device,
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # torchrun starts two fresh interpreters
def test_collective_suites_run_every_case_on_both_ranks_together_under_torchrun(tmp_path):
    done = run_nproc(tmp_path, COLLECTIVE.format(name="c", family="comm", variants=(
        "  ar: {op: all_reduce, size: 65536}\n  a2a: {op: all_to_all_uneven, size: 4100}")), "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    run = load_results(tmp_path / "out" / "results.json")
    assert [c.status for c in run.cases] == ["ok", "ok"] and {c.rank for c in run.cases} == {0}
    for c in run.cases:
        assert c.stats.n >= 5 and "slowest of 2 ranks" in c.timing["stop_reason"]
        seconds = c.stats.median / 1e3
        assert c.derived.gbps == pytest.approx(c.cost_extra["size_bytes"] / seconds / 1e9)  # algbw
        factor = 2 * 1 / 2 if c.params["op"] == "all_reduce" else 1 / 2
        assert c.derived.busbw_gbps == pytest.approx(c.derived.gbps * factor)
    assert run.case("comm/a2a").cost_extra["size_bytes"] == 4096  # 1025 float32 elements: 1024 ran
    assert "busbw GB/s" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.gpu
def test_comm_and_moe_ep_on_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (NCCL refuses two ranks on one GPU)")
    variants = "  ar: {op: all_reduce, size: 16777216}\n  a2a: {op: all_to_all, size: 16777216}"
    done = run_nproc(tmp_path, COLLECTIVE.format(name="c", family="comm", variants=variants).replace(
        "float32", "bfloat16"), "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    run = load_results(tmp_path / "out" / "results.json")
    assert all(c.status == "ok" and c.device == "cuda:0" for c in run.cases)
    assert [d["device"] for d in run.environment.devices] == ["cuda:0", "cuda:1"]
    ep = tmp_path / "ep"
    ep.mkdir()
    done = run_nproc(ep, COLLECTIVE.format(name="e", family="moe-ep", variants=(
        "  decode: {mode: decode, tokens: 16, n_experts: 128}\n  prefill: {mode: prefill, tokens: 2048, skew: 1.0}"
    )).replace("float32", "bfloat16"), "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    run = load_results(ep / "out" / "results.json")
    assert all(c.status == "ok" and c.numerics.ok and c.phases_ms["total"] > 0 for c in run.cases)


def test_each_rank_measures_on_its_own_gpu():
    from ossbench.distributed import RankInfo, rank_device

    info = RankInfo(rank=5, world_size=8, local_rank=1)
    assert rank_device("cpu", info) == "cpu"
    assert rank_device("cuda", info) == "cuda:1"
    with pytest.raises(UserError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:3", info)  # every rank on one GPU: not what a sharded run is for


def test_nproc_and_torchrun_do_not_mix_with_resume(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ossbench.cli import main

    suite = write_suite(tmp_path, {"v": "{}"})
    done = CliRunner().invoke(main, ["run", str(suite), "--nproc", "2", "--resume", str(tmp_path)])
    assert done.exit_code == 2 and "--resume continues a run in one process" in done.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    done = CliRunner().invoke(main, ["run", str(suite), "--nproc", "2"])
    assert done.exit_code == 2 and "under torchrun drop it" in done.output


def test_a_collective_run_gathers_its_cases_in_the_suites_order():
    """Each rank ran every case in the run order (a point of every variant first); results keep the suite's."""
    from types import SimpleNamespace

    from ossbench.distributed import Shard

    shard = object.__new__(Shard)  # no process group needed for a collective gather
    shard.collective, shard.rank = True, 0
    shard._store = SimpleNamespace(set=lambda key, value: None)
    cases = [SimpleNamespace(id=i) for i in ("decode-1", "decode-8", "prefill-128")]
    ran = [SimpleNamespace(id=i) for i in ("decode-1", "prefill-128", "decode-8")]
    assert [r.id for r in shard.gather(ran, cases)] == ["decode-1", "decode-8", "prefill-128"]


def test_cases_left_unrun_are_not_journaled_on_rank_0_either():
    from ossbench.plan import BUDGET
    from ossbench.results import CaseResult
    from ossbench.runner import NOT_RUN, _journaled
    from ossbench.stopping import INTERRUPTED

    def result(status, error=None):
        return CaseResult(id="x", family="f", variant="v", params={}, dtype="float32", status=status, error=error)

    assert _journaled(result("ok")) and _journaled(result("failed", "boom"))
    assert _journaled(result("skipped", "flex cannot express sinks on cpu"))
    for error in (f"{BUDGET} (1 min) reached", f"{INTERRUPTED} (SIGINT) before this case started",
                  f"{NOT_RUN} the CUDA context was lost"):
        assert not _journaled(result("skipped", error))

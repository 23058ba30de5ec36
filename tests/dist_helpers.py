"""Start N gloo ranks on the CPU, as torchrun would, for tests/test_distributed.py.

`launch(world, target, *args)` spawns `world` processes (multiprocessing "spawn": fresh interpreters, which
import this module from the test's sys.path), sets torchrun's environment in each (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT: env:// rendezvous, rank 0 hosts the store) and runs `target(*args)`; it
returns each rank's exit status. Unlike torch.multiprocessing.spawn it does not stop the others when one
rank dies, which is what the killed-rank test needs (torchrun would; docs/distributed.md).

Also the `sleepy` family: cases that take a while to build (so that both ranks get some) and, on request,
kill the rank that builds them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

import ossbench.workloads as workloads
from ossbench.workloads.base import Check, Cost, Family, Workload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, target: Callable[..., Any], *args: Any, timeout: float = 150.0,
           env: dict[str, str] | None = None) -> list[int | None]:
    """Each rank's exit status (None: still running at the timeout, then killed)."""
    port, ctx = free_port(), mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, env or {}, target, args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return codes


def _rank_main(rank: int, world: int, port: int, env: dict[str, str], target: Callable[..., Any],
               args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", **env)
    import torch

    torch.set_num_threads(1)  # two cores shared by every rank
    target(*args)


# --- the sleepy family


class SleepyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = 0.3  # spent building
    die: bool = False  # kill the rank that builds it (rank 0 never does: it gathers)


def build(params: SleepyParams, device, dtype, *, seed: int = 0) -> Workload:
    import torch
    import torch.distributed as dist

    if params.die and dist.get_rank() != 0:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(params.seconds)
    x = torch.randn(8, 8, dtype=dtype)
    return Workload(fn=lambda: x @ x, cost=Cost(flops=2 * 8**3, bytes=3 * 64 * 4, tokens=8),
                    check=lambda: Check(0.0, 0.0, 1e-6, "itself"), inputs={"x": x})


FAMILY = Family(name="sleepy", description="test cases that take a while, or kill their rank",
                params_model=SleepyParams, defaults=lambda preset: {}, build=build)


def cli(argv: list[str], rank0_delay_s: float = 0.0) -> None:
    """`ossbench ARGV` on this rank (exits with its status), the sleepy family known; rank 0 can start
    taking cases late, so that rank 1 takes the first ones."""
    from ossbench import distributed
    from ossbench.cli import main

    workloads._MODULES.setdefault("sleepy", __name__)
    if rank0_delay_s and os.environ["RANK"] == "0":
        real = distributed.Shard.cases

        def late(self, cases):
            time.sleep(rank0_delay_s)
            yield from real(self, cases)

        distributed.Shard.cases = late
    main(argv)


def collectives(out_dir: str) -> None:
    """On every rank: each comm op's check (float32, bf16; even and odd sizes), a broken all-gather's check,
    moe-ep against the single-process block (decode, skewed prefill, padded bmm), its seeds, and a split
    that does not divide; written to OUT/rank-N.json for the test to read."""
    import json

    import torch
    import torch.distributed as dist

    from ossbench.errors import SkipCase
    from ossbench.layers.config import get_preset
    from ossbench.workloads import get_family

    dist.init_process_group("gloo")
    rank, found = dist.get_rank(), {}
    comm = get_family("comm")
    for op in ("all_to_all", "all_to_all_uneven", "all_gather", "reduce_scatter", "all_reduce"):
        for dtype in (torch.float32, torch.bfloat16):
            for size in (4096, 3 * 4096 + 10):
                w = comm.build(comm.validate({"op": op, "size": size}), "cpu", dtype, seed=1)
                c = w.check()
                found[f"{op}/{dtype}/{size}"] = {"ok": c.ok, "err": c.max_rel_err, **w.cost.extra}
    name = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
    real = getattr(dist, name)
    setattr(dist, name, lambda *a, **k: None)  # an all-gather that moves nothing
    w = comm.build(comm.validate({"op": "all_gather", "size": 4096}), "cpu", torch.float32, seed=1)
    found["broken_all_gather_ok"] = w.check().ok
    setattr(dist, name, real)

    ep = get_family("moe-ep")
    base = {**ep.flat_defaults(get_preset("gpt-oss-20b")), "hidden": 32, "intermediate": 16, "n_experts": 8,
            "top_k": 2}
    for name, extra in {"decode": {"mode": "decode", "tokens": 2},
                        "prefill-skewed": {"mode": "prefill", "tokens": 24, "skew": 1.0},
                        "prefill-padded": {"mode": "prefill", "tokens": 24, "grouped_impl": "padded_bmm"}}.items():
        w = ep.build(ep.validate({**base, **extra}), "cpu", torch.float32, seed=5)
        c = w.check()
        found[f"moe-ep/{name}"] = {"ok": c.ok, "err": c.max_rel_err, "phases": w.breakdown(), **w.cost.extra,
                                   "rows_per_rank": w.info["rows_per_rank"]}
    x = [ep.build(ep.validate({**base, "mode": "decode"}), "cpu", torch.float32, seed=s).inputs["x"] for s in (5, 5, 6)]
    found["moe-ep/seeds"] = {"same": torch.equal(x[0], x[1]), "differ": not torch.equal(x[0], x[2])}
    try:
        ep.build(ep.validate({**base, "n_experts": 6}), "cpu", torch.float32, seed=5)
        found["moe-ep/uneven"] = "built"
    except SkipCase as e:
        found["moe-ep/uneven"] = str(e)
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(found, f)
    dist.destroy_process_group()

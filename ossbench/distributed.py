"""Sharded runs over the ranks that torchrun starts (docs/distributed.md).

`torchrun --nproc-per-node N -m ossbench run SUITE` starts N copies of `ossbench run`; each finds its rank in
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; `rank_from_env`), joins the process group (NCCL on
GPUs, gloo on CPUs) and measures on its own device (cuda:LOCAL_RANK). Then, by the suite's family:

- an ordinary family: the ranks share the cases. They take them one at a time from one queue, held in
  torch.distributed's key-value store, in order of descending weight (`queue_order`: longest first, the
  classic list-scheduling rule; the weight function is a parameter, equal weights keep the suite's order),
  so the shares are disjoint and balanced, and a rank that dies takes no more. Each finished case is
  published to the store; rank 0 gathers them into one results.json, in the suite's order, each with the
  rank and device it ran on.
- a collective family (comm, moe-ep: Family.collective): every rank runs every case together; a sample
  is the slowest rank's time (measure/dist_timer.py), so rank 0's records are the run's.

Losing a rank: each rank beats a heartbeat counter in the store from a thread. Rank 0, once its own share
is done, waits for every rank's "done"; a rank whose heartbeat stops for `dead_after_s` (default 60 s,
`OSSBENCH_DEAD_RANK_S`) is declared dead, and the case it had taken is recorded `failed` with that reason;
the other ranks go on taking cases, so nothing else is lost. (torchrun itself stops the remaining workers
when one exits with an error: run with `--isolate`, the default on CUDA, so that a crashing case kills only
its child process, which the rank records as failed and outlives; see docs/distributed.md.)

Ranks other than 0 write their own share to OUT/ranks/rank-N/ (results.json, journal) and no report.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import UserError
from .hardware import Device, resolve_device
from .results import CaseResult
from .suite import Case

if TYPE_CHECKING:
    from .runner import RunPlan

HEARTBEAT_S = 1.0
DEAD_AFTER_S = 60.0  # a rank silent this long is dead (a slow rank still beats: the thread runs beside it)
POLL_S = 0.2
PG_TIMEOUT = timedelta(minutes=30)  # a collective waiting longer than this fails (a lost peer, a hang)
_KEY = "ossbench"


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int


def rank_from_env(environ: dict[str, str] | None = None) -> RankInfo | None:
    """This process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK); None outside one (or alone)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        info = RankInfo(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (got RANK={env.get('RANK')!r}, "
                        f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r})") from None
    if not 0 <= info.rank < info.world_size:
        raise UserError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    return info if info.world_size > 1 else None


def rank_device(spec: str, info: RankInfo) -> str:
    """The device of a rank: "auto" and "cuda" mean this rank's GPU, cuda:LOCAL_RANK (CPU without CUDA)."""
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda:"):
        raise UserError(f"--device {spec}: under torchrun each rank uses its own GPU, cuda:LOCAL_RANK; give "
                        f"--device cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES")
    return f"cuda:{info.local_rank}" if spec == "cuda" else spec


def queue_order(cases: list[Case], weight: Callable[[Case], float] | None = None) -> list[Case]:
    """The order the ranks take cases in: heaviest first (stable, so equal weights keep the suite's order)."""
    if weight is None:
        return list(cases)
    return sorted(cases, key=lambda c: -float(weight(c)))


class Shard:
    """This rank's part in a multi-rank run: hand it to `runner.run_plan(..., shard=)`."""

    def __init__(self, info: RankInfo, device: Device, *, weight: Callable[[Case], float] | None = None,
                 dead_after_s: float | None = None) -> None:
        import torch.distributed as dist

        self.info, self.rank, self.world_size, self.device = info, info.rank, info.world_size, device
        self.weight = weight
        self.dead_after_s = dead_after_s if dead_after_s is not None else float(
            os.environ.get("OSSBENCH_DEAD_RANK_S", DEAD_AFTER_S))
        self.collective = False
        self._leaving = False
        self.dead: dict[int, str] = {}  # rank -> why it was declared dead (rank 0)
        base = dist.distributed_c10d._get_default_store()
        self._store = dist.PrefixStore(_KEY, base)
        self._beat_store = dist.PrefixStore(_KEY, base.clone()) if hasattr(base, "clone") else None
        self._beating = threading.Event()
        self._beater: threading.Thread | None = None

    @classmethod
    def join(cls, info: RankInfo, device: str, **kwargs: Any) -> Shard:
        """Join the job's process group (NCCL on a GPU, gloo on the CPU) on this rank's device."""
        import torch
        import torch.distributed as dist

        dev = resolve_device(rank_device(device, info))
        if dev.is_cuda:
            torch.cuda.set_device(dev.torch_device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.is_cuda else "gloo", rank=info.rank, world_size=info.world_size,
                                    timeout=PG_TIMEOUT, **({"device_id": dev.torch_device} if dev.is_cuda else {}))
        return cls(info, dev, **kwargs)

    # --- before the run
    def adapt(self, plan: RunPlan) -> RunPlan:
        """The plan for this rank: rank 0's output folder (rank N's share under OUT/ranks/rank-N), every
        rank's device in the environment, no isolation for a collective family. Every rank must have
        planned the same cases."""
        import torch.distributed as dist

        from .workloads import get_family

        self.collective = get_family(plan.suite.spec.family).collective
        mine = {"ids": [c.id for c in plan.cases], "out": str(plan.out_dir), "rank": self.rank,
                "local_rank": self.info.local_rank, "host": socket.gethostname(), "device": str(self.device),
                "device_name": self.device.name}
        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, mine)
        if any(e["ids"] != every[0]["ids"] for e in every):
            raise UserError("the ranks planned different cases (a suite file or --filter that differs between "
                            "nodes?): every rank must run the same suite with the same options")
        out = Path(every[0]["out"])
        if self.rank:
            out = out / "ranks" / f"rank-{self.rank}"
        environment = {**plan.environment, "world_size": self.world_size,
                       "devices": [{k: e[k] for k in ("rank", "local_rank", "host", "device", "device_name")}
                                   for e in every]}
        isolate = plan.isolate and not self.collective  # an isolated child is outside the process group
        self._start_heartbeat()
        return replace(plan, out_dir=out, environment=environment, isolate=isolate,
                       measure=replace(plan.measure, out_dir=out))

    # --- during the run (runner.run_plan)
    def cases(self, cases: list[Case]) -> Iterator[Case]:
        """This rank's cases, as it takes them: all of them (collective), else from the shared queue."""
        if self.collective:
            yield from cases
            return
        order = queue_order(cases, self.weight)
        while not self._leaving:
            i = self._store.add("next", 1) - 1
            if i >= len(order):
                return
            self._store.set(f"inflight/{self.rank}", order[i].id)
            yield order[i]

    def publish(self, result: CaseResult) -> None:
        result.rank = self.rank
        if result.device is None:
            result.device = str(self.device)
        if not self.collective:
            self._store.set(f"case/{result.id}", result.model_dump_json())
            self._store.set(f"inflight/{self.rank}", "")

    def agree(self, start: bool) -> bool:
        """Whether every rank starts the next collective case (each rank says whether it would: out of
        budget, stopped, predicted not to fit on its GPU, ...); a rank alone in a collective would wait."""
        import torch.distributed as dist

        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, bool(start))
        return all(every)

    def leave(self) -> None:
        """Take no more cases (this rank cannot run any: a lost CUDA context); the others take the rest."""
        self._leaving = True

    # --- after the run
    def gather(self, own: list[CaseResult], cases: list[Case]) -> list[CaseResult]:
        """Rank 0: every rank's results in the suite's order, lost cases recorded as failed. Others: their own
        (a collective run's in the suite's order too: every rank ran every case)."""
        self._store.set(f"done/{self.rank}", "1")
        if self.collective:
            by_id = {r.id: r for r in own}
            return [by_id[c.id] for c in cases if c.id in by_id]
        if self.rank:
            return own
        self._wait_for_ranks()
        mine = {r.id: r for r in own}
        out = []
        for case in cases:
            if case.id in mine:
                out.append(mine[case.id])
            elif self._store.check([f"case/{case.id}"]):
                out.append(CaseResult.model_validate_json(self._store.get(f"case/{case.id}")))
            else:
                out.append(self._lost(case))
        return out

    def close(self) -> None:
        import torch.distributed as dist

        self._beating.set()
        if self._beater is not None:
            self._beater.join(timeout=2 * HEARTBEAT_S)
        if dist.is_initialized() and not self.dead:  # with a dead peer, tearing down could wait for it
            dist.destroy_process_group()

    # --- liveness
    def _start_heartbeat(self) -> None:
        if self._beat_store is None or self._beater is not None:
            return

        def beat() -> None:
            while not self._beating.wait(HEARTBEAT_S):
                try:
                    self._beat_store.add(f"beat/{self.rank}", 1)
                except Exception:  # noqa: BLE001 - the store's host is gone: the run is over anyway
                    return

        self._beater = threading.Thread(target=beat, name="ossbench-heartbeat", daemon=True)
        self._beater.start()

    def _wait_for_ranks(self) -> None:
        """Until every other rank is done or declared dead (its heartbeat silent for dead_after_s)."""
        waiting = set(range(1, self.world_size))
        seen = {r: (-1, time.monotonic()) for r in waiting}  # rank -> (last beat count, when it changed)
        while waiting:
            for r in sorted(waiting):
                if self._store.check([f"done/{r}"]):
                    waiting.discard(r)
                    continue
                beats, since = seen[r]
                now_beats = self._store.add(f"beat/{r}", 0)
                if now_beats != beats:
                    seen[r] = (now_beats, time.monotonic())
                elif self._beat_store is not None and time.monotonic() - since > self.dead_after_s:
                    self.dead[r] = f"no heartbeat for {self.dead_after_s:g} s"
                    waiting.discard(r)
            if waiting:
                time.sleep(POLL_S)

    def _lost(self, case: Case) -> CaseResult:
        holder = next((r for r in self.dead if self._inflight(r) == case.id), None)
        if holder is not None:
            why = f"rank {holder} died while running it ({self.dead[holder]}); the other ranks finished theirs"
        else:
            why = "no rank recorded it (taken by a rank that died before saying which case it ran)"
        return CaseResult(id=case.id, family=case.family, variant=case.variant, axes=case.axes_dict,
                          params=case.params_dict, dtype=case.dtype, status="failed", error=why, rank=holder)

    def _inflight(self, rank: int) -> str | None:
        key = f"inflight/{rank}"
        return self._store.get(key).decode() if self._store.check([key]) else None


def join_shard(info: RankInfo, device: str) -> Shard:
    return Shard.join(info, device)


def start_torchrun(nproc: int | None, info: RankInfo | None, resume_dir: Any, argv: list[str]) -> int:
    """`ossbench run --nproc N`: run torchrun, which runs the command once per rank; its exit status."""
    import subprocess

    if info is not None:
        raise UserError("--nproc starts torchrun; under torchrun drop it" if nproc else
                        "--resume continues a run in one process: start it without torchrun")
    if resume_dir:
        raise UserError("--resume continues a run in one process: drop --nproc")
    return subprocess.call(nproc_command(nproc, argv))


def nproc_command(nproc: int, argv: list[str]) -> list[str]:
    """`ossbench run ... --nproc N` as the torchrun command that runs it on N local ranks (--nproc dropped)."""
    import sys

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "ossbench", *rest]

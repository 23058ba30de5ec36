"""The comm family: the collectives of expert and tensor parallelism over the run's process group.

Operations (torch.distributed, NCCL on GPUs, gloo on CPUs): `all_to_all` (even splits), `all_to_all_uneven`
(rank s sends rank d a share in proportion to 1 + (s + 2d) mod n: the skew of routed tokens),
`all_gather`, `reduce_scatter` and `all_reduce` (sum, in place). The case's `size` is nccl-tests' size,
the bytes of the largest buffer per rank: all-reduce's buffer, all-gather's output, reduce-scatter's input,
all-to-all's send buffer (rounded down to a whole number of elements per rank; `info.size_bytes` says what
ran). Every rank of the group runs every case together (Family.collective); with no process group or a
single rank the case is skipped with the reason.

Timing (ossbench.measure.dist_timer): the ranks meet at a barrier before each sample; a sample is the
slowest rank's time of the call.

Cost model (nccl-tests' definitions, docs/distributed.md): `bytes` = size, so the derived GB/s is the
algorithmic bandwidth algbw = size / time; `cost_extra.bus_bytes` = size x the bus factor, and the derived
`busbw_gbps` = algbw x 2(n-1)/n for all-reduce and x (n-1)/n for all-gather, reduce-scatter and all-to-all:
what each rank's link carries, comparable with the link's speed whatever n is. No FLOPs are counted.

Check: the buffers hold a closed-form pattern of (sending rank, position), small integers that are never
all zero; one call's output is compared with what the pattern says it must be, on every element up to
2^20 and on 2^20 evenly spaced ones beyond; the ranks share the worst error, so all agree on the verdict.
All-reduce runs in place: call after call its buffer grows by a factor n (bf16 overflows after about a
hundred calls); the check refills it first.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from ..errors import SkipCase
from ..layers.config import ModelConfig
from ..measure.dist_timer import all_max
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload
from .fields import fits_memory

Op = Literal["all_to_all", "all_to_all_uneven", "all_gather", "reduce_scatter", "all_reduce"]
CHECK_ELEMENTS = 2**20  # outputs up to this many elements are checked whole, larger ones at this many points
FILL_CHUNK = 2**24  # elements of the pattern computed at once
# sums of a few small integers are exact in every dtype up to 8 ranks in bf16; beyond, rounding
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def bus_factor(op: str, world: int) -> float:
    """nccl-tests' busbw / algbw: 2(n-1)/n for all-reduce, (n-1)/n for the others."""
    return (2.0 if op == "all_reduce" else 1.0) * (world - 1) / world


class CommParams(BaseModel):
    """One collective at one message size."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    op: Op = Field(description="the collective: all_to_all[_uneven], all_gather, reduce_scatter, all_reduce")
    size: PositiveInt = Field(description="bytes of the largest buffer per rank (nccl-tests' size)")

    # the send and receive buffers of one rank, at most 2 x size
    _memory = model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: 2.0 * p.size))


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    return {"op": "all_reduce", "size": 2**20}


VARIANTS: dict[str, dict[str, Any]] = {op: {"op": op} for op in Op.__args__}


def uneven_splits(elements: int, world: int) -> list[list[int]]:
    """splits[s][d]: elements rank s sends rank d, in proportion to 1 + (s + 2d) mod world, each row
    summing to `elements` (the remainder goes to the last rank)."""
    out = []
    for s in range(world):
        w = [1 + (s + 2 * d) % world for d in range(world)]
        row = [elements * x // sum(w) for x in w]
        row[-1] += elements - sum(row)
        out.append(row)
    return out


def pattern(src: int | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The value rank `src` holds at position `index` of its send buffer: integers in [-30, 30], int64."""
    return (src * 31 + index * 7) % 61 - 30


def _offsets(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for n in sizes:
        out.append(total)
        total += n
    return out


class _Plan:
    """Buffer sizes and the expected output of one op on one rank."""

    def __init__(self, op: str, elements: int, rank: int, world: int) -> None:
        self.op, self.n, self.rank, self.world = op, elements, rank, world
        self.chunk = elements // world
        self.splits = uneven_splits(elements, world) if op == "all_to_all_uneven" else None
        if op == "all_gather":
            self.send, self.recv = self.chunk, elements
        elif op == "reduce_scatter":
            self.send, self.recv = elements, self.chunk
        elif op == "all_to_all_uneven":
            self.send, self.recv = elements, sum(row[rank] for row in self.splits)
        else:  # all_to_all, all_reduce (in place: recv is send)
            self.send, self.recv = elements, elements

    def sent(self, src: int, index: torch.Tensor) -> torch.Tensor:
        """What rank src's send buffer holds at `index`."""
        return pattern(src, index)

    def expected(self, pos: torch.Tensor) -> torch.Tensor:
        """The output this rank must hold at positions `pos` (int64), as float64."""
        r, w, c = self.rank, self.world, self.chunk
        if self.op == "all_reduce":
            return sum(pattern(s, pos) for s in range(w)).double()
        if self.op == "reduce_scatter":
            return sum(pattern(s, r * c + pos) for s in range(w)).double()
        if self.op == "all_gather":
            return pattern(pos // c, pos % c).double()
        if self.op == "all_to_all":
            return pattern(pos // c, r * c + pos % c).double()
        recv_off = torch.tensor(_offsets([row[r] for row in self.splits]), device=pos.device)
        send_off = torch.tensor([_offsets(row)[r] for row in self.splits], device=pos.device)
        src = torch.searchsorted(recv_off, pos, right=True) - 1
        return pattern(src, send_off[src] + pos - recv_off[src]).double()


def _collective(op: str, send: torch.Tensor, recv: torch.Tensor, plan: _Plan, group: Any) -> Callable[[], Any]:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    if op == "all_reduce":
        return lambda: dist.all_reduce(send, group=group)
    if op == "all_gather":
        return lambda: gather(recv, send, group=group)
    if op == "reduce_scatter":
        return lambda: scatter(recv, send, group=group)
    if op == "all_to_all":
        return lambda: dist.all_to_all_single(recv, send, group=group)
    out_splits = [row[plan.rank] for row in plan.splits]
    in_splits = plan.splits[plan.rank]
    return lambda: dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)


def require_group(family: str) -> tuple[Any, int, int]:
    """(the world group, this rank, world size), or SkipCase when there is no group of two or more ranks."""
    if not (dist.is_available() and dist.is_initialized()):
        raise SkipCase(f"{family} needs a torch.distributed process group: run the suite under "
                       f"`torchrun --nproc-per-node N -m ossbench run ...` or `ossbench run --nproc N`")
    world = dist.get_world_size()
    if world < 2:
        raise SkipCase(f"{family} needs at least 2 ranks (the process group has 1)")
    return dist.group.WORLD, dist.get_rank(), world


def build(params: CommParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    """The collective on this rank's buffers (the seed is unused: the data is the closed-form pattern)."""
    p, device = params, torch.device(device)
    if dtype not in TOLERANCE:
        raise SkipCase(f"comm checks support {', '.join(map(str, TOLERANCE))}, not {dtype}")
    group, rank, world = require_group("comm")
    dtype_bytes = torch.finfo(dtype).bits // 8
    elements = (p.size // dtype_bytes) // world * world
    if elements == 0:
        raise SkipCase(f"size {p.size} B is less than one {dtype} element per rank ({world} ranks)")
    plan = _Plan(p.op, elements, rank, world)
    send = torch.empty(plan.send, device=device, dtype=dtype)
    recv = send if p.op == "all_reduce" else torch.empty(plan.recv, device=device, dtype=dtype)

    def fill() -> None:  # in chunks: the int64 positions of a 1 GiB buffer alone would be 4 GiB
        for start in range(0, plan.send, FILL_CHUNK):
            index = torch.arange(start, min(start + FILL_CHUNK, plan.send), device=device)
            send[start:start + FILL_CHUNK].copy_(plan.sent(rank, index))

    fill()
    fn = _collective(p.op, send, recv, plan, group)
    size = elements * dtype_bytes
    factor = bus_factor(p.op, world)
    cost = Cost(flops=0.0, bytes=float(size), tokens=0, extra={
        "size_bytes": float(size), "bus_factor": factor, "bus_bytes": size * factor, "world_size": float(world),
        "send_bytes": float(plan.send * dtype_bytes), "recv_bytes": float(plan.recv * dtype_bytes)})
    info: dict[str, Any] = {"size_bytes": size, "world_size": world, "elements_per_rank": elements}
    if plan.splits is not None and world <= 16:
        info["splits"] = plan.splits  # elements rank s sends rank d
    held = (send.numel() + (0 if recv is send else recv.numel())) * dtype_bytes

    def check() -> Check:
        fill()
        fn()
        pos = torch.arange(plan.recv, device=device)
        if plan.recv > CHECK_ELEMENTS:
            # float64: float32 would round the last position of a large buffer past its end
            pos = torch.linspace(0, plan.recv - 1, CHECK_ELEMENTS, dtype=torch.float64, device=device).round().long()
        ref = plan.expected(pos)
        abs_err = (recv[pos].double() - ref).abs().max().item()
        rel_err = abs_err / max(ref.abs().max().item(), 1e-300)
        abs_err, rel_err = all_max([abs_err, rel_err], device, group)  # every rank gets the same verdict
        fill()
        return Check(max_abs_err=abs_err, max_rel_err=rel_err, tolerance=TOLERANCE[dtype],
                     reference=f"closed-form pattern of every rank's data, worst of {world} ranks")

    return Workload(fn=fn, cost=cost, check=check, persistent_bytes=held, info=info,
                    inputs={"send": send}, group=group)


def footprint(p: CommParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py), per rank: a send and a receive buffer of at most the
    message size each (all-reduce works in place), nothing transient."""
    held = float(p.size * (1 if p.op == "all_reduce" else 2))
    return Footprint(cost=Cost(flops=0.0, bytes=float(p.size), tokens=0), persistent_bytes=held, activation_bytes=0.0)


FAMILY = Family(
    name="comm",
    description="collectives over the process group (all-to-all, all-gather, reduce-scatter, all-reduce): "
                "time, algbw and busbw as nccl-tests defines them",
    params_model=CommParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
    collective=True,
)

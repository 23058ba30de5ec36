"""The moe-ep family: gpt-oss's MoE block with its experts split over the ranks (expert parallelism).

Rank r holds experts [r E/n, (r+1) E/n) of the n ranks' E experts, and its own `tokens` tokens (the
attention before the MoE is data-parallel). One call, on every rank at once:

1. route:    norm, router, top-k and softmax (the replicated router), token slots sorted by expert;
2. dispatch: the per-expert slot counts exchanged first (an all-to-all of E integers; the split sizes
             then come to the host), then the slots' hidden vectors with `all_to_all_single`;
3. experts:  the received rows through the local experts with the MoE module's grouped expert math
             (`grouped_impl` as in the moe family: torch._grouped_mm or a padded bmm);
4. combine:  the outputs sent back with `all_to_all_single`, put back in slot order, weighted and summed
             over each token's k experts, plus the residual.

Every rank builds the whole block from the case's seed (so all hold the same router and experts, and the
check has the single-process block at hand) and draws the inputs of all ranks, keeping its own slice:
`skew` (Zipf expert popularity, as in the moe family) then biases one router for all ranks. Modes:
prefill (`tokens` per rank, default 4096) and decode (default 1 per rank); no train mode.

Timing (ossbench.measure.dist_timer): ranks aligned with a barrier before each sample, the slowest rank's
time is the sample. `phases_ms` (after timing): ten more aligned calls with a clock read between phases
(CUDA events on GPU, perf_counter on CPU), each phase the slowest rank's, the median over the calls, and
the total; the slowest ranks of different phases may differ, so the phases need not add up to the total.

Check: the distributed output of every token equals the single-process MoE block (the moe family's
grouped backend, all experts local) on the same weights and tokens; the ranks share the worst error.

Cost model (per call, the whole group: tokens = n x tokens): FLOPs and HBM bytes as the moe family counts
them for n x tokens tokens (experts touched by any rank's tokens); `cost_extra.a2a_bytes_sent`: the bytes
this rank sends to other ranks, dispatch and combine (a token-copy is hidden x dtype bytes: 2 in bf16),
with `a2a_bytes_sent_max` / `_mean` over the ranks.
"""

from __future__ import annotations

import dataclasses
import time
import types
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, field_validator

from ..errors import SkipCase
from ..layers.config import ModelConfig
from ..layers.moe import MoE, Routing, load_max_over_mean
from ..layers.moe_spec import MoESpec
from ..measure.dist_timer import aligned, all_max
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload
from .building import init_norm_, randn
from .checks import errors, require_checked_dtype
from .comm import require_group
from .ffn import TOLERANCE
from .fields import default_tokens
from .moe import _skew_needs_bias, apply_skew, balanced_tokens_per_expert, moe_cost, router_bytes
from .spec_params import spec_of, spec_params_model

PHASES = ("route", "dispatch", "experts", "combine")
PHASE_CALLS = 10  # aligned calls timed phase by phase after the main timing


class MoEEPAxes(BaseModel):
    """The run axes of an expert-parallel MoE case; MoEEPParams adds MoESpec's fields (but `weights`)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode"]
    grouped_impl: Literal["auto", "grouped_mm", "padded_bmm"] = Field(
        description="the local experts' kernel: torch._grouped_mm, zero-padded torch.bmm, or auto (probe)")
    tokens: PositiveInt | None = Field(None, validate_default=True,
                                       description="tokens per rank per call; null: 4096 (prefill) or 1 (decode)")

    _tokens = field_validator("tokens")(default_tokens)

    @property
    def spec(self) -> MoESpec:
        return spec_of(self, MoESpec)


MoEEPParams = spec_params_model("MoEEPParams", MoEEPAxes, MoESpec, exclude=("weights",), after={
    "skew": (NonNegativeFloat, Field(description="0: the random router's natural load; s > 0: Zipf(s) expert "
                                                 "popularity")),
}, validators={"_skew_needs_bias": field_validator("skew")(classmethod(_skew_needs_bias))})
MoEEPParams.__doc__ = "One expert-parallel MoE case: the run axes, the MoESpec fields (float weights) and skew."


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's MoE block (gpt-oss-120b: 128 experts) in prefill, 4096 tokens per rank."""
    spec = cfg.moe_spec() if cfg.n_experts else MoESpec(hidden=cfg.hidden, intermediate=cfg.hidden)
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "weights"}
    return dict(mode="prefill", grouped_impl="auto", tokens=None, **fields, skew=0.0)


VARIANTS: dict[str, dict[str, Any]] = {"balanced": {}, "skewed": {"skew": 1.0}}


class ExpertParallelMoE:
    """The expert-parallel forward of `full`'s block on this rank: `local` holds this rank's experts."""

    def __init__(self, full: MoE, rank: int, world: int, group: Any) -> None:
        self.full, self.rank, self.world, self.group = full, rank, world, group
        self.n_local = full.n_experts // world
        e0, e1 = rank * self.n_local, (rank + 1) * self.n_local
        spec = dataclasses.replace(full.spec, n_experts=self.n_local, top_k=1)
        w = full.mlp1_weight
        self.local = MoE(spec, backend="grouped", grouped_impl=full.grouped_impl, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in ("mlp1_weight", "mlp2_weight", "mlp1_bias", "mlp2_bias"):
                if getattr(full, name) is not None:
                    getattr(self.local, name).copy_(getattr(full, name)[e0:e1])
        self.local.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, mark: Callable[[str], None] | None = None) -> torch.Tensor:
        """x [T, hidden] -> x + the MoE update, [T, hidden]; `mark(phase)` after each phase (timing)."""
        full, world, n_local, group = self.full, self.world, self.n_local, self.group
        T, k = x.shape[0], full.top_k
        t = full.norm(x)
        routing = full.route(t)  # [T, k]
        flat = routing.indices.flatten()  # [T*k]
        order = torch.argsort(flat, stable=True)  # slots grouped by expert, so by destination rank
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts = torch.zeros(full.n_experts, dtype=torch.long, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))  # [E]: chunk d holds rank d's experts
        if mark:
            mark("route")
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=group)  # chunk s: rank s's slots per local expert
        by_source = recv_counts.view(world, n_local)
        send_splits = counts.view(world, n_local).sum(1).tolist()  # host sync: the split sizes
        recv_splits = by_source.sum(1).tolist()
        rows = t[order // k]  # [T*k, hidden]
        recv = rows.new_empty(sum(recv_splits), full.hidden)
        dist.all_to_all_single(recv, rows, recv_splits, send_splits, group=group)
        if mark:
            mark("dispatch")
        # each source's rows arrive sorted by expert: the local expert of every received row
        local_ids = torch.arange(n_local, device=x.device).repeat(world).repeat_interleave(by_source.flatten())
        ones = torch.ones(local_ids.numel(), 1, dtype=x.dtype, device=x.device)
        if recv.shape[0]:  # [R, hidden]
            y = self.local._grouped(recv, Routing(local_ids.unsqueeze(1), ones)).view(-1, full.hidden)
        else:  # no token chose this rank's experts (decode at small batch)
            y = recv
        if mark:
            mark("experts")
        back = rows.new_empty(T * k, full.hidden)
        dist.all_to_all_single(back, y, send_splits, recv_splits, group=group)
        slots = back.index_select(0, inverse).view(T, k, full.hidden)  # [T, k, hidden] in slot order
        out = x + torch.bmm(routing.weights.unsqueeze(1), slots).squeeze(1)  # [T, hidden]
        if mark:
            mark("combine")
        return out


def _phase_times(ep: ExpertParallelMoE, x: torch.Tensor, calls: int) -> dict[str, float]:
    """Median over `calls` aligned calls of each phase's slowest-rank time, and of the total, in ms."""
    dev = x.device
    per_call: list[list[float]] = []
    for _ in range(calls):
        aligned(dev, ep.group)
        if dev.type == "cuda":
            events = {"start": torch.cuda.Event(enable_timing=True)}
            events["start"].record()

            def mark(name: str) -> None:
                events[name] = torch.cuda.Event(enable_timing=True)
                events[name].record()

            ep(x, mark)
            torch.cuda.synchronize(dev)
            marks = [events["start"].elapsed_time(events[p]) for p in PHASES]
        else:
            t0, stamps = time.perf_counter(), {}
            ep(x, lambda name: stamps.__setitem__(name, time.perf_counter()))
            marks = [(stamps[p] - t0) * 1e3 for p in PHASES]
        spans = [marks[0]] + [b - a for a, b in zip(marks, marks[1:])] + [marks[-1]]
        per_call.append(all_max(spans, dev, ep.group))
    med = torch.tensor(per_call, dtype=torch.float64).median(dim=0).values.tolist()
    return dict(zip((*PHASES, "total"), med))


def build(params: MoEEPParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p, device = params, torch.device(device)
    require_checked_dtype("moe-ep", TOLERANCE, dtype)
    group, rank, world = require_group("moe-ep")
    if p.n_experts % world:
        raise SkipCase(f"{p.n_experts} experts do not split evenly over {world} ranks")
    generator = torch.Generator(device=device).manual_seed(seed)
    full = MoE(p.spec, backend="grouped", grouped_impl=p.grouped_impl, device=device, dtype=dtype,
               generator=generator)
    init_norm_(full.norm, generator)
    x_all = randn((world * p.tokens, p.hidden), generator, device, dtype)  # every rank's tokens, [n T, hidden]
    apply_skew(full, x_all, p.skew)  # one router bias for all ranks
    full.requires_grad_(False)
    x = x_all[rank * p.tokens:(rank + 1) * p.tokens].clone()  # this rank's tokens, [T, hidden]
    del x_all
    ep = ExpertParallelMoE(full, rank, world, group)

    with torch.no_grad():
        local_counts = full.route(full.norm(x)).tokens_per_expert(p.n_experts)  # [E]
    counts = local_counts.clone()
    dist.all_reduce(counts, group=group)  # every rank's tokens per expert
    dest = local_counts.view(world, ep.n_local).sum(1)  # slots this rank sends to each rank
    token_bytes = p.hidden * (torch.finfo(dtype).bits // 8)
    sent = 2.0 * float(dest.sum() - dest[rank]) * token_bytes  # dispatch + combine, other ranks only
    received = local_counts.new_zeros(world)
    received[rank] = counts.view(world, ep.n_local)[rank].sum()
    dist.all_reduce(received, group=group)  # rows each rank's experts process
    sent_max, sent_sum = all_max([sent], device, group)[0], torch.tensor([sent], dtype=torch.float64, device=device)
    dist.all_reduce(sent_sum, group=group)

    whole = types.SimpleNamespace(**{**p.model_dump(), "tokens": world * p.tokens, "weights": "dtype"})
    base = moe_cost(whole, torch.finfo(dtype).bits // 8, counts.tolist())
    cost = Cost(flops=base.flops, bytes=base.bytes, tokens=world * p.tokens, extra={
        **base.extra, "a2a_bytes_sent": sent, "a2a_bytes_sent_max": sent_max,
        "a2a_bytes_sent_mean": sent_sum.item() / world, "world_size": float(world),
        "experts_per_rank": float(ep.n_local), "load_max_over_mean": load_max_over_mean(counts)})
    info = {"tokens_per_expert": counts.tolist(), "rows_per_rank": received.tolist(), "world_size": world,
            "grouped_impl": ep.local.resolved_grouped_impl(device, dtype, False)}
    held = sum(t.numel() * t.element_size() for m in (full, ep.local) for t in (*m.parameters(), *m.buffers()))

    def check() -> Check:
        with torch.no_grad():
            got, ref = ep(x), full(x)  # distributed vs the single-process block, all experts here
        abs_err, rel_err = all_max(list(errors(got, ref.double())), device, group)
        return Check(max_abs_err=abs_err, max_rel_err=rel_err, tolerance=TOLERANCE[dtype],
                     reference=f"single-process MoE (grouped, all {p.n_experts} experts) on the same weights and "
                               f"{p.tokens} tokens, worst of {world} ranks")

    return Workload(fn=lambda: ep(x), cost=cost, check=check, persistent_bytes=held + x.numel() * x.element_size(),
                    info=info, inputs={"x": x}, group=group, breakdown=lambda: _phase_times(ep, x, PHASE_CALLS))


def footprint(p: MoEEPParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py), per rank, with balanced routing of this rank's tokens:
    the whole block (kept for the check) plus the rank's share of the experts (at most half: two or more
    ranks), its tokens, and each slot's expert input and outputs in flight."""
    whole = types.SimpleNamespace(**{**p.model_dump(), "weights": "dtype"})
    cost = moe_cost(whole, dtype_bytes, balanced_tokens_per_expert(whole))
    experts = cost.extra["expert_weight_bytes_stored"]
    router = router_bytes(p.hidden, p.n_experts, dtype_bytes)
    held = 1.5 * experts + router + p.tokens * p.hidden * dtype_bytes
    act = p.tokens * p.top_k * (2 * p.hidden + 3 * p.intermediate) * dtype_bytes
    return Footprint(cost=cost, persistent_bytes=held, activation_bytes=float(act))


FAMILY = Family(
    name="moe-ep",
    description="gpt-oss's MoE block with experts split over the ranks: route, all-to-all dispatch, local "
                "grouped expert GEMMs, all-to-all combine; balanced or Zipf-skewed routing",
    params_model=MoEEPParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
    collective=True,
)

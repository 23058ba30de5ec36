"""The moe family: gpt-oss's MoE MLP block (norm, router, top-k experts, residual), and dense FFN blocks
sized to match it, so that "MoE vs dense with the same active / total parameters" is one suite.

Modes (the block keeps no state between tokens, so prefill and decode differ in the token count only):
- prefill: one forward pass over `tokens` tokens (default 4096);
- decode:  one forward pass over a decode batch of `tokens` tokens, one per sequence (default 1);
- train:   forward + backward (gradients of the input and every parameter), `tokens` default 4096.

`dense: active|total` replaces the MoE by a pre-norm dense clamped-SwiGLU FFN block (same norm, same
residual) whose width gives it the parameters of the MoE's router + top_k experts (`active`) or router +
all experts (`total`); `backend`, `grouped_impl`, `weights` and `skew` do not apply to it.

Routing: the router's weights are random, so the load is roughly balanced (`skew: 0`); `skew: s` sets the
router bias so that expert popularity follows a Zipf law with exponent s (see layers.moe.zipf_router_bias).
Each case records the routing of its inputs: `info.tokens_per_expert`, `cost_extra.load_max_over_mean`,
`cost_extra.experts_touched`.

Cost model (per call; docs/moe.md):
- FLOPs, active experts only, 2 per multiply-add: router 2 T hidden E, experts 2 T k (hidden 2I + I hidden),
  the weighted combine 2 T k hidden (a batched matmul here), plus the SwiGLU at 7 FLOPs per element
  (T k I elements). Norm, softmax, top-k and bias adds are not counted. Train = 3x forward.
- bytes: the weights of the experts that received at least one token (MXFP4: 4.25 bits per value, biases
  in the case's dtype), the router and the fp32 norm scale, the input read and the output written. Train:
  those weights read and their gradients written, plus output-gradient read and input-gradient written.
"""

from __future__ import annotations

import dataclasses

import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationInfo, field_validator, \
    model_validator

from ..backends import unsupported_reason
from ..errors import SkipCase
from ..layers.config import ModelConfig
from ..layers.ffn import DenseFFN, matched_ffn_intermediate
from ..layers.moe import MoE, grouped_mm_unsupported_reason, load_max_over_mean, zipf_router_bias
from ..layers.ffn_spec import FFNSpec
from ..layers.moe_spec import MoESpec
from ..layers.mxfp4 import bytes_per_value
from ..layers.params import moe_params
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload, activation_factor
from .building import init_norm_, randn, timed_call
from .checks import check_rows, combined_check, errors, input_grad_errors, require_checked_dtype
from .ffn import ACTIVATION_FLOPS, TOLERANCE, dense_workload, ffn_footprint, init_dense_ffn_
from .fields import backend_of, cross_field_error, default_tokens, fits_memory
from .spec_params import spec_of, spec_params_model

GATHER_MEMORY_FRACTION = 0.6  # the gather backend is skipped when its gathered weights need more of the free memory
# Two router logits closer than this (relative to the token's largest |logit|, in units of the dtype's
# epsilon) may be ordered differently by the backend's rounded router and the float64 reference: for such
# tokens the reference takes the backend's choice of experts (and still checks the expert outputs).
ROUTING_TIE_EPS = 4


class MoEAxes(BaseModel):
    """The run axes of an MoE case; MoEParams adds every MoESpec field, then `skew` and `dense`."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode", "train"]
    backend: backend_of("moe") = Field(description="how the experts run (not used by dense cases)")
    grouped_impl: Literal["auto", "grouped_mm", "padded_bmm"] = Field(
        description="grouped backend's kernel: torch._grouped_mm, zero-padded torch.bmm, or auto (probe)")
    tokens: PositiveInt | None = Field(None, validate_default=True,
                                       description="tokens per call; null: 4096 (prefill, train) or 1 (decode)")

    _tokens = field_validator("tokens")(default_tokens)

    @property
    def spec(self) -> MoESpec:
        return spec_of(self, MoESpec)


def _mxfp4_inference_only(cls: type, v: str, info: ValidationInfo) -> str:
    if v == "mxfp4" and info.data.get("mode") == "train":
        raise ValueError("weights: mxfp4 is a storage format for inference: train mode needs the expert "
                         "weights in a float dtype")
    return v


def _skew_needs_bias(cls: type, v: float, info: ValidationInfo) -> float:
    if v > 0 and info.data.get("router_bias") is False:
        raise cross_field_error("skew is applied through the router bias: it needs router_bias: true",
                                "router_bias", "skew")
    return v


MoEParams = spec_params_model("MoEParams", MoEAxes, MoESpec, after={
    "skew": (NonNegativeFloat, Field(description="0: the random router's natural load; s > 0: Zipf(s) expert "
                                                 "popularity")),
    "dense": (Literal["none", "active", "total"], Field(description="active/total: a dense SwiGLU block with "
                                                                    "the MoE's active/total parameters instead")),
}, validators={
    "_mxfp4_inference_only": field_validator("weights")(classmethod(_mxfp4_inference_only)),
    "_skew_needs_bias": field_validator("skew")(classmethod(_skew_needs_bias)),
    # every expert is held in memory, so all of them count (the cost model's bytes count those touched)
    "_memory": model_validator(mode="after")(fits_memory(
        lambda p, dtype_bytes: moe_cost(p, dtype_bytes, [1] * p.n_experts).bytes)),
})
MoEParams.__doc__ = "One MoE (or matched dense) case: the run axes, the MoESpec fields, skew and dense."


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's MoE block (gpt-oss-20b: 32 experts, top-4) in prefill over 4096 tokens."""
    # a preset without experts (GPT-2) gets gpt-oss-20b's MoE at its own hidden size
    spec = cfg.moe_spec() if cfg.n_experts else MoESpec(hidden=cfg.hidden, intermediate=cfg.hidden)
    return dict(mode="prefill", backend="grouped", grouped_impl="auto", tokens=None, **dataclasses.asdict(spec),
                skew=0.0, dense="none")


VARIANTS: dict[str, dict[str, Any]] = {
    "grouped": {"backend": "grouped"},
    "loop": {"backend": "loop"},
    "gather": {"backend": "gather"},
    "skewed": {"skew": 1.0},
    "mxfp4": {"weights": "mxfp4"},
    "dense-same-active": {"dense": "active"},
    "dense-same-total": {"dense": "total"},
}


# --- cost model
def moe_cost(p: MoEParams, dtype_bytes: int, tokens_per_expert: list[int]) -> Cost:
    T, k, E, H, I = p.tokens, p.top_k, p.n_experts, p.hidden, p.intermediate
    router = 2.0 * T * H * E
    experts = 2.0 * T * k * (H * 2 * I + I * H)
    combine = 2.0 * T * k * H
    act = float(ACTIVATION_FLOPS["swiglu"] * T * k * I)
    touched = sum(1 for n in tokens_per_expert if n > 0)
    counts = moe_params(H, I, E, k, bias=p.expert_bias, router_bias=p.router_bias)
    weight_values = 3 * H * I  # mlp1 (2I x H) + mlp2 (H x I) of one expert
    per_value = bytes_per_value() if p.weights == "mxfp4" else dtype_bytes
    bias_values = (2 * I + H) if p.expert_bias else 0
    expert_bytes = touched * (weight_values * per_value + bias_values * dtype_bytes)
    fixed_bytes = counts["router"] * dtype_bytes + 4 * H  # router + fp32 norm scale
    activation_bytes = T * H * dtype_bytes
    scale = 3 if p.mode == "train" else 1
    if p.mode == "train":
        nbytes = 2 * (expert_bytes + fixed_bytes) + 4 * activation_bytes
    else:
        nbytes = expert_bytes + fixed_bytes + 2 * activation_bytes
    return Cost(flops=scale * (router + experts + combine + act), bytes=float(nbytes), tokens=T, extra={
        "matmul_flops": scale * (router + experts + combine),
        "router_flops": scale * router,
        "expert_flops": scale * experts,
        "activation_flops": scale * act,
        "experts_touched": float(touched),
        "expert_bytes_touched": float(expert_bytes),
        "load_max_over_mean": load_max_over_mean(tokens_per_expert),
        "params_total": float(counts["total"] + H),  # + the norm scale
        "params_active": float(counts["active"] + H),
        "expert_weight_bytes_stored": float(E * (weight_values * per_value + bias_values * dtype_bytes)),
    })


def balanced_tokens_per_expert(p: MoEParams) -> list[int]:
    """What a balanced router gives: the tokens' T x top_k slots spread evenly over the experts."""
    slots = p.tokens * p.top_k
    return [slots // p.n_experts + (1 if e < slots % p.n_experts else 0) for e in range(p.n_experts)]


def router_bytes(hidden: int, n_experts: int, dtype_bytes: int) -> int:
    """The gate's weight and bias in the dtype, and the MLP norm's fp32 scale."""
    return (hidden + 1) * n_experts * dtype_bytes + 4 * hidden


def footprint(p: MoEParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py), with balanced routing (a skewed router touches fewer
    experts: the prediction then overestimates decode bytes)."""
    if p.dense != "none":
        width = matched_ffn_intermediate(p.dense, p.hidden, p.intermediate, p.n_experts, p.top_k,
                                         bias=p.expert_bias, router_bias=p.router_bias)
        return ffn_footprint(p.mode, p.tokens, p.hidden, width, "swiglu", p.expert_bias, "rmsnorm", dtype_bytes)
    cost = moe_cost(p, dtype_bytes, balanced_tokens_per_expert(p))
    T, k, H, I = p.tokens, p.top_k, p.hidden, p.intermediate
    router = router_bytes(H, p.n_experts, dtype_bytes)
    held = cost.extra["expert_weight_bytes_stored"] + router + T * H * dtype_bytes * (2 if p.mode == "train" else 1)
    # per call: router logits, each token slot's gathered input, mlp1's output, the SwiGLU, mlp2's output
    act = T * p.n_experts * 4 + T * k * (H + 2 * I + I + H) * dtype_bytes
    if p.backend == "gather":  # a copy of its experts' weights per token slot
        act += T * k * 3 * H * I * dtype_bytes
    if p.weights == "mxfp4" and p.backend != "triton":  # the touched experts decoded to the compute dtype each
        act += cost.extra["experts_touched"] * 3 * H * I * dtype_bytes  # call (triton decodes in its GEMMs)
    return Footprint(cost=cost, persistent_bytes=float(held), activation_bytes=float(act * activation_factor(p.mode)),
                     backends=(("moe", p.backend),))


# --- building
def make_moe(p: MoEParams, device: Any, dtype: torch.dtype, generator: torch.Generator) -> MoE:
    module = MoE(p.spec, backend=p.backend, grouped_impl=p.grouped_impl, device=device, dtype=dtype,
                 generator=generator)
    init_norm_(module.norm, generator)
    return module


def apply_skew(module: MoE, x: torch.Tensor, skew: float) -> None:
    """Add the Zipf bias to the router bias, scaled by the spread of the router logits on these inputs."""
    if skew == 0:
        return
    with torch.no_grad():
        spread = F.linear(module.norm(x), module.gate.weight).float().std().item()
        module.gate.bias += zipf_router_bias(module.n_experts, skew, spread).to(module.gate.bias)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gather_skip_reason(p: MoEParams, device: torch.device, dtype_bytes: int) -> str | None:
    """The gather backend holds a copy of every token slot's expert weights; say so when they cannot fit."""
    need = p.tokens * p.top_k * 3 * p.hidden * p.intermediate * dtype_bytes * (3 if p.mode == "train" else 1)
    free = available_bytes(device)
    if need > GATHER_MEMORY_FRACTION * free:
        return (f"gather backend would materialise {need / 1e9:.1f} GB of per-token expert weights "
                f"({p.tokens} tokens x top_{p.top_k}); {free / 1e9:.1f} GB free on {device}")
    return None


def build(params: MoEParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    require_checked_dtype("moe", TOLERANCE, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    if p.dense != "none":
        return build_dense(p, device, dtype, generator)
    if reason := unsupported_reason("moe", p.backend, device, dtype, train=p.mode == "train"):
        raise SkipCase(reason)  # the backend's own reason (ossbench.backends)
    dtype_bytes = torch.finfo(dtype).bits // 8
    if p.backend == "gather" and (reason := gather_skip_reason(p, device, dtype_bytes)):
        raise SkipCase(reason)
    module = make_moe(p, device, dtype, generator)
    training = p.mode == "train"
    info: dict[str, Any] = {}
    if p.backend == "grouped":
        info["grouped_impl"] = module.resolved_grouped_impl(device, dtype, training)
        if p.grouped_impl == "grouped_mm":
            for k, n in ((p.hidden, 2 * p.intermediate), (p.intermediate, p.hidden)):
                if reason := grouped_mm_unsupported_reason(str(device), dtype, k, n, training):
                    raise SkipCase(reason)

    x = randn((p.tokens, p.hidden), generator, device, dtype)  # [T, hidden]
    apply_skew(module, x, p.skew)
    with torch.no_grad():
        counts = module.route(module.norm(x)).tokens_per_expert(p.n_experts).tolist()
    info["tokens_per_expert"] = counts
    module.requires_grad_(training)
    dy = randn((p.tokens, p.hidden), generator, device, dtype) if training else None
    fn = timed_call(lambda: module(x), dy, [x], [x, *module.parameters()])
    held = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    held += x.numel() * x.element_size() * (2 if training else 1)
    return Workload(fn=fn, cost=moe_cost(p, dtype_bytes, counts), check=lambda: check_moe(module, x, dy),
                    persistent_bytes=held, info=info, inputs={"x": x, "dy": dy} if training else {"x": x})


def build_dense(p: MoEParams, device: torch.device, dtype: torch.dtype, generator: torch.Generator) -> Workload:
    width = matched_ffn_intermediate(p.dense, p.hidden, p.intermediate, p.n_experts, p.top_k,
                                     bias=p.expert_bias, router_bias=p.router_bias)
    spec = FFNSpec(hidden=p.hidden, activation="swiglu", intermediate=width, bias=p.expert_bias,
                   swiglu_alpha=p.swiglu_alpha, swiglu_limit=p.swiglu_limit, norm="rmsnorm", norm_eps=p.norm_eps)
    module = DenseFFN(spec, residual=True, device=device, dtype=dtype)
    init_dense_ffn_(module, generator)
    workload = dense_workload(module, p.mode, p.tokens, device, dtype, generator)
    workload.cost.extra["dense_intermediate"] = float(width)
    workload.info.update(dense_intermediate=width, matched=f"dense SwiGLU with the MoE's {p.dense} parameters")
    return workload


# --- numerics check
def check_moe(module: MoE, x: torch.Tensor, dy: torch.Tensor | None) -> Check:
    """The backend's MoE update (no residual) on all tokens, compared on a set of tokens with a float64
    reference; in train mode the forward runs with autograd on (so the timed kernels are the checked ones)
    and, with few tokens, the input gradient is compared too."""
    training = dy is not None
    xin = x.detach().requires_grad_(training)
    with torch.set_grad_enabled(training):
        t = module.norm(xin)
        routing = module.route(t)
        got = module.experts(t, routing)  # [T, hidden], the same computation as forward minus the residual
    rows = check_rows(x.shape[0], x.device)
    ref, ambiguous = reference_moe(module, x.detach()[rows], routing.indices[rows], x.dtype)
    errs = [errors(got.detach()[rows], ref)]
    what = f"{len(rows)} of {x.shape[0]} tokens"
    if ambiguous:
        what += f" ({ambiguous} with near-tied router logits routed as the backend chose)"
    if training and len(rows) == x.shape[0]:
        reference = lambda x64: reference_moe(module, x64, routing.indices[rows], x.dtype)[0]  # noqa: E731
        errs.append(input_grad_errors(got, xin, dy, rows, reference))
        what += " and the input gradient"
    return combined_check(errs, TOLERANCE[x.dtype], f"float64 per-token MoE on {x.device.type}, {what}")


def reference_moe(module: MoE, x: torch.Tensor, backend_indices: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """float64 MoE update of tokens x [R, hidden] -> ([R, hidden], number of near-tied tokens).

    Routes in float64; where the k-th and (k+1)-th logits are within rounding distance of each other the
    backend's rounded router may legitimately pick the other expert, so those tokens use
    `backend_indices` [R, k]. Every other token must get the same experts as in float64.
    """
    x = x.double()
    t = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + module.norm.eps) * module.norm.scale.double()
    logits = t @ module.gate.weight.double().T  # [R, E]
    if module.gate.bias is not None:
        logits = logits + module.gate.bias.double()
    k = module.top_k
    values, own = torch.topk(logits, min(k + 1, module.n_experts), dim=-1)
    chosen, ambiguous = own[:, :k], 0
    if k < module.n_experts:
        tie = ROUTING_TIE_EPS * torch.finfo(dtype).eps * logits.detach().abs().amax(-1)
        near = (values[:, k - 1] - values[:, k]).detach() <= tie  # [R]
        chosen = torch.where(near.unsqueeze(1), backend_indices.to(own.device), chosen)
        ambiguous = int(near.sum())
    weights = torch.softmax(logits.gather(1, chosen), dim=-1)  # [R, k]
    out = torch.zeros_like(x)
    for e in chosen.unique().tolist():
        rows, slots = (chosen == e).nonzero(as_tuple=True)
        w1, w2 = module.expert_weights(torch.float64, e)  # [2I, hidden], [hidden, I]
        h = t[rows] @ w1.T
        if module.mlp1_bias is not None:
            h = h + module.mlp1_bias[e].double()
        g = h[:, 0::2].clamp(max=module.swiglu_limit)
        lin = h[:, 1::2].clamp(min=-module.swiglu_limit, max=module.swiglu_limit)
        y = (g / (1 + torch.exp(-module.swiglu_alpha * g)) * (lin + 1)) @ w2.T
        if module.mlp2_bias is not None:
            y = y + module.mlp2_bias[e].double()
        out = out.index_add(0, rows, y * weights[rows, slots].unsqueeze(1))
    return out, ambiguous


FAMILY = Family(
    name="moe",
    description="gpt-oss's MoE MLP block (RMSNorm, top-k router, clamped-SwiGLU experts, residual) with gather, "
                "loop and grouped backends, balanced or Zipf-skewed routing, optional MXFP4 expert weights; or "
                "a dense SwiGLU block matching its active or total parameters",
    params_model=MoEParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
)

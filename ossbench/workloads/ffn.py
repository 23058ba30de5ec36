"""The ffn family: one dense feed-forward layer (GPT-2's GELU FFN or a dense clamped SwiGLU).

Modes (the layer has no state between tokens, so prefill and decode differ only in the token count):
- prefill: one forward pass over `tokens` tokens (default 4096);
- decode:  one forward pass over a decode batch of `tokens` tokens (default 1);
- train:   forward + backward (gradients of the input and every parameter), `tokens` default 4096.

`match: active|total` sizes the FFN after an MoE (`n_experts`, `top_k`, `expert_intermediate`, from the
preset): its intermediate width is chosen so that the FFN holds as many parameters as the MoE's router +
top_k experts (`active`) or router + all experts (`total`); the derived width replaces `intermediate` in
the recorded parameters.

Cost model (per call; docs/moe.md):
- FLOPs = matmuls, 2 per multiply-add (fc1: 2 T hidden fc1_width, fc2: 2 T intermediate hidden) plus the
  activation at ACTIVATION_FLOPS per output element. Bias adds and the norm are not counted. Train = 3x.
- bytes = weights once (the RMSNorm scale in fp32), input read, output written; train adds the weight
  gradients written and the output gradient read / input gradient written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationInfo, field_validator, \
    model_validator

from ..layers.config import ModelConfig
from ..layers.ffn import DenseFFN, matched_ffn_intermediate
from ..layers.ffn_spec import FFNSpec
from ..layers.params import fc1_width, ffn_params, norm_params
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload, activation_factor
from .building import init_norm_, randn, timed_call
from .checks import require_checked_dtype, token_check
from .fields import default_tokens, fits_memory, top_k_fits
from .spec_params import spec_of, spec_params_model

# Allowed max|out - ref| / max|ref| per dtype. An FFN rounds its input, fc1's output, the activation's
# intermediate results (about five elementwise ops, each rounded in 16-bit dtypes), and fc2's output: with
# the unit roundoff u (bf16 2^-9 ~ 2e-3, fp16 2^-11) a few u of independent roundings stay below 1e-2, and
# 2e-2 / 2e-3 leave a ~2x margin. fp32 accumulates 2880-long dot products: sqrt(2880) * 2^-24 ~ 3e-6 < 1e-5.
# float64: gpt-oss's RMSNorm computes in float32 whatever the input dtype, so a float64 block carries
# float32 roundings (~1e-7) from its norm.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# FLOPs per activation output element, counting the arithmetic in the formula (a transcendental = 1,
# clamps not counted): clamped SwiGLU  alpha*g, sigmoid (exp, add, divide), g*s, l+1, product = 7;
# GELU tanh  x^3 (2), *0.044715, +x, *sqrt(2/pi), tanh, +1, *x, *0.5 = 9.
ACTIVATION_FLOPS = {"swiglu": 7, "gelu_tanh": 9}
Mode = Literal["prefill", "decode", "train"]


class FFNAxes(BaseModel):
    """The run axes of an FFN case; FFNParams adds every FFNSpec field, then the MoE that `match` sizes it
    after."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    mode: Mode
    tokens: PositiveInt | None = Field(None, validate_default=True,
                                       description="tokens per call; null: 4096 (prefill, train) or 1 (decode)")

    _tokens = field_validator("tokens")(default_tokens)

    @property
    def spec(self) -> FFNSpec:
        return spec_of(self, FFNSpec)


def _match_needs_moe(cls: type, v: str, info: ValidationInfo) -> str:
    d = info.data
    if v != "none" and not (d.get("n_experts") and d.get("top_k") and d.get("expert_intermediate")):
        raise ValueError(f"match: {v} sizes the FFN after an MoE: it needs n_experts, top_k and "
                         f"expert_intermediate (this preset has no experts; set them)")
    return v


def _matched_width(self: Any) -> Any:
    if self.match != "none":
        self.intermediate = matched_ffn_intermediate(
            self.match, self.hidden, self.expert_intermediate, self.n_experts, self.top_k,
            activation=self.activation, bias=self.bias, router_bias=self.bias)
    return self


FFNParams = spec_params_model("FFNParams", FFNAxes, FFNSpec, after={
    "n_experts": (NonNegativeInt, Field(description="experts of the MoE that `match` sizes the FFN after")),
    "top_k": (NonNegativeInt, Field(description="experts per token of that MoE")),
    "expert_intermediate": (PositiveInt | None, Field(description="expert width of that MoE")),
    "match": (Literal["none", "active", "total"], Field(description="active/total: intermediate chosen so the "
                                                                    "FFN has the MoE's active/total parameters")),
}, validators={
    "_top_k": field_validator("top_k")(top_k_fits),
    "_match_needs_moe": field_validator("match")(classmethod(_match_needs_moe)),
    "_matched_width": model_validator(mode="after")(_matched_width),
    "_memory": model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: ffn_cost(
        p.mode, p.tokens, p.hidden, p.intermediate, p.activation, p.bias, p.norm, dtype_bytes).bytes)),
})
FFNParams.__doc__ = "One dense FFN case: the run axes, the FFNSpec fields, then the MoE `match` sizes it after."


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's own FFN (GPT-2: 4 x hidden GELU; gpt-oss: one expert's width, SwiGLU), no norm."""
    return dict(mode="prefill", tokens=None, **dataclasses.asdict(cfg.ffn_spec()), n_experts=cfg.n_experts,
                top_k=cfg.top_k, expert_intermediate=cfg.intermediate if cfg.n_experts else None, match="none")


VARIANTS: dict[str, dict[str, Any]] = {
    "preset": {},
    "gelu-tanh": {"activation": "gelu_tanh"},
    "swiglu": {"activation": "swiglu"},
    "same-active": {"activation": "swiglu", "match": "active"},  # dense with the MoE's active parameters
    "same-total": {"activation": "swiglu", "match": "total"},  # dense with all of the MoE's parameters
    "block": {"norm": "rmsnorm"},  # pre-norm + residual, like gpt-oss's MLPBlock
}


# --- cost model
def ffn_cost(mode: str, tokens: int, hidden: int, intermediate: int, activation: str, bias: bool, norm: str,
             dtype_bytes: int) -> Cost:
    matmul = 2.0 * tokens * (hidden * fc1_width(intermediate, activation) + intermediate * hidden)
    act = float(ACTIVATION_FLOPS[activation] * tokens * intermediate)
    n_params = ffn_params(hidden, intermediate, activation, bias) + norm_params(hidden, norm)
    fp32 = hidden if norm == "rmsnorm" else 0  # the RMSNorm scale is kept in fp32, as in gpt-oss
    weight_bytes = (n_params - fp32) * dtype_bytes + 4 * fp32
    activation_bytes = tokens * hidden * dtype_bytes
    scale = 3 if mode == "train" else 1
    nbytes = 2 * weight_bytes + 4 * activation_bytes if mode == "train" else weight_bytes + 2 * activation_bytes
    return Cost(flops=scale * (matmul + act), bytes=float(nbytes), tokens=tokens, extra={
        "matmul_flops": scale * matmul, "activation_flops": scale * act, "params": float(n_params),
        "intermediate": float(intermediate)})


def ffn_footprint(mode: str, tokens: int, hidden: int, intermediate: int, activation: str, bias: bool, norm: str,
                  dtype_bytes: int, family: str = "ffn") -> Footprint:
    """The case before it is built (ossbench/plan.py): weights, x and dy held; fc1's output, the activation
    and fc2's output per call (also the moe family's dense cases)."""
    cost = ffn_cost(mode, tokens, hidden, intermediate, activation, bias, norm, dtype_bytes)
    held = cost.extra["params"] * dtype_bytes + 2 * tokens * hidden * dtype_bytes
    act = tokens * (fc1_width(intermediate, activation) + intermediate + 2 * hidden) * dtype_bytes
    check = 8 * cost.extra["params"]  # the float64 reference casts the weights
    return Footprint(cost=cost, persistent_bytes=float(held),
                     activation_bytes=float(max(act * activation_factor(mode), check)), backends=())


def footprint(p: FFNParams, dtype_bytes: int) -> Footprint:
    return ffn_footprint(p.mode, p.tokens, p.hidden, p.intermediate, p.activation, p.bias, p.norm, dtype_bytes)


# --- building
def make_ffn(p: FFNParams, device: Any, dtype: torch.dtype, generator: torch.Generator, *,
             residual: bool | None = None) -> DenseFFN:
    """The FFN with random weights: std 1/sqrt(fan_in) (unit-scale outputs), biases std 0.1."""
    module = DenseFFN(p.spec, residual=p.norm != "none" if residual is None else residual, device=device,
                      dtype=dtype)
    init_dense_ffn_(module, generator)
    return module


@torch.no_grad()
def init_dense_ffn_(module: DenseFFN, generator: torch.Generator) -> None:
    for lin in (module.fc1, module.fc2):
        lin.weight.normal_(0.0, lin.in_features ** -0.5, generator=generator)
        if lin.bias is not None:
            lin.bias.normal_(0.0, 0.1, generator=generator)
    if module.norm is not None:
        init_norm_(module.norm, generator)


def build(params: FFNParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    require_checked_dtype("ffn", TOLERANCE, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    module = make_ffn(p, device, dtype, generator)
    workload = dense_workload(module, p.mode, p.tokens, device, dtype, generator)
    workload.info["intermediate"] = p.intermediate
    return workload


def dense_workload(module: DenseFFN, mode: str, tokens: int, device: Any, dtype: torch.dtype,
                   generator: torch.Generator) -> Workload:
    """Inputs, timed call, cost and check for a built DenseFFN (shared with the moe family's dense cases)."""
    training = mode == "train"
    module.requires_grad_(training)
    x = randn((tokens, module.hidden), generator, device, dtype)  # [T, hidden]
    dy = randn((tokens, module.hidden), generator, device, dtype) if training else None
    fn = timed_call(lambda: module(x), dy, [x], [x, *module.parameters()])
    norm = "none" if module.norm is None else ("layernorm" if isinstance(module.norm, torch.nn.LayerNorm)
                                              else "rmsnorm")
    cost = ffn_cost(mode, tokens, module.hidden, module.intermediate, module.activation,
                    module.fc1.bias is not None, norm, torch.finfo(dtype).bits // 8)
    held = sum(t.numel() * t.element_size() for t in module.parameters()) + 2 * x.numel() * x.element_size()
    return Workload(fn=fn, cost=cost, check=lambda: check_ffn(module, x, dy), persistent_bytes=held,
                    inputs={"x": x, "dy": dy} if training else {"x": x})


# --- numerics check
def reference_ffn(module: DenseFFN, x: torch.Tensor) -> torch.Tensor:
    """float64 FFN update (no residual) of x [R, hidden], written from the formulas."""
    x = x.double()
    if isinstance(module.norm, torch.nn.LayerNorm):
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + module.norm.eps) * module.norm.weight.double() + module.norm.bias.double()
    elif module.norm is not None:
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + module.norm.eps) * module.norm.scale.double()
    h = x @ module.fc1.weight.double().T
    if module.fc1.bias is not None:
        h = h + module.fc1.bias.double()
    if module.activation == "swiglu":
        g = h[:, 0::2].clamp(max=module.swiglu_limit)
        lin = h[:, 1::2].clamp(min=-module.swiglu_limit, max=module.swiglu_limit)
        a = g / (1 + torch.exp(-module.swiglu_alpha * g)) * (lin + 1)
    else:
        a = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3)))
    y = a @ module.fc2.weight.double().T
    return y + module.fc2.bias.double() if module.fc2.bias is not None else y


def check_ffn(module: DenseFFN, x: torch.Tensor, dy: torch.Tensor | None) -> Check:
    """The update (without the residual, which would hide errors behind x) against float64 on a set of
    tokens; in train mode with few tokens also the input gradient."""
    training = dy is not None
    xin = x.detach().requires_grad_(training)
    with torch.set_grad_enabled(training):
        got = module.update(xin)
    return token_check(got, xin, dy, lambda t: reference_ffn(module, t), tolerance=TOLERANCE,
                       described="float64 FFN formula", grad_only_when_all_rows=True)


FAMILY = Family(
    name="ffn",
    description="one dense FFN (GPT-2 GELU-tanh or gpt-oss clamped SwiGLU), optionally sized to an MoE's "
                "active or total parameters, in prefill, decode or train",
    params_model=FFNParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
)

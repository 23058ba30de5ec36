"""The norm family: LayerNorm (GPT-2) vs RMSNorm (gpt-oss) over a [tokens, hidden] tensor.

Backends (layers/norm.py): "eager" (the formula op by op, as gpt-oss's reference RMSNorm runs), "compile"
(the same formula through torch.compile), "fused" (torch's F.layer_norm / F.rms_norm). RMSNorm's scale is
fp32 (gpt-oss) except with "fused", whose kernel needs it in the input's dtype; LayerNorm's weight and bias
are in the case's dtype (GPT-2). Statistics are computed in float32 (float64 for float64 inputs).

Modes (no state between tokens: prefill and decode differ in the token count only):
- prefill: `tokens` default 4096; decode: default 1;
- train:   forward + backward (gradients of the input and the norm's parameters), `tokens` default 4096.

Cost model (per call; docs/layers.md). FlopCounterMode counts no norm FLOPs, so these counts are checked
against hand computation in tests/test_norm.py.
- FLOPs per element of x, each op of the formula once (per-row ops, the mean's division, + eps and the
  rsqrt, are left out: a few per row against thousands per row):
  RMSNorm forward x^2, sum, * rstd, * scale = 4; LayerNorm forward sum, - mean, square, sum, * rstd,
  * weight, + bias = 7. Backward (dx and the parameter gradients): RMSNorm g = dy scale, sum(g x) (2),
  dx = rstd g - x c (3), dscale = sum(dy x rstd) (3) = 9; LayerNorm x_hat (2), g = dy w (1), sum g (1),
  sum(g x_hat) (2), dx = rstd (g - mean g - x_hat mean(g x_hat)) (4), dw (2), db (1) = 13.
- bytes: x read, y written, parameters read; train adds x read again, dy read, dx written, parameters read
  again and their gradients written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator, model_validator

from ..backends import unsupported_reason
from ..errors import SkipCase
from ..layers.config import ModelConfig
from ..layers.norm import Norm, fused_rms_norm_available
from ..layers.norm_spec import NormSpec
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload, activation_factor
from .building import init_norm_, randn, timed_call
from .checks import require_checked_dtype, token_check
from .fields import backend_of, default_tokens, fits_memory
from .spec_params import spec_of, spec_params_model

# Allowed max|out - ref| / max|ref|. The statistics are float32 for every dtype below float64, so the error
# is the final rounding to the output dtype plus float32 sums over `hidden` values: bf16 2^-9 ~ 2e-3 per
# rounding (2e-2 leaves room for the fused RMSNorm's bf16 scale, one more rounding), fp16 2^-11;
# float32 1e-5 covers sqrt(hidden) * 2^-24 ~ 3e-6 at hidden 16k.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
FORWARD_FLOPS = {"rmsnorm": 4, "layernorm": 7}
BACKWARD_FLOPS = {"rmsnorm": 9, "layernorm": 13}
INPUT_MEAN = 0.5  # a non-zero mean, so LayerNorm's centring has work to do and RMSNorm differs from it


class NormAxes(BaseModel):
    """The run axes of a norm case; NormParams adds every NormSpec field after them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode", "train"]
    backend: backend_of("norm") = Field(
        description="eager: the formula op by op; compile: torch.compile of it; fused: F.layer_norm / F.rms_norm")
    tokens: PositiveInt | None = Field(None, validate_default=True,
                                       description="tokens per call; null: 4096 (prefill, train) or 1 (decode)")

    _tokens = field_validator("tokens")(default_tokens)

    @property
    def spec(self) -> NormSpec:
        return spec_of(self, NormSpec)


def _fused_available(cls: type, v: str, info: ValidationInfo) -> str:
    if v == "rmsnorm" and info.data.get("backend") == "fused" and not fused_rms_norm_available():
        raise ValueError(f"backend fused needs F.rms_norm, which torch {torch.__version__} does not have "
                         f"(added in 2.4)")
    return v


NormParams = spec_params_model("NormParams", NormAxes, NormSpec, validators={
    "_fused_available": field_validator("norm")(classmethod(_fused_available)),
    # parameters counted in fp32, the widest they are stored in
    "_memory": model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: norm_cost(
        p.mode, p.norm, p.tokens, p.hidden, dtype_bytes, 4 * p.hidden * (1 if p.norm == "rmsnorm" else 2)).bytes)),
})
NormParams.__doc__ = "One norm case: the run axes, then the NormSpec fields (ossbench/layers/norm_spec.py)."


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's own norm at its hidden size, eager (as the reference implementations run it)."""
    return dict(mode="prefill", backend="eager", tokens=None, **dataclasses.asdict(cfg.norm_spec()))


VARIANTS: dict[str, dict[str, Any]] = {
    "rmsnorm": {"norm": "rmsnorm"},
    "layernorm": {"norm": "layernorm"},
    "compiled": {"backend": "compile"},
    "fused": {"backend": "fused"},
}


# --- cost model
def norm_cost(mode: str, norm: str, tokens: int, hidden: int, dtype_bytes: int, param_bytes: int) -> Cost:
    """`param_bytes`: the norm's parameters as stored (RMSNorm's scale fp32 unless fused)."""
    elems = tokens * hidden
    forward = float(FORWARD_FLOPS[norm] * elems)
    if mode == "train":
        backward = float(BACKWARD_FLOPS[norm] * elems)
        nbytes = 5 * elems * dtype_bytes + 3 * param_bytes  # x, y | x, dy, dx; params read twice, grads written
    else:
        backward, nbytes = 0.0, 2 * elems * dtype_bytes + param_bytes
    return Cost(flops=forward + backward, bytes=float(nbytes), tokens=tokens, extra={
        "forward_flops": forward, "backward_flops": backward,
        "params": float(hidden * (1 if norm == "rmsnorm" else 2))})


def footprint(p: NormParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py): x (and dy) held; the output and an fp32 copy per call."""
    param_bytes = 4 * p.hidden * (1 if p.norm == "rmsnorm" else 2)  # at most fp32 (the memory rule's figure)
    cost = norm_cost(p.mode, p.norm, p.tokens, p.hidden, dtype_bytes, param_bytes)
    elems = p.tokens * p.hidden
    held = param_bytes + elems * dtype_bytes * (2 if p.mode == "train" else 1)
    act = elems * (dtype_bytes + 4) * activation_factor(p.mode)
    return Footprint(cost=cost, persistent_bytes=float(held), activation_bytes=float(act),
                     backends=(("norm", p.backend),))


# --- building
def make_norm(p: NormParams, device: Any, dtype: torch.dtype, generator: torch.Generator) -> Norm:
    """The norm with parameters near their trained values (scale ~1, bias ~0), never exactly 1 and 0."""
    module = Norm(p.spec, backend=p.backend, device=device, dtype=dtype)
    init_norm_(module, generator)
    return module


def build(params: NormParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    if reason := unsupported_reason("norm", p.backend, device, dtype, train=p.mode == "train"):
        raise SkipCase(reason)  # the backend's own reason (ossbench.backends)
    require_checked_dtype("norm", TOLERANCE, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    module = make_norm(p, device, dtype, generator)
    training = p.mode == "train"
    module.requires_grad_(training)
    x = (INPUT_MEAN + randn((p.tokens, p.hidden), generator, device, torch.float32)).to(dtype)  # [T, hidden]
    dy = randn((p.tokens, p.hidden), generator, device, dtype) if training else None
    fn = timed_call(lambda: module(x), dy, [x], [x, *module.parameters()])
    param_bytes = sum(t.numel() * t.element_size() for t in module.parameters())
    held = param_bytes + x.numel() * x.element_size() * (2 if training else 1)
    cost = norm_cost(p.mode, p.norm, p.tokens, p.hidden, torch.finfo(dtype).bits // 8, param_bytes)
    return Workload(fn=fn, cost=cost, check=lambda: check_norm(module, x, dy), persistent_bytes=held,
                    inputs={"x": x, "dy": dy} if training else {"x": x})


# --- numerics check
def reference_norm(module: Norm, x: torch.Tensor) -> torch.Tensor:
    """float64 textbook formula on x [R, hidden]."""
    x = x.double()
    if module.kind == "rmsnorm":
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + module.eps) * module.scale.double()
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight.double() + module.bias.double()


def check_norm(module: Norm, x: torch.Tensor, dy: torch.Tensor | None) -> Check:
    """The backend's output on every token, compared on a set of tokens with the float64 formula; in train
    mode the input gradient on those tokens too (each token's dx depends on its own row only)."""
    got = module(x)  # in the timed call's grad mode: a compiled backend reuses its kernels
    return token_check(got, x, dy, lambda t: reference_norm(module, t), tolerance=TOLERANCE,
                       described="float64 formula")


FAMILY = Family(
    name="norm",
    description="LayerNorm (GPT-2: weight and bias) or RMSNorm (gpt-oss: fp32 scale) over [tokens, hidden], "
                "eager, torch.compile'd or torch's fused op, in prefill, decode or train",
    params_model=NormParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
)

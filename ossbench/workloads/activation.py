"""The activation family: one activation function over a [tokens, width] tensor, eager or torch.compile'd.

`width` is the output width (an FFN's intermediate size); SwiGLU reads [tokens, 2 x width] (gate and linear
columns interleaved, as gpt-oss's mlp1 writes them) and writes [tokens, width].

Modes (no state between tokens: prefill and decode differ in the token count only):
- prefill: `tokens` default 4096; decode: default 1;
- train:   forward + backward (the input gradient), `tokens` default 4096.

Cost model (per call; docs/layers.md). torch's FlopCounterMode counts matmuls only, so these counts are
checked against hand computation in tests/test_activation.py, not against the counter.
- FLOPs per output element, counting each arithmetic op of the written-out formula once (a transcendental,
  exp/erf/tanh, = 1; a sigmoid = exp, add, divide = 3; clamps and the constant negation not counted):
  FORWARD_FLOPS, and BACKWARD_FLOPS for the derivative times the incoming gradient (see the table's
  comments). Train = forward + backward.
- bytes: the input read and the output written; train adds the input read again (saved for backward),
  the output gradient read and the input gradient written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from ..backends import unsupported_reason
from ..errors import SkipCase
from ..layers.activation import Activation, input_width
from ..layers.activation_spec import ActivationSpec
from ..layers.config import ModelConfig
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload, activation_factor
from .building import randn, timed_call
from .checks import require_checked_dtype, token_check
from .ffn import ACTIVATION_FLOPS
from .fields import backend_of, default_tokens, fits_memory
from .spec_params import spec_of, spec_params_model

INPUT_STD = 3.0  # inputs spread over the activations' curved region and past SwiGLU's clamps at +-7
# Allowed max|out - ref| / max|ref|. An elementwise function rounds its result once (torch's ops compute
# 16-bit inputs in float32) or, op by op in eager SwiGLU, about four times: bf16 4 x 2^-9 ~ 8e-3 < 2e-2,
# fp16 4 x 2^-11 ~ 2e-3. float32 1e-5 leaves room for vectorised exp/erf/tanh approximations (a few ulp).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# Forward FLOPs per output element. gelu_tanh 9 and swiglu 7 are the ffn family's counts; gelu_erf:
# x/sqrt2, erf, +1, *x, *0.5 = 5; silu: sigmoid (3), *x = 4.
FORWARD_FLOPS = {**ACTIVATION_FLOPS, "gelu_erf": 5, "silu": 4}
# Backward FLOPs per output element, dy times the derivative, written out:
# silu      s = sigmoid(x) (3); s (1 + x (1 - s)): 4; * dy: 1                                       = 8
# gelu_erf  Phi = 0.5 (1 + erf(x/sqrt2)) (4); phi = exp(-x^2/2)/sqrt(2 pi) (4); Phi + x phi (2); *dy (1) = 11
# gelu_tanh u = c (x + a x^3) (5); t = tanh u (1); 0.5 (1 + t) (2); 1 - t^2 (2); c (1 + 3a x^2) (3);
#           0.5 x (1 - t^2) u' (3); sum (1); * dy (1)                                               = 18
# swiglu    s = sigmoid(alpha g) (4); g s (1); dl = dy g s (1); dg = dy (l + 1) (s + alpha g s (1 - s)) (7) = 13
BACKWARD_FLOPS = {"silu": 8, "gelu_erf": 11, "gelu_tanh": 18, "swiglu": 13}
Mode = Literal["prefill", "decode", "train"]


class ActivationAxes(BaseModel):
    """The run axes of an activation case; ActivationParams adds every ActivationSpec field after them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Mode
    backend: backend_of("activation") = Field(description="torch's op (or gpt-oss's expression) as is, or "
                                                             "through torch.compile")
    tokens: PositiveInt | None = Field(None, validate_default=True,
                                       description="tokens per call; null: 4096 (prefill, train) or 1 (decode)")
    width: PositiveInt = Field(description="output width (the FFN's intermediate size); swiglu reads twice it")

    _tokens = field_validator("tokens")(default_tokens)

    @property
    def spec(self) -> ActivationSpec:
        return spec_of(self, ActivationSpec)


ActivationParams = spec_params_model("ActivationParams", ActivationAxes, ActivationSpec, validators={
    "_memory": model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: activation_cost(
        p.mode, p.activation, p.tokens, p.width, dtype_bytes).bytes)),
})
ActivationParams.__doc__ = ("One activation case: the run axes, then the ActivationSpec fields "
                            "(ossbench/layers/activation_spec.py).")


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's own activation at its FFN width (gpt-oss: SwiGLU, 2880; GPT-2: GELU-tanh, 4 x hidden)."""
    return dict(mode="prefill", backend="eager", tokens=None, width=cfg.intermediate,
                **dataclasses.asdict(cfg.activation_spec()))


VARIANTS: dict[str, dict[str, Any]] = {
    "gelu-erf": {"activation": "gelu_erf"},
    "gelu-tanh": {"activation": "gelu_tanh"},
    "silu": {"activation": "silu"},
    "swiglu": {"activation": "swiglu"},
    "compiled": {"backend": "compile"},
}


# --- cost model
def activation_cost(mode: str, activation: str, tokens: int, width: int, dtype_bytes: int) -> Cost:
    out_elems = tokens * width
    in_elems = tokens * input_width(activation, width)
    forward = float(FORWARD_FLOPS[activation] * out_elems)
    if mode == "train":
        backward = float(BACKWARD_FLOPS[activation] * out_elems)
        nbytes = (3 * in_elems + 2 * out_elems) * dtype_bytes  # x, y | x again, dy, dx
    else:
        backward, nbytes = 0.0, (in_elems + out_elems) * dtype_bytes
    return Cost(flops=forward + backward, bytes=float(nbytes), tokens=tokens, extra={
        "forward_flops": forward, "backward_flops": backward, "input_width": float(input_width(activation, width)),
        "params": 0.0})


def footprint(p: ActivationParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py): x (and its gradient) held; the output and the
    formula's float32 intermediates per call."""
    cost = activation_cost(p.mode, p.activation, p.tokens, p.width, dtype_bytes)
    in_elems, out_elems = p.tokens * input_width(p.activation, p.width), p.tokens * p.width
    held = in_elems * dtype_bytes * (2 if p.mode == "train" else 1)
    act = (out_elems * dtype_bytes + 2 * in_elems * 4) * activation_factor(p.mode)
    return Footprint(cost=cost, persistent_bytes=float(held), activation_bytes=float(act),
                     backends=(("activation", p.backend),))


# --- building
def build(params: ActivationParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    if reason := unsupported_reason("activation", p.backend, device, dtype, train=p.mode == "train"):
        raise SkipCase(reason)  # the backend's own reason (ossbench.backends)
    require_checked_dtype("activation", TOLERANCE, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    module = Activation(p.spec, p.backend)
    training = p.mode == "train"
    x = (INPUT_STD * randn((p.tokens, input_width(p.activation, p.width)), generator, device, torch.float32)
         ).to(dtype)  # [T, in_width]
    dy = randn((p.tokens, p.width), generator, device, dtype) if training else None  # [T, width]
    fn = timed_call(lambda: module(x), dy, [x], [x])
    held = x.numel() * x.element_size() * (2 if training else 1)  # the input, and its gradient in train
    return Workload(fn=fn, cost=activation_cost(p.mode, p.activation, p.tokens, p.width, torch.finfo(dtype).bits // 8),
                    check=lambda: check_activation(module, p, x, dy), persistent_bytes=held,
                    inputs={"x": x, "dy": dy} if training else {"x": x})


# --- numerics check
def reference_activation(p: ActivationParams, x: torch.Tensor) -> torch.Tensor:
    """float64 textbook formula of the activation on x [R, in_width] -> [R, width]."""
    x = x.double()
    if p.activation == "gelu_erf":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if p.activation == "gelu_tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if p.activation == "silu":
        return x / (1 + torch.exp(-x))
    g = x[:, 0::2].clamp(max=p.swiglu_limit)
    lin = x[:, 1::2].clamp(min=-p.swiglu_limit, max=p.swiglu_limit)
    return g / (1 + torch.exp(-p.swiglu_alpha * g)) * (lin + 1)


def check_activation(module: Activation, p: ActivationParams, x: torch.Tensor, dy: torch.Tensor | None) -> Check:
    """The backend's output on every token, compared on a set of tokens with the float64 formula; in train
    mode the input gradient too (against float64 autograd of the formula)."""
    got = module(x)  # in the timed call's grad mode: a compiled backend reuses its kernels
    return token_check(got, x, dy, lambda t: reference_activation(p, t), tolerance=TOLERANCE,
                       described="float64 formula")


FAMILY = Family(
    name="activation",
    description="one activation (GELU erf / GELU tanh / SiLU / gpt-oss clamped SwiGLU) over [tokens, width], "
                "eager or torch.compile'd, in prefill, decode or train",
    params_model=ActivationParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
)

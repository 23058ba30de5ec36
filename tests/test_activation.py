"""Activations: every function and backend against its textbook formula, and the activation family's cost
model checked by hand (torch's FlopCounterMode counts matmuls only: it sees none of this work)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.layers.activation import Activation, clamped_swiglu, gelu_erf, gelu_tanh, input_width, silu
from ossbench.layers.activation_spec import ActivationSpec
from ossbench.layers.config import get_preset
from ossbench.workloads import get_family
from ossbench.workloads.activation import ActivationParams, activation_cost

FAMILY = get_family("activation")


def textbook(name: str, row: list[float]) -> list[float]:
    """The formulas with Python's math module, one value at a time."""
    if name == "gelu_erf":
        return [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in row]
    if name == "gelu_tanh":
        return [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in row]
    if name == "silu":
        return [v / (1 + math.exp(-v)) for v in row]
    out = []
    for j in range(len(row) // 2):  # interleaved: gate at even, linear at odd columns
        g, lin = min(row[2 * j], 7.0), max(min(row[2 * j + 1], 7.0), -7.0)
        out.append(g / (1 + math.exp(-1.702 * g)) * (lin + 1))
    return out


def reference(name: str, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([textbook(name, row) for row in x.double().tolist()], dtype=torch.float64)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def inputs(name: str, tokens: int = 6, width: int = 40, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (4 * torch.randn(tokens, input_width(name, width), generator=g, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("name,fn", [("gelu_erf", gelu_erf), ("gelu_tanh", gelu_tanh), ("silu", silu),
                                     ("swiglu", clamped_swiglu)])
def test_functions_are_the_textbook_formulas_in_float64(name, fn):
    x = inputs(name)  # spread 4: past SwiGLU's clamps at +-7 on both sides
    assert (x.abs() > 7).any()
    assert rel_err(fn(x), reference(name, x)) < 1e-13


# One compiled module per function: torch.compile on CPU builds C++ with gcc, about two seconds each.
@pytest.mark.parametrize("backend", ["eager", "compile"])
@pytest.mark.parametrize("name", ["gelu_erf", "gelu_tanh", "silu", "swiglu"])
def test_every_backend_matches_the_formula_in_float32(name, backend):
    x = inputs(name, dtype=torch.float32)
    got = Activation(ActivationSpec(name), backend)(x)
    assert got.dtype == torch.float32 and got.shape == (6, 40)
    assert rel_err(got, reference(name, x)) < 1e-5


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_swiglu_family_case_checks_forward_and_gradient(backend):
    p = ActivationParams(mode="train", backend=backend, activation="swiglu", tokens=16, width=24,
                         swiglu_alpha=1.702, swiglu_limit=7.0)
    w = FAMILY.build(p, "cpu", torch.float32)
    (dx,) = w.fn()
    assert dx.shape == (16, 48)
    check = w.check()
    assert check.ok and check.max_rel_err < 1e-5 and "gradient" in check.reference


@pytest.mark.parametrize("name", ["gelu_erf", "gelu_tanh", "silu", "swiglu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_family_check_passes_in_other_dtypes(name, dtype):
    p = FAMILY.params_model.model_validate({**FAMILY.defaults(get_preset("gpt-oss-20b")), "activation": name,
                                            "tokens": 100, "width": 48})
    check = FAMILY.build(p, "cpu", dtype).check()
    assert check.ok, check
    assert check.max_rel_err < (1e-14 if dtype == torch.float64 else 2e-2)


def test_cost_by_hand():
    # SwiGLU, 3 tokens of width 5: reads [3, 10], writes [3, 5]; 7 FLOPs per output element forward, 13 backward
    c = activation_cost("prefill", "swiglu", 3, 5, 4)
    assert (c.flops, c.bytes, c.tokens) == (7 * 15, (30 + 15) * 4, 3)
    c = activation_cost("train", "swiglu", 3, 5, 2)
    assert c.flops == (7 + 13) * 15
    assert c.bytes == (3 * 30 + 2 * 15) * 2  # x, y | x again, dy, dx
    # the unary ones read what they write
    for name, fwd, bwd in (("gelu_erf", 5, 11), ("gelu_tanh", 9, 18), ("silu", 4, 8)):
        c = activation_cost("decode", name, 2, 8, 2)
        assert (c.flops, c.bytes) == (fwd * 16, 2 * 16 * 2)
        assert activation_cost("train", name, 2, 8, 2).flops == (fwd + bwd) * 16


def test_flop_counter_sees_no_activation_work():
    # Why the cost model is checked by hand: torch's counter counts matmul-like ops only.
    p = ActivationParams(mode="prefill", backend="eager", activation="gelu_tanh", tokens=8, width=16,
                         swiglu_alpha=1.702, swiglu_limit=7.0)
    w = FAMILY.build(p, "cpu", torch.float32)
    with FlopCounterMode(display=False) as counter:
        w.fn()
    assert counter.get_total_flops() == 0 and w.cost.flops == 9 * 8 * 16


def test_defaults_and_validation():
    gpt2 = FAMILY.defaults(get_preset("gpt2-small"))
    assert (gpt2["activation"], gpt2["width"]) == ("gelu_tanh", 3072)
    oss = FAMILY.params_model.model_validate(FAMILY.defaults(get_preset("gpt-oss-20b")))
    assert (oss.activation, oss.width, oss.tokens) == ("swiglu", 2880, 4096)
    assert FAMILY.params_model.model_validate({**FAMILY.defaults(get_preset("gpt-oss-20b")),
                                               "mode": "decode"}).tokens == 1
    with pytest.raises(ValidationError, match="activation"):
        FAMILY.params_model.model_validate({**gpt2, "activation": "relu"})
    with pytest.raises(ValidationError, match="extra"):
        FAMILY.params_model.model_validate({**gpt2, "compiled": True})

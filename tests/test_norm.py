"""Norms: LayerNorm and RMSNorm against their textbook formulas for every backend, gpt-oss's RMSNorm
precision rules, and the norm family's cost model checked by hand (FlopCounterMode sees no norm work)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.layers.config import get_preset
from ossbench.layers.norm import Norm, RMSNorm, layer_norm, rms_norm
from ossbench.layers.norm_spec import NormSpec
from ossbench.workloads import get_family
from ossbench.workloads.norm import NormParams, norm_cost

FAMILY = get_family("norm")
EPS = 1e-5


def textbook(kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Row by row with Python floats."""
    out = []
    for row in x.double().tolist():
        n = len(row)
        if kind == "rmsnorm":
            r = math.sqrt(sum(v * v for v in row) / n + EPS)
            out.append([v / r * s for v, s in zip(row, w.tolist())])
        else:
            mean = sum(row) / n
            sd = math.sqrt(sum((v - mean) ** 2 for v in row) / n + EPS)
            out.append([(v - mean) / sd * s + c for v, s, c in zip(row, w.tolist(), b.tolist())])
    return torch.tensor(out, dtype=torch.float64)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def randomise(module: Norm) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in module.named_parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.3 + (0.0 if name == "bias" else 1.0))


def sample(dtype: torch.dtype, tokens: int = 5, hidden: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return (0.7 + 2 * torch.randn(tokens, hidden, generator=g, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("backend", ["eager", "compile", "fused"])
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_every_backend_matches_the_formula_in_float32(kind, backend):
    module = Norm(NormSpec(kind, 48, EPS), backend=backend, dtype=torch.float32)
    randomise(module)
    x = sample(torch.float32)
    w = module.scale if kind == "rmsnorm" else module.weight
    want = textbook(kind, x, w.detach(), None if kind == "rmsnorm" else module.bias.detach())
    got = module(x)
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_formulas_are_exact_in_float64(kind):
    x = sample(torch.float64)
    w = torch.linspace(0.5, 1.5, 48, dtype=torch.float64)
    b = torch.linspace(-0.2, 0.2, 48, dtype=torch.float64)
    got = rms_norm(x, w, EPS) if kind == "rmsnorm" else layer_norm(x, w, b, EPS)
    assert rel_err(got, textbook(kind, x, w, b)) < 1e-14


def test_gpt_oss_rmsnorm_precision():
    norm = RMSNorm(48)
    assert norm.scale.dtype == torch.float32 and list(norm.state_dict()) == ["scale"]
    with torch.no_grad():
        norm.scale.copy_(torch.linspace(0.5, 1.5, 48))
    x = sample(torch.bfloat16)
    # bf16 in: statistics and scale in float32, one rounding at the end
    assert torch.equal(norm(x), norm(x.float()).to(torch.bfloat16))
    # float64 in: float64 throughout (the fp32 scale is promoted), not float32 in disguise
    x64 = sample(torch.float64)
    assert rel_err(norm(x64), textbook("rmsnorm", x64, norm.scale.detach(), None)) < 1e-14


def test_fused_rmsnorm_keeps_its_scale_in_the_input_dtype():
    # torch's fused kernel needs the weight in the input's dtype (fp32 scale + bf16 input falls back to
    # the op-by-op path), so the fused backend stores it so; the others keep gpt-oss's fp32 scale.
    assert Norm(NormSpec("rmsnorm", 8), backend="fused", dtype=torch.bfloat16).scale.dtype == torch.bfloat16
    assert Norm(NormSpec("rmsnorm", 8), backend="eager", dtype=torch.bfloat16).scale.dtype == torch.float32
    assert Norm(NormSpec("layernorm", 8), backend="eager", dtype=torch.bfloat16).weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("backend", ["eager", "fused"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_family_check_passes(kind, backend, dtype):
    p = NormParams(mode="prefill", backend=backend, norm=kind, tokens=100, hidden=64, norm_eps=EPS)
    check = FAMILY.build(p, "cpu", dtype).check()
    assert check.ok, check


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_train_mode_checks_the_input_gradient(backend):
    p = NormParams(mode="train", backend=backend, norm="rmsnorm", tokens=20, hidden=32, norm_eps=EPS)
    w = FAMILY.build(p, "cpu", torch.float32)
    dx, dscale = w.fn()
    assert dx.shape == (20, 32) and dscale.shape == (32,)
    check = w.check()
    assert check.ok and "gradient" in check.reference


def test_cost_by_hand():
    # 3 tokens x 4 hidden = 12 elements, bf16 activations
    rms = norm_cost("prefill", "rmsnorm", 3, 4, 2, param_bytes=4 * 4)  # fp32 scale
    assert (rms.flops, rms.bytes) == (4 * 12, 2 * 12 * 2 + 16)
    ln = norm_cost("prefill", "layernorm", 3, 4, 2, param_bytes=2 * 4 * 2)  # bf16 weight + bias
    assert (ln.flops, ln.bytes) == (7 * 12, 2 * 12 * 2 + 16)
    train = norm_cost("train", "layernorm", 3, 4, 2, param_bytes=16)
    assert train.flops == (7 + 13) * 12
    assert train.bytes == 5 * 12 * 2 + 3 * 16  # x, y | x, dy, dx; parameters read twice, gradients written
    assert norm_cost("train", "rmsnorm", 3, 4, 2, 16).flops == (4 + 9) * 12
    # the workload passes the parameters' real storage
    w = FAMILY.build(NormParams(mode="decode", backend="eager", norm="rmsnorm", tokens=2, hidden=8,
                                norm_eps=EPS), "cpu", torch.bfloat16)
    assert w.cost.bytes == 2 * 16 * 2 + 8 * 4


def test_flop_counter_sees_no_norm_work():
    w = FAMILY.build(NormParams(mode="prefill", backend="fused", norm="layernorm", tokens=8, hidden=16,
                                norm_eps=EPS), "cpu", torch.float32)
    with FlopCounterMode(display=False) as counter:
        w.fn()
    assert counter.get_total_flops() == 0 and w.cost.flops == 7 * 8 * 16


def test_defaults_and_validation():
    assert FAMILY.defaults(get_preset("gpt2-small"))["norm"] == "layernorm"
    p = FAMILY.params_model.model_validate(FAMILY.defaults(get_preset("gpt-oss-20b")))
    assert (p.norm, p.hidden, p.tokens, p.backend) == ("rmsnorm", 2880, 4096, "eager")
    with pytest.raises(ValidationError, match="backend"):
        FAMILY.params_model.model_validate({**FAMILY.defaults(get_preset("gpt-oss-20b")), "backend": "triton"})

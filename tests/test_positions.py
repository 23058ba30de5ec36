"""Positions: learned absolute positions and RoPE/YaRN application against textbook formulas, and the
positions family's cost model checked by hand (FlopCounterMode sees no elementwise work)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from ossbench.layers.config import get_preset
from ossbench.layers.positions import LearnedPositions, RotaryPositions
from ossbench.layers.rope import RopeSpec, inv_freq_and_concentration
from ossbench.workloads import get_family
from ossbench.workloads.positions import positions_cost

FAMILY = get_family("positions")
YARN = RopeSpec(theta=150000.0, yarn_factor=32.0)  # gpt-oss's
SMALL = dict(batch=2, seq_len=12, kv_len=300, hidden=16, max_position=512, n_heads=4, n_kv_heads=2, head_dim=16)


def params(**over):
    return FAMILY.params_model.model_validate({**FAMILY.defaults(get_preset("gpt-oss-20b")), **SMALL, **over})


def rotated_textbook(x: torch.Tensor, positions: list[int], spec: RopeSpec) -> torch.Tensor:
    """Rotate-half as complex multiplication: pair i = x[i] + 1j x[i + D/2], times c e^(1j pos w_i)."""
    D = x.shape[-1]
    w, c = inv_freq_and_concentration(D, spec)  # float64 frequencies (checked against YaRN in rope's tests)
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())  # [..., S, D/2]
    angle = torch.tensor(positions, dtype=torch.float64)[:, None] * w[None, :]
    z = z * c * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def test_learned_positions_add_the_rows_of_the_positions():
    layer = LearnedPositions(64, 8, dtype=torch.float64)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert torch.equal(layer(x), x + layer.weight[:5])
    assert torch.equal(layer(x[:, :1], start_pos=40), x[:, :1] + layer.weight[40])
    with pytest.raises(ValueError, match="exceed"):
        layer(x, start_pos=60)


@pytest.mark.parametrize("spec", [RopeSpec(theta=10000.0), YARN], ids=["rope", "yarn"])
@pytest.mark.parametrize("table", ["cached", "per_call"])
def test_rotation_matches_complex_multiplication(spec, table):
    rot = RotaryPositions(16, spec, table=table)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 6, 16, generator=g, dtype=torch.float64)
    for start in (0, 1000):  # float64 in: both tables form float64 angles
        got_q, got_k = rot(q, k, start)
        positions = list(range(start, start + 6))
        assert rel_err(got_q, rotated_textbook(q, positions, spec)) < 1e-12
        assert rel_err(got_k, rotated_textbook(k, positions, spec)) < 1e-12
    # float32 near position 0, where float32 angles are still exact to a few ulp
    got_q, _ = rot(q.float(), k.float(), 0)
    assert rel_err(got_q, rotated_textbook(q.float(), list(range(6)), spec)) < 1e-5


def test_per_call_float32_angles_drift_at_long_positions_and_the_check_knows_it():
    # gpt-oss's reference forms position * frequency in float32: at position 131071 the fastest pair's angle
    # is off by up to half a float32 ulp of 131071 (~4e-3 rad). The cached table forms angles in float64.
    q, k = torch.randn(1, 2, 1, 64), torch.randn(1, 1, 1, 64)
    want = rotated_textbook(q, [131071], YARN)
    per_call, _ = RotaryPositions(64, YARN, table="per_call")(q, k, 131071)
    cached, _ = RotaryPositions(64, YARN, table="cached")(q, k, 131071)
    assert rel_err(cached, want) < 1e-6
    assert rel_err(per_call, want) > 1e-4
    # float64 inputs get float64 angles
    per_call64, _ = RotaryPositions(64, YARN, table="per_call")(q.double(), k.double(), 131071)
    assert rel_err(per_call64, want) < 1e-12
    # the family's check compares per_call with float64 arithmetic on its own float32 angles
    w = FAMILY.build(params(mode="decode", positions="yarn", table="per_call", kv_len=131071, max_position=131072,
                            head_dim=64), "cpu", torch.float32)
    assert w.check().ok


@pytest.mark.parametrize("positions,table", [("learned", "cached"), ("rope", "cached"), ("yarn", "cached"),
                                             ("yarn", "per_call")])
@pytest.mark.parametrize("mode", ["prefill", "decode", "train"])
def test_family_check_passes_in_float32(positions, table, mode):
    w = FAMILY.build(params(mode=mode, positions=positions, table=table), "cpu", torch.float32)
    w.fn()
    check = w.check()
    assert check.ok and check.max_rel_err < 1e-5, check
    if mode == "train":
        assert "gradients" in check.reference


@pytest.mark.parametrize("positions", ["learned", "yarn"])
def test_compiled_backend_matches(positions):
    w = FAMILY.build(params(positions=positions, backend="compile", table="per_call" if positions == "yarn"
                            else "cached"), "cpu", torch.float32)
    assert w.check().ok


def test_cost_by_hand():
    # learned, prefill: B=2, S=12, hidden 16: x read, 12 table rows read, sum written; one add per element
    c = positions_cost(params(positions="learned"), 2)
    assert (c.flops, c.bytes, c.tokens) == (2 * 12 * 16, (2 * 384 + 12 * 16) * 2, 24)
    train = positions_cost(params(positions="learned", mode="train"), 2)
    assert train.flops == 2 * 384  # + the batch sum of dy into the table rows' gradient
    assert train.bytes == (3 * 384 + 2 * 12 * 16) * 2  # + dy read and the rows' gradient written
    # rope: q has 2*4*12*16 = 1536 elements, k 768; 3 FLOPs per element; q, k read and written + cos/sin rows
    c = positions_cost(params(positions="rope"), 2)
    assert (c.flops, c.bytes) == (3 * 2304, (2 * 2304 + 12 * 16) * 2)
    per_call = positions_cost(params(positions="yarn", table="per_call"), 2)
    assert per_call.flops == 3 * 2304 + 5 * 12 * 8 and per_call.bytes == 2 * 2304 * 2
    decode = positions_cost(params(positions="yarn", mode="decode"), 4)
    assert (decode.flops, decode.bytes, decode.tokens) == (3 * 2 * 6 * 16, (2 * 192 + 16) * 4, 2)
    train = positions_cost(params(positions="rope", mode="train"), 2)
    assert (train.flops, train.bytes) == (6 * 2304, (4 * 2304 + 2 * 12 * 16) * 2)


def test_flop_counter_sees_no_position_work():
    w = FAMILY.build(params(positions="rope"), "cpu", torch.float32)
    with FlopCounterMode(display=False) as counter:
        w.fn()
    assert counter.get_total_flops() == 0 and w.cost.flops > 0


def test_validation():
    with pytest.raises(ValidationError, match="per_call applies to rope/yarn"):
        params(positions="learned", table="per_call")
    with pytest.raises(ValidationError, match="beyond the learned table"):
        params(positions="learned", seq_len=600)
    with pytest.raises(ValidationError, match="beyond the learned table"):
        params(positions="learned", mode="decode", kv_len=512)
    with pytest.raises(ValidationError, match="yarn_factor > 1"):
        params(positions="yarn", yarn_factor=1.0)
    with pytest.raises(ValidationError, match="even head_dim"):
        params(positions="rope", head_dim=15)
    assert FAMILY.defaults(get_preset("gpt2-small"))["positions"] == "learned"
    assert params().positions == "yarn"

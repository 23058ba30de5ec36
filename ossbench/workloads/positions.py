"""The positions family: what encoding token positions costs, per call of one layer.

- learned (GPT-2): x [B, S, hidden] + table rows [S, hidden], once per model, at the embedding.
- rope / yarn (gpt-oss): rotate-half rotation of q [B, n_heads, S, head_dim] and k [B, n_kv_heads, S,
  head_dim], in every attention layer. `table: cached` slices a cos/sin table built once; `table: per_call`
  builds cos/sin for the call's positions in float32 (float64 for float64 cases), as gpt-oss's reference
  does on every forward (this is where YaRN's frequency ramp and concentration cost anything: with a
  cached table YaRN is RoPE).

Modes:
- prefill: positions 0..seq_len-1 of `batch` sequences;
- decode:  one token per sequence at position kv_len;
- train:   prefill forward + backward (learned: gradients of x and of the table; rope: of q and k).

Cost model (per call; docs/layers.md). No matmuls, so FlopCounterMode counts nothing: the counts are checked
against hand computation in tests/test_positions.py.
- learned: FLOPs one add per element of x; bytes x read, S table rows read (shared by the batch), the sum
  written. Train adds the gradient: the table rows' gradient sums dy over the batch (one add per element of
  dy) and is written; x's gradient is dy itself (no copy).
- rope/yarn: per rotated pair (x1, x2): x1 cos - x2 sin and x2 cos + x1 sin = 6 FLOPs, 3 per element of q
  and k. Bytes: q and k read and written, plus the cached cos/sin rows (S x head_dim values in the
  activations' dtype). per_call: no table bytes (it can be formed where it is used) but 5 FLOPs per
  position and pair (angle, cos, sin, two concentration multiplies; the O(head_dim) frequency ramp is not
  counted). Train adds the backward rotation (3 FLOPs per element of the gradients), dq/dk read and
  written, and the table read again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator, \
    model_validator

from ..backends import unsupported_reason
from ..errors import SkipCase
from ..layers.config import ModelConfig
from ..layers.positions import LearnedPositions, RotaryPositions
from ..layers.positions_spec import PositionsSpec
from ..layers.rope import RopeSpec, apply_rotary, inv_freq_and_concentration, rotary_cos_sin
from .base import DEFAULT_SEED, Check, Cost, Family, Footprint, Workload, activation_factor
from .building import randn, timed_call
from .checks import check_rows, combined_check, errors, require_checked_dtype
from .fields import backend_of, cross_field_error, fits_memory
from .spec_params import spec_of, spec_params_model

# Allowed max|out - ref| / max|ref|. One add or one rotation (two products and a sum, rounded once each in
# 16-bit dtypes, plus the table's own rounding): a few unit roundoffs, bf16 2^-9, fp16 2^-11.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
ROTATION_FLOPS = 3  # per element of q and k: 6 per rotated pair
TABLE_FLOPS = 5  # per (position, pair) when cos/sin are formed per call
LEARNED_STD = 0.02  # a trained GPT-2's wpe rows are of this order next to O(1) token embeddings


class PositionsAxes(BaseModel):
    """The run axes of a positions case; PositionsParams adds every PositionsSpec field, then `table`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    mode: Literal["prefill", "decode", "train"]
    backend: backend_of("positions") = Field(description="op by op, or through torch.compile")
    batch: PositiveInt
    seq_len: PositiveInt = Field(description="tokens per sequence in prefill/train (unused in decode)")
    kv_len: PositiveInt = Field(description="position of the decoded token (unused in prefill/train)")
    n_heads: PositiveInt = Field(description="rope/yarn: query heads rotated")
    n_kv_heads: PositiveInt = Field(description="rope/yarn: key heads rotated")

    @property
    def spec(self) -> PositionsSpec:
        return spec_of(self, PositionsSpec)

    @property
    def rope(self) -> RopeSpec:
        return self.spec.rope

    @property
    def tokens_per_sequence(self) -> int:
        return 1 if self.mode == "decode" else self.seq_len

    @property
    def start_pos(self) -> int:
        return self.kv_len if self.mode == "decode" else 0


def _positions_fit(cls: type, v: int, info: ValidationInfo) -> int:
    """The learned table must hold the case's last position (an axis rule over the spec's max_position)."""
    d = info.data
    if d.get("positions") != "learned" or d.get("mode") is None:
        return v
    last = d.get("kv_len") if d["mode"] == "decode" else (d.get("seq_len") or 1) - 1
    if last is not None and last >= v:
        raise cross_field_error(f"position {last} is beyond the learned table of {v} positions (max_position)",
                                "positions", "seq_len", "kv_len", "max_position")
    return v


def _table_is_rotary(cls: type, v: str, info: ValidationInfo) -> str:
    if v == "per_call" and info.data.get("positions") == "learned":
        raise cross_field_error("table: per_call applies to rope/yarn; learned positions are a parameter table",
                                "positions", "table")
    return v


PositionsParams = spec_params_model("PositionsParams", PositionsAxes, PositionsSpec, after={
    "table": (Literal["cached", "per_call"], Field(description="rope/yarn: cos/sin sliced from a table built "
                                                               "once, or formed in every call (gpt-oss's reference)")),
}, validators={
    "_positions_fit": field_validator("max_position")(classmethod(_positions_fit)),
    "_table_is_rotary": field_validator("table")(classmethod(_table_is_rotary)),
    "_memory": model_validator(mode="after")(fits_memory(lambda p, dtype_bytes: positions_cost(p, dtype_bytes).bytes)),
})
PositionsParams.__doc__ = ("One positions case: the run axes, the PositionsSpec fields "
                           "(ossbench/layers/positions_spec.py), then `table`.")


def defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The preset's own scheme (gpt-oss: YaRN; GPT-2: learned) over 4096 tokens (GPT-2: its 1024)."""
    context = min(4096, cfg.max_position)
    return dict(mode="prefill", backend="eager", batch=1, seq_len=context, kv_len=context - 1, n_heads=cfg.n_heads,
                n_kv_heads=cfg.n_kv_heads, **dataclasses.asdict(cfg.positions_spec()), table="cached")


VARIANTS: dict[str, dict[str, Any]] = {
    "learned": {"positions": "learned"},
    "rope": {"positions": "rope"},
    "yarn": {"positions": "yarn"},
    "yarn-per-call": {"positions": "yarn", "table": "per_call"},
    "compiled": {"backend": "compile"},
}


# --- cost model
def positions_cost(p: PositionsParams, dtype_bytes: int) -> Cost:
    B, S = p.batch, p.tokens_per_sequence
    train = p.mode == "train"
    if p.positions == "learned":
        elems = B * S * p.hidden
        flops = float(elems * (2 if train else 1))  # train: + summing dy over the batch into the table rows
        values = 2 * elems + S * p.hidden  # x, out, table rows
        if train:
            values += elems + S * p.hidden  # dy read, the rows' gradient written (dx is dy)
        return Cost(flops=flops, bytes=float(values * dtype_bytes), tokens=B * S, extra={
            "params": float(p.max_position * p.hidden), "rotated_elements": 0.0})
    elems = B * (p.n_heads + p.n_kv_heads) * S * p.head_dim  # of q and k
    rotation = float(ROTATION_FLOPS * elems * (2 if train else 1))
    table_values = S * p.head_dim  # cos and sin, head_dim / 2 each per position
    if p.table == "per_call":
        table_flops, table_bytes = float(TABLE_FLOPS * S * p.head_dim // 2), 0
    else:
        table_flops, table_bytes = 0.0, table_values * dtype_bytes * (2 if train else 1)
    values = 2 * elems * (2 if train else 1)  # q, k read and written; train: dq', dk' read, dq, dk written
    return Cost(flops=rotation + table_flops, bytes=float(values * dtype_bytes + table_bytes), tokens=B * S, extra={
        "rotation_flops": rotation, "table_flops": table_flops, "rotated_elements": float(elems), "params": 0.0})


# --- building
def footprint(p: PositionsParams, dtype_bytes: int) -> Footprint:
    """The case before it is built (ossbench/plan.py): the inputs (and their gradients) and the learned table
    held; outputs of the inputs' sizes per call."""
    cost = positions_cost(p, dtype_bytes)
    B, S = p.batch, p.tokens_per_sequence
    if p.positions == "learned":
        inputs, table = B * S * p.hidden * dtype_bytes, p.max_position * p.hidden * dtype_bytes
    else:
        inputs, table = B * (p.n_heads + p.n_kv_heads) * S * p.head_dim * dtype_bytes, S * p.head_dim * dtype_bytes
    held = table + inputs * (2 if p.mode == "train" else 1)
    act = 2 * inputs * activation_factor(p.mode)  # the outputs and one intermediate of their size
    return Footprint(cost=cost, persistent_bytes=float(held), activation_bytes=float(act),
                     backends=(("positions", p.backend),))


def build(params: PositionsParams, device: Any, dtype: torch.dtype, *, seed: int = DEFAULT_SEED) -> Workload:
    p = params
    device = torch.device(device)
    if reason := unsupported_reason("positions", p.backend, device, dtype, train=p.mode == "train"):
        raise SkipCase(reason)  # the backend's own reason (ossbench.backends)
    require_checked_dtype("positions", TOLERANCE, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    training = p.mode == "train"
    S, start = p.tokens_per_sequence, p.start_pos
    cost = positions_cost(p, torch.finfo(dtype).bits // 8)
    if p.positions == "learned":
        module = LearnedPositions(p.max_position, p.hidden, backend=p.backend, device=device, dtype=dtype)
        with torch.no_grad():
            module.weight.copy_(LEARNED_STD * torch.randn(module.weight.shape, generator=generator, device=device))
        module.requires_grad_(training)
        inputs = [randn((p.batch, S, p.hidden), generator, device, dtype)]  # [B, S, hidden] token embeddings
        grads_of = [inputs[0], module.weight]
        call = lambda: module(inputs[0], start)  # noqa: E731
        held = module.weight.numel() * module.weight.element_size()
    else:
        module = RotaryPositions(p.head_dim, p.rope, table=p.table, backend=p.backend)
        q = randn((p.batch, p.n_heads, S, p.head_dim), generator, device, dtype)  # [B, Hq, S, D]
        k = randn((p.batch, p.n_kv_heads, S, p.head_dim), generator, device, dtype)  # [B, Hkv, S, D]
        inputs = grads_of = [q, k]
        if p.table == "cached":
            module.rotary.cos_sin(start, S, device, dtype)  # build the table now, not in the first timed call
        call = lambda: module(q, k, start)  # noqa: E731
        held = 0
    # outputs have their inputs' shapes
    dys = [randn(tuple(t.shape), generator, device, dtype) for t in inputs] if training else None
    fn = timed_call(call, dys, inputs, grads_of)
    held += sum(t.numel() * t.element_size() for t in inputs) * (2 if training else 1)
    names = ["x"] if p.positions == "learned" else ["q", "k"]
    named = dict(zip(names, inputs)) | dict(zip([f"d{n}" for n in names], dys or []))  # dys: the outputs' grads
    return Workload(fn=fn, cost=cost, check=lambda: check_positions(p, module, inputs, dys), persistent_bytes=held,
                    inputs=named)


# --- numerics check
def reference_cos_sin(p: PositionsParams, positions: torch.Tensor,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 cos/sin [R, head_dim/2]. per_call forms its angles in float32 for 16-bit and float32 inputs,
    like gpt-oss's reference (off by up to ~4e-3 rad at position 131071): those rounded angles are the
    function it computes, so the reference takes them and evaluates the rest in float64."""
    if p.table == "cached":
        return rotary_cos_sin(positions, p.head_dim, p.rope)
    compute = torch.promote_types(dtype, torch.float32)
    inv_freq, concentration = inv_freq_and_concentration(p.head_dim, p.rope, dtype=compute,
                                                         device=positions.device)
    angles = (positions.to(compute)[:, None] * inv_freq[None, :]).double()
    return angles.cos() * concentration, angles.sin() * concentration


def reference_positions(p: PositionsParams, module: Any, inputs: list[torch.Tensor],
                        rows: torch.Tensor) -> list[torch.Tensor]:
    """float64 outputs at sequence positions `rows` (indices into the call's S tokens)."""
    positions = p.start_pos + rows
    if p.positions == "learned":
        (x,) = inputs
        return [x[:, rows].double() + module.weight[positions].double()]
    cos, sin = reference_cos_sin(p, positions, inputs[0].dtype)
    return [apply_rotary(t[:, :, rows].double(), cos, sin) for t in inputs]


def _at_rows(p: PositionsParams, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return t[:, rows] if p.positions == "learned" else t[:, :, rows]


def check_positions(p: PositionsParams, module: Any, inputs: list[torch.Tensor],
                    dys: list[torch.Tensor] | None) -> Check:
    """Outputs at a set of positions against float64 (sequence positions are independent); in train mode
    the input gradients (learned: and the table rows' gradient) at those positions too."""
    S = p.tokens_per_sequence
    rows = check_rows(S, inputs[0].device)
    got = module(*inputs, start_pos=p.start_pos)
    got = list(got) if isinstance(got, tuple) else [got]
    ref = reference_positions(p, module, [t.detach() for t in inputs], rows)
    errs = [errors(_at_rows(p, g.detach(), rows), r) for g, r in zip(got, ref)]
    what = f"{len(rows)} of {S} positions"
    if dys is not None:
        wrt = list(inputs) + ([module.weight] if p.positions == "learned" else [])
        grads = torch.autograd.grad(got, wrt, dys)
        leaves = [t.detach().double().requires_grad_(True) for t in inputs]
        table = module.weight.detach().double().requires_grad_(True) if p.positions == "learned" else None
        if table is not None:
            positions = p.start_pos + rows
            ref_out = [leaves[0][:, rows] + table[positions]]
            ref_wrt = [leaves[0], table]
        else:
            cos, sin = reference_cos_sin(p, p.start_pos + rows, inputs[0].dtype)
            ref_out = [apply_rotary(t[:, :, rows], cos, sin) for t in leaves]
            ref_wrt = leaves
        ref_grads = torch.autograd.grad(ref_out, ref_wrt, [_at_rows(p, d, rows).double() for d in dys])
        for g, r in zip(grads[:len(inputs)], ref_grads[:len(inputs)]):
            errs.append(errors(_at_rows(p, g, rows), _at_rows(p, r, rows)))
        if table is not None:
            positions = p.start_pos + rows
            errs.append(errors(grads[1][positions], ref_grads[1][positions]))
        what += " and the gradients"
    return combined_check(errs, TOLERANCE[inputs[0].dtype],
                          f"float64 {'table add' if p.positions == 'learned' else 'rotation'} on "
                          f"{inputs[0].device.type}, {what}")


FAMILY = Family(
    name="positions",
    description="position encoding per call: GPT-2's learned absolute positions (an add at the embedding) vs "
                "RoPE / YaRN rotation of q and k (table cached or formed per call), eager or compiled",
    params_model=PositionsParams,
    defaults=defaults,
    build=build,
    variants=VARIANTS,
    footprint=footprint,
)

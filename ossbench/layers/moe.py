"""gpt-oss's mixture-of-experts MLP block with three interchangeable backends.

`MoE(MoESpec(hidden, intermediate, n_experts, top_k))` (layers/moe_spec.py) is gpt-oss's MLPBlock: `forward(x)` returns
`x + experts(norm(x))` (pre-norm and residual add inside the block; `update(x)` leaves the residual out).
- norm:   RMSNorm with an fp32 `scale`.
- router: `gate`, a linear layer with bias, hidden -> n_experts logits; each token takes the top_k logits
          and a softmax over those k gives its expert weights (computed in at least float32, cast back).
- expert e: h = mlp1_weight[e] @ t + mlp1_bias[e] (width 2 x intermediate, gate and linear halves
          interleaved), clamped SwiGLU (see ffn.clamped_swiglu), y = mlp2_weight[e] @ h + mlp2_bias[e].
- output: the weighted sum of each token's k expert outputs.
Tensor names and shapes are the checkpoint's (`norm.scale`, `gate.weight` [E, hidden], `gate.bias` [E],
`mlp1_weight` [E, 2I, hidden], `mlp1_bias` [E, 2I], `mlp2_weight` [E, hidden, I], `mlp2_bias` [E, hidden]),
so a gpt-oss block's `mlp.*` tensors (decoded to a float dtype) load with `load_state_dict`. With
`weights="mxfp4"` the two expert weights are MXFP4 `blocks`/`scales` buffers instead (checkpoint names
`mlp1_weight.blocks`, `mlp1_weight.scales`, ...), decoded on the fly in every forward.

Backends (same function, different execution), registered at the end of this file (ossbench.backends):
- "gather":  gpt-oss reference style: gather each token's k expert weights ([T, k, 2I, hidden]) and
             contract per token. Simple; memory grows with tokens x k x expert size.
- "loop":    sort token slots by expert, then per expert with tokens: two matmuls on its tokens. One host
             sync (the tokens-per-expert counts) and one launch group per touched expert.
- "grouped": slots sorted by expert, one grouped GEMM per projection. `grouped_impl` picks the kernel:
             "grouped_mm" (torch._grouped_mm: no host sync with plain weights; only where the device and
             dtype support it), "padded_bmm" (torch.bmm over [touched experts, max tokens per expert, ...],
             zero-padded: works everywhere, wastes work on imbalanced loads) or "auto" (grouped_mm when a
             probe call on this device/dtype succeeds, else padded_bmm).
With MXFP4 weights, "loop" and "grouped" decode only the experts that received tokens, "gather" decodes
the gathered blocks of every token slot.
- "triton":  ossbench's own Triton grouped GEMMs (layers/moe_triton.py, kernels/moe_grouped.py): the same
             sorted slots, SwiGLU fused into mlp1's epilogue, routing weights into mlp2's, MXFP4 decoded in
             the kernel; forward only, CUDA (or the CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import get_backend, layer_method, register_backend
from .config import ModelConfig
from .ffn import clamped_swiglu
from .moe_spec import MoESpec
from .mxfp4 import MXFP4Weight, quantize
from .norm import RMSNorm

GROUPED_IMPLS = ("auto", "grouped_mm", "padded_bmm")
QUANTIZE_CHUNK = 1 << 26  # float32 values drawn and quantized at once when building MXFP4 weights


@dataclass
class Routing:
    """Each token's chosen experts and their weights."""

    indices: torch.Tensor  # [T, k] int64, by descending logit
    weights: torch.Tensor  # [T, k] softmax over the k chosen logits

    def tokens_per_expert(self, n_experts: int) -> torch.Tensor:
        return torch.bincount(self.indices.flatten(), minlength=n_experts)  # [E]


def load_max_over_mean(tokens_per_expert: torch.Tensor | list[int]) -> float:
    """The busiest expert's load over the mean load: 1 is perfect balance, n_experts / top_k the worst."""
    counts = torch.as_tensor(tokens_per_expert, dtype=torch.float64)
    return float(counts.max() / counts.mean())


def zipf_router_bias(n_experts: int, skew: float, logit_scale: float) -> torch.Tensor:
    """Router bias [E] that makes expert popularity follow a Zipf law with exponent `skew` (0: none).

    Adding log(p_e) to logits whose noise is Gumbel with scale b makes expert e win the argmax with
    probability p_e exactly (the Gumbel-max trick); router logits are roughly normal, and a Gumbel of the
    same spread has b = std * sqrt(6) / pi, so bias_e = -skew * ln(e + 1) * b ranks expert 0 the most
    popular and gives expert e about (e + 1)^-skew of its share. `logit_scale` is the std of the
    unbiased logits.
    """
    rank = torch.arange(n_experts, dtype=torch.float64)
    return -skew * torch.log1p(rank) * logit_scale * math.sqrt(6) / math.pi


@functools.lru_cache(maxsize=None)
def grouped_mm_unsupported_reason(device: str, dtype: torch.dtype, in_features: int, out_features: int,
                                  backward: bool = False) -> str | None:
    """Why torch._grouped_mm cannot run an expert projection in_features -> out_features on `device` in
    `dtype` (None when it can): a probe call with an empty and a non-empty group, compared with matmul."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(16, in_features, generator=g, device=device).to(dtype).requires_grad_(backward)
        w = torch.randn(2, out_features, in_features, generator=g, device=device).to(dtype)  # [G, N, K]
        w.requires_grad_(backward)
        offs = torch.tensor([0, 16], dtype=torch.int32, device=device)  # group 0 empty, group 1 all rows
        out = torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)  # [16, N]
        ref = a.detach().float() @ w[1].detach().float().T
        if not torch.allclose(out.detach().float(), ref, rtol=5e-2, atol=5e-2 * float(ref.abs().max())):
            return f"torch._grouped_mm gave wrong results on {device} in {dtype}"
        if backward:
            out.float().sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means: not usable here
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"torch._grouped_mm is not usable on {device} in {dtype}{' with backward' if backward else ''}: " \
               f"{first_line[:200]}"
    return None


class MoE(nn.Module):
    """gpt-oss's MLP block computing `spec`; `backend` and `grouped_impl` choose how the experts run."""

    def __init__(self, spec: MoESpec | None = None, *, backend: str = "grouped", grouped_impl: str = "auto",
                 device: Any = None, dtype: Any = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        spec = spec if spec is not None else MoESpec()  # the spec validated itself when built
        if grouped_impl not in GROUPED_IMPLS:
            raise ValueError(f"grouped_impl must be one of {GROUPED_IMPLS}, got {grouped_impl!r}")
        get_backend("moe", backend)  # ValueError naming the registered backends
        self.spec = spec
        hidden, intermediate, n_experts, weights = spec.hidden, spec.intermediate, spec.n_experts, spec.weights
        self.hidden, self.intermediate, self.n_experts, self.top_k = hidden, intermediate, n_experts, spec.top_k
        self.swiglu_alpha, self.swiglu_limit = spec.swiglu_alpha, spec.swiglu_limit
        self.backend, self.grouped_impl, self.weights = backend, grouped_impl, weights
        self.norm = RMSNorm(hidden, spec.norm_eps, device=device)
        self.gate = nn.Linear(hidden, n_experts, bias=spec.router_bias, device=device, dtype=dtype)
        w1_shape, w2_shape = (n_experts, 2 * intermediate, hidden), (n_experts, hidden, intermediate)
        if weights == "mxfp4":
            self.mlp1_weight = MXFP4Weight(w1_shape, device=device)
            self.mlp2_weight = MXFP4Weight(w2_shape, device=device)
        else:
            self.mlp1_weight = nn.Parameter(torch.empty(w1_shape, device=device, dtype=dtype))
            self.mlp2_weight = nn.Parameter(torch.empty(w2_shape, device=device, dtype=dtype))
        if spec.expert_bias:
            self.mlp1_bias = nn.Parameter(torch.empty(n_experts, 2 * intermediate, device=device, dtype=dtype))
            self.mlp2_bias = nn.Parameter(torch.empty(n_experts, hidden, device=device, dtype=dtype))
        else:
            self.register_parameter("mlp1_bias", None)
            self.register_parameter("mlp2_bias", None)
        self._resolved_impl: dict[tuple, str] = {}
        self.reset_parameters(generator)

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, backend: str = "grouped", grouped_impl: str = "auto",
                    device: Any = None, dtype: Any = None, generator: torch.Generator | None = None,
                    **spec_changes: Any) -> MoE:
        """The MLP block of a preset with experts (gpt-oss-20b: 32 experts, gpt-oss-120b: 128)."""
        spec = cfg.moe_spec()
        return cls(replace(spec, **spec_changes) if spec_changes else spec, backend=backend,
                   grouped_impl=grouped_impl, device=device, dtype=dtype, generator=generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, bias_std: float = 0.1) -> None:
        """Random weights (std 1/sqrt(fan_in): unit-scale outputs), small random biases, scale 1.

        MXFP4 weights are drawn in float32 and quantized a few experts at a time, so that no float32 copy
        of all experts is ever held.
        """
        self.norm.scale.fill_(1.0)
        self.gate.weight.normal_(0.0, 1.0 / math.sqrt(self.hidden), generator=generator)
        if self.gate.bias is not None:
            self.gate.bias.normal_(0.0, bias_std, generator=generator)
        for w, fan_in in ((self.mlp1_weight, self.hidden), (self.mlp2_weight, self.intermediate)):
            if isinstance(w, MXFP4Weight):
                per_expert = math.prod(w.shape[1:])
                step = max(1, QUANTIZE_CHUNK // per_expert)
                for e in range(0, self.n_experts, step):
                    n = min(step, self.n_experts - e)
                    dense = torch.empty((n, *w.shape[1:]), device=w.blocks.device)
                    dense.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                    w.blocks[e:e + n], w.scales[e:e + n] = quantize(dense)
            else:
                w.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        for b in (self.mlp1_bias, self.mlp2_bias):
            if b is not None:
                b.normal_(0.0, bias_std, generator=generator)

    # --- pieces
    def act(self, h: torch.Tensor) -> torch.Tensor:
        return clamped_swiglu(h, self.swiglu_alpha, self.swiglu_limit)

    def route(self, t: torch.Tensor) -> Routing:
        """Normed tokens t [T, hidden] -> each token's top_k experts and softmax weights over them."""
        top = torch.topk(self.gate(t), self.top_k, dim=-1, sorted=True)  # [T, k]
        acc = torch.promote_types(t.dtype, torch.float32)  # fp32 for 16-bit inputs; fp64 stays fp64
        return Routing(top.indices, torch.softmax(top.values.to(acc), dim=-1).to(t.dtype))

    def expert_weights(self, dtype: torch.dtype, index: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mlp1 [..., 2I, hidden], mlp2 [..., hidden, I]) of the experts `index` (None: all), in `dtype`;
        MXFP4 weights are decoded here."""
        out = []
        for w in (self.mlp1_weight, self.mlp2_weight):
            if isinstance(w, MXFP4Weight):
                out.append(w.dequantize(dtype, index))
            else:
                out.append((w if index is None else w[index]).to(dtype))
        return out[0], out[1]

    def _bias(self, b: torch.Tensor | None, index: Any) -> torch.Tensor | None:
        return None if b is None else b[index]

    def resolved_grouped_impl(self, device: Any, dtype: torch.dtype, training: bool) -> str:
        """The kernel the grouped backend uses for this device/dtype ("auto" resolved by a probe)."""
        if self.grouped_impl != "auto":
            return self.grouped_impl
        key = (str(device), dtype, training)
        if key not in self._resolved_impl:
            reasons = [grouped_mm_unsupported_reason(str(device), dtype, k, n, training)
                       for k, n in ((self.hidden, 2 * self.intermediate), (self.intermediate, self.hidden))]
            self._resolved_impl[key] = "padded_bmm" if any(reasons) else "grouped_mm"
        return self._resolved_impl[key]

    # --- forward
    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """x [..., hidden] -> x + the MoE update (gpt-oss MLPBlock's residual form)."""
        return x + self.update(x, backend)

    def update(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """x [..., hidden] -> weighted sum of the chosen experts' outputs on norm(x), [..., hidden]."""
        t = self.norm(x).reshape(-1, self.hidden)  # [T, hidden]
        return self.experts(t, self.route(t), backend).reshape(x.shape)

    def experts(self, t: torch.Tensor, routing: Routing, backend: str | None = None) -> torch.Tensor:
        """Normed tokens t [T, hidden] and their routing -> combined expert outputs [T, hidden]."""
        y = get_backend("moe", backend or self.backend).build(self, t, routing)  # [T, k, hidden]
        if y.dim() == 2:  # [T, hidden]: the backend applied the routing weights itself (triton)
            return y
        # [T, 1, k] @ [T, k, hidden]: each token's weighted sum over its k slots
        return torch.bmm(routing.weights.unsqueeze(1), y).squeeze(1)  # [T, hidden]

    def _gather(self, t: torch.Tensor, r: Routing) -> torch.Tensor:
        w1, w2 = self.expert_weights(t.dtype, r.indices)  # [T, k, 2I, hidden], [T, k, hidden, I]
        h = torch.einsum("tkoc,tc->tko", w1, t)  # [T, k, 2I]
        if self.mlp1_bias is not None:
            h = h + self.mlp1_bias[r.indices]
        y = torch.einsum("tkci,tki->tkc", w2, self.act(h))  # [T, k, hidden]
        if self.mlp2_bias is not None:
            y = y + self.mlp2_bias[r.indices]
        return y

    def _needs_backward(self, t: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (t.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _sorted_slots(self, r: Routing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token slots (token * k + j) grouped by expert: (order [T*k], expert of each sorted slot [T*k],
        counts [E], inverse [T*k] that puts sorted rows back in slot order)."""
        flat = r.indices.flatten()  # [T*k]
        order = torch.argsort(flat, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        # scatter_add, not bincount: CUDA's bincount reads min/max back to the host (two syncs per call, and
        # no CUDA-graph capture), which would stall the grouped_mm path that is otherwise sync-free
        counts = torch.zeros(self.n_experts, dtype=torch.long, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        return order, flat[order], counts, inverse

    def _loop(self, t: torch.Tensor, r: Routing) -> torch.Tensor:
        T, k = r.indices.shape
        order, _, counts, inverse = self._sorted_slots(r)
        outs, start = [], 0
        for e, n in enumerate(counts.tolist()):  # the one host sync of this backend
            if n == 0:
                continue
            slots = order[start:start + n]
            start += n
            w1, w2 = self.expert_weights(t.dtype, e)  # [2I, hidden], [hidden, I]
            h = F.linear(t[slots // k], w1, self._bias(self.mlp1_bias, e))  # [n, 2I]
            outs.append(F.linear(self.act(h), w2, self._bias(self.mlp2_bias, e)))  # [n, hidden]
        return torch.cat(outs).index_select(0, inverse).view(T, k, self.hidden)  # [T, k, hidden]

    def _grouped(self, t: torch.Tensor, r: Routing) -> torch.Tensor:
        T, k = r.indices.shape
        order, expert_of_row, counts, inverse = self._sorted_slots(r)
        xs = t[order // k]  # [T*k, hidden], rows grouped by expert
        impl = self.resolved_grouped_impl(t.device, t.dtype, self._needs_backward(t))
        if impl == "grouped_mm" and self.weights == "dtype":
            # every expert's weights, empty groups included: no host sync, nothing data-dependent on the host
            offs = counts.cumsum(0).to(torch.int32)
            w1, w2 = self.mlp1_weight, self.mlp2_weight
            y = self._grouped_mm(xs, w1, w2, offs, expert_of_row)
        else:
            touched = counts.nonzero().squeeze(1)  # host sync: which experts have tokens
            w1, w2 = self.expert_weights(t.dtype, touched)  # [G, 2I, hidden], [G, hidden, I]
            group = torch.full((self.n_experts,), -1, dtype=torch.long, device=t.device)
            group[touched] = torch.arange(touched.numel(), device=t.device)
            if impl == "grouped_mm":
                offs = counts[touched].cumsum(0).to(torch.int32)
                y = self._grouped_mm(xs, w1, w2, offs, expert_of_row)
            else:
                y = self._padded_bmm(xs, w1, w2, counts, touched, group[expert_of_row], expert_of_row)
        return y.index_select(0, inverse).view(T, k, self.hidden)  # [T, k, hidden]

    def _grouped_mm(self, xs: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, offs: torch.Tensor,
                    expert_of_row: torch.Tensor) -> torch.Tensor:
        h = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)  # [T*k, 2I]
        if self.mlp1_bias is not None:
            h = h + self.mlp1_bias[expert_of_row]
        y = torch._grouped_mm(self.act(h), w2.transpose(-2, -1), offs=offs)  # [T*k, hidden]
        return y + self.mlp2_bias[expert_of_row] if self.mlp2_bias is not None else y

    def _padded_bmm(self, xs: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, counts: torch.Tensor,
                    touched: torch.Tensor, group_of_row: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
        G, rows = touched.numel(), xs.shape[0]
        width = int(counts.max())  # host sync: the padded group size
        starts = counts.cumsum(0) - counts  # first sorted row of each expert
        pos = torch.arange(rows, device=xs.device) - starts[expert_of_row]  # row within its expert's group
        flat_pos = group_of_row * width + pos
        padded = xs.new_zeros(G * width, self.hidden).index_copy(0, flat_pos, xs).view(G, width, self.hidden)
        h = torch.bmm(padded, w1.transpose(-2, -1))  # [G, width, 2I]
        if self.mlp1_bias is not None:
            h = h + self.mlp1_bias[touched].unsqueeze(1)
        y = torch.bmm(self.act(h), w2.transpose(-2, -1))  # [G, width, hidden]
        if self.mlp2_bias is not None:
            y = y + self.mlp2_bias[touched].unsqueeze(1)
        return y.view(G * width, self.hidden).index_select(0, flat_pos)  # [T*k, hidden], sorted rows


# --- the built-in backends: the layer calls build(layer, t [T, hidden], routing) -> [T, k, hidden], each
# token slot's expert output before the weighted combine (see MoE._gather); the built-ins are the layer's
# methods, looked up on the instance
register_backend("moe", "gather", layer_method("_gather"),
                 description="gather each token's k expert weights, contract per token (gpt-oss reference style)")
register_backend("moe", "loop", layer_method("_loop"),
                 description="slots sorted by expert, two matmuls per touched expert")
register_backend("moe", "grouped", layer_method("_grouped"),
                 description="slots sorted by expert, one grouped GEMM per projection (grouped_impl picks the kernel)")

from . import moe_triton  # noqa: E402,F401 - registers the "triton" backend

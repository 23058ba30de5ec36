"""Numerics-check pieces shared by the layer families: which tokens the float64 reference covers, the error
metric, and the "output on some rows, input gradient too in train mode" comparison of token-wise layers.

A family still owns its reference (the formula) and its tolerance table (the roundings it allows differ
per layer); these helpers only compare and summarise.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import SkipCase
from .base import Check

CHECK_TOKENS = 64  # the float64 reference covers at most this many tokens (evenly spaced)
Errors = tuple[float, float]  # (max |got - ref|, that / max |ref|)


def require_checked_dtype(family: str, tolerance: dict[torch.dtype, float], dtype: torch.dtype) -> None:
    """A dtype without a tolerance is skipped, not run: its check would have no bound to judge against."""
    if dtype not in tolerance:
        raise SkipCase(f"{family} checks support {', '.join(map(str, tolerance))}, not {dtype}")


def check_rows(tokens: int, device: Any) -> torch.Tensor:
    """Every token when few, else CHECK_TOKENS evenly spaced ones (first and last included)."""
    if tokens <= CHECK_TOKENS:
        return torch.arange(tokens, device=device)
    return torch.linspace(0, tokens - 1, CHECK_TOKENS, device=device).round().long().unique()


def errors(got: torch.Tensor, ref: torch.Tensor) -> Errors:
    abs_err = (got.double() - ref).abs().max().item()
    return abs_err, abs_err / max(ref.abs().max().item(), 1e-300)


def input_grad_errors(got: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, rows: torch.Tensor,
                      reference: Callable[[torch.Tensor], torch.Tensor]) -> Errors:
    """The backend's dx (of `got`, computed from the leaf x [T, ...], with output gradient dy) at `rows`
    against float64 autograd of `reference` on those rows. Valid only for layers whose tokens are
    independent (a row's dx depends on its own row), which is what lets the reference see only `rows`."""
    (dx,) = torch.autograd.grad(got, x, dy)
    x64 = x.detach()[rows].double().requires_grad_(True)
    (dx_ref,) = torch.autograd.grad(reference(x64), x64, dy[rows].double())
    return errors(dx[rows], dx_ref)


def combined_check(errs: list[Errors], tolerance: float, reference: str) -> Check:
    """One Check for several comparisons (output, gradients): the worst of each error."""
    return Check(max_abs_err=max(e[0] for e in errs), max_rel_err=max(e[1] for e in errs), tolerance=tolerance,
                 reference=reference)


def token_check(got: torch.Tensor, x: torch.Tensor, dy: torch.Tensor | None,
                reference: Callable[[torch.Tensor], torch.Tensor], *, tolerance: dict[torch.dtype, float],
                described: str, grad_only_when_all_rows: bool = False) -> Check:
    """A token-wise layer's output `got` [T, ...] (computed from x [T, ...], all tokens, as timed) against
    `reference` (float64, row by row) on check_rows; with dy (train mode) the input gradient too; with
    `grad_only_when_all_rows` (ffn, moe) the gradient only in cases whose check rows are every token."""
    rows = check_rows(x.shape[0], x.device)
    errs = [errors(got.detach()[rows], reference(x.detach()[rows]))]
    what = f"{len(rows)} of {x.shape[0]} tokens"
    if dy is not None and (len(rows) == x.shape[0] or not grad_only_when_all_rows):
        errs.append(input_grad_errors(got, x, dy, rows, reference))
        what += " and the input gradient"
    return combined_check(errs, tolerance[x.dtype], f"{described} on {x.device.type}, {what}")

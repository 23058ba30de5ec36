"""Building pieces shared by the layer families: seeded random tensors, norm parameters, and the call the
runner times."""

from __future__ import annotations

from typing import Any, Callable

import torch


def randn(shape: tuple[int, ...], generator: torch.Generator, device: Any, dtype: torch.dtype) -> torch.Tensor:
    # drawn in float32 and cast, so that every dtype of a case sees the same values (up to rounding)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)


def timed_call(call: Callable[[], Any], grad_outputs: Any, inputs: list[torch.Tensor],
               wrt: list[torch.Tensor]) -> Callable[[], Any]:
    """`call` itself in inference (grad_outputs None); in train mode forward + backward: the gradients of
    `wrt` given `grad_outputs`, with `inputs` made to require grad first (they are the graph's leaves)."""
    if grad_outputs is None:
        return call
    for t in inputs:
        t.requires_grad_(True)
    return lambda: torch.autograd.grad(call(), wrt, grad_outputs)


@torch.no_grad()
def init_norm_(norm: torch.nn.Module, generator: torch.Generator) -> None:
    """A norm's parameters near their trained values (scale / weight ~1, bias ~0), never exactly 1 and 0:
    kernels must not see a trivial scale."""
    for name, t in norm.named_parameters():
        noise = torch.randn(t.shape, generator=generator, device=t.device)
        t.copy_(0.1 * noise if name == "bias" else 1.0 + 0.1 * noise)

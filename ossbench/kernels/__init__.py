"""Triton kernels used as layer backends: one file per kernel, pure Triton and a thin torch wrapper."""

"""Triton kernels used as layer backends: one file per kernel, each a thin torch wrapper around it."""

"""Triton kernels behind the layers' `triton` backends (one file per kernel, a thin torch wrapper each)."""

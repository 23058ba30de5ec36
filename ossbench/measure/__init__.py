"""Measurement: the timer (bench), statistics, memory, NVML and profiler helpers.

Kept free of imports so that `import ossbench.measure.stats` never pulls in torch.
"""

"""The `ossbench fit` command (registered on the main group by cli.py): parse, call ossbench.fit, print."""

from __future__ import annotations

import os
import sys

import click

from .errors import UserError

STORAGE = {"mxfp4": "mxfp4", "bf16": "dtype"}


@click.command()
@click.argument("preset", required=False)
@click.option("--memory", metavar="SIZE", help="The card's memory, e.g. 80GB (10^9 bytes) or 16GiB.")
@click.option("--device", "device_name", metavar="NAME",
              help="A card from the peak table instead of --memory: h100, h100-pcie, h200, a100, a100-40gb, l40s, "
                   "l4, rtx4090.")
@click.option("--context", default=131072, show_default=True, type=click.IntRange(min=1),
              help="Tokens per sequence held in the KV cache.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Sequences.")
@click.option("--experts", type=click.Choice(sorted(STORAGE)), default="mxfp4", show_default=True,
              help="Expert weight storage: MXFP4 (the checkpoint's) or bf16.")
@click.option("--mode", type=click.Choice(["decode", "prefill"]), default="decode", show_default=True,
              help="The step whose working set is estimated: one decode token, or the whole context at once.")
@click.option("--attn-backend", default="flex", show_default=True, type=click.Choice(["eager", "sdpa", "flex"]),
              help="Attention backend (eager holds float32 scores; the fused ones do not).")
@click.option("--moe-backend", default="grouped", show_default=True, type=click.Choice(["gather", "loop", "grouped"]),
              help="MoE backend (gather holds every token slot's expert weights).")
@click.option("--table", is_flag=True, help="Print gpt-oss-20b and -120b x MXFP4/bf16 x 4k/32k/128k context "
                                            "against 16, 24, 80 and 141 GB cards instead.")
def fit(preset: str | None, memory: str | None, device_name: str | None, context: int, batch: int, experts: str,
        mode: str, attn_backend: str, moe_backend: str, table: bool) -> None:
    """Will PRESET (gpt-oss-20b, gpt-oss-120b) fit in a card's memory? Prints the memory plan: weights by
    storage, KV cache, activations and workspace, and a verdict with the headroom. Computed, not measured
    (docs/model.md). Exit 0 whatever the verdict; 2 for bad input."""
    from rich.console import Console

    from .fit import device_memory, fit_table, memory_plan, parse_memory
    from .fit_console import fit_table_view, plan_table, verdict_line
    from .layers.config import PRESETS, get_preset

    # piped to a file or a CI log: wide, as the other commands (rich would assume 80 columns)
    out = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
    if table:
        if preset or memory or device_name:
            raise UserError("fit --table covers the gpt-oss presets and the common cards; drop PRESET, "
                            "--memory and --device")
        out.print(fit_table_view(fit_table(batch=batch, mode=mode)))
        return
    if preset is None:
        raise UserError("fit: give a PRESET (gpt-oss-20b or gpt-oss-120b), or --table")
    if preset not in PRESETS or not preset.startswith("gpt-oss"):
        known = ", ".join(p for p in PRESETS if p.startswith("gpt-oss"))
        raise UserError(f"fit: PRESET {preset!r} is not a gpt-oss preset; known: {known}")
    if memory and device_name:
        raise UserError("fit: give --memory or --device, not both")
    card, capacity = (device_memory(device_name) if device_name else
                      (None, parse_memory(memory)) if memory else (None, None))
    plan = memory_plan(get_preset(preset), STORAGE[experts], context, batch, mode=mode, capacity=capacity,
                       attn_backend=attn_backend, moe_backend=moe_backend, preset=preset)
    out.print(plan_table(plan, card))
    out.print(verdict_line(plan, card))
    for note in plan.notes:
        out.print(f"note: {note}")

"""`ossbench fit`'s terminal view: one memory plan as a table of parts, or the presets x storage x context
table against the common cards. Functions of `fit.MemoryPlan`; no arithmetic of their own."""

from __future__ import annotations

from rich.table import Table

from .fit import CARDS_GB, MIN_HEADROOM, MemoryPlan, fits_card

WEIGHT_KINDS = (("expert_blocks", "experts: MXFP4 blocks (4-bit values)"), ("expert_scales", "experts: MXFP4 scales"),
                ("expert_weights", "experts: bf16 weights"), ("expert_biases", "experts: biases (bf16)"),
                ("attention", "attention: qkv, out, sinks (bf16)"), ("router", "router (bf16)"),
                ("embedding", "embedding (bf16)"), ("unembedding", "unembedding (bf16)"),
                ("norms", "norm scales (fp32)"))


def gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if abs(n) >= 1e8 else f"{n / 1e6:,.1f} MB"


def storage_name(experts: str) -> str:
    return "MXFP4" if experts == "mxfp4" else "bf16"


def plan_table(plan: MemoryPlan, card: str | None = None) -> Table:
    """One plan, part by part, then the total and the verdict."""
    where = f" on {card}" if card else ""
    t = Table(title=f"{plan.preset or 'model'}, {storage_name(plan.experts)} experts, {plan.mode}, batch "
                    f"{plan.batch} x {plan.context:,} tokens{where}", title_justify="left")
    t.add_column("part")
    t.add_column("bytes", justify="right")
    t.add_column("share", justify="right")
    total = plan.total
    rows = [(label, plan.weights[key]) for key, label in WEIGHT_KINDS if plan.weights.get(key)]
    rows.append(("weights, all", plan.weights["total"]))
    saved = plan.kv_cache_all_full - plan.kv_cache
    rows.append((f"KV cache (windowed layers keep their window; all-full would be {gb(plan.kv_cache_all_full)}, "
                 f"{gb(saved)} more)", plan.kv_cache))
    rows.append(("activations + workspace (estimate: one layer's step)", plan.activations["total"]))
    rows += [(f"  {k.replace('_', ' ')}", v) for k, v in plan.activations.items() if k != "total" and v]
    for label, n in rows:
        t.add_row(label, gb(n), f"{100 * n / total:.1f}%")
    t.add_row("[bold]total[/]", f"[bold]{gb(total)}[/]", "100%")
    return t


def verdict_line(plan: MemoryPlan, card: str | None = None) -> str:
    if plan.capacity is None:
        return f"needs {gb(plan.total)} (give --memory or --device for a verdict)"
    on = f"{card} ({gb(plan.capacity)})" if card else gb(plan.capacity)
    word = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    return (f"{word} on {on}: headroom {gb(plan.headroom)} "
            f"(verdict keeps {MIN_HEADROOM:.0%} free for the CUDA context and fragmentation)")


def fit_table_view(plans: list[MemoryPlan]) -> Table:
    """Presets x storage x context, the total and a yes/no per card size."""
    first = plans[0] if plans else None
    step = f"{first.mode} at batch {first.batch}" if first else "no plans"
    t = Table(title=f"memory plan, {step} (computed from the cost model, not measured)", title_justify="left")
    for col in ("preset", "experts", "context", "weights GB", "KV cache GB", "total GB"):
        t.add_column(col, justify="left" if col in ("preset", "experts") else "right")
    for card in CARDS_GB:
        t.add_column(f"{card} GB", justify="center")
    for p in plans:
        t.add_row(p.preset, storage_name(p.experts), f"{p.context:,}", *(f"{n / 1e9:,.2f}" for n in (
                  p.weights["total"], p.kv_cache, p.total)), *("[green]yes[/]" if fits_card(p, c) else "[red]no[/]" for c in CARDS_GB))
    return t

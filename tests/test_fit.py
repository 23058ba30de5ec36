"""`ossbench fit`: the memory plan against the published gpt-oss facts, and the command's exit codes.
The plan's weights and caches against the bytes of real tensors are in tests/test_model.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ossbench.cli import main
from ossbench.fit import CARDS_GB, device_memory, fit_table, fits_card, memory_plan, parse_memory
from ossbench.layers.config import get_preset
from ossbench.layers.params import count_params
from ossbench.layers.storage import weight_bytes


def test_published_parameter_counts():
    big, small = count_params(get_preset("gpt-oss-120b")), count_params(get_preset("gpt-oss-20b"))
    assert big["total"] == pytest.approx(117e9, rel=0.01) and big["active"] == pytest.approx(5.1e9, rel=0.02)
    assert small["total"] == pytest.approx(21e9, rel=0.01) and small["active"] == pytest.approx(3.6e9, rel=0.01)


@pytest.mark.parametrize("preset", ["gpt-oss-20b", "gpt-oss-120b"])
def test_weight_bytes_follow_parameter_counts(preset):
    cfg = get_preset(preset)
    counts = count_params(cfg)
    bf16 = weight_bytes(cfg, "dtype")
    norm_values = (2 * cfg.n_layers + 1) * cfg.hidden
    # bf16: two bytes a parameter, the fp32 norm scales four
    assert bf16["total"] == 2 * counts["total"] + 2 * norm_values
    mx = weight_bytes(cfg, "mxfp4")
    expert_values = counts["experts"] - cfg.n_layers * cfg.n_experts * (2 * cfg.intermediate + cfg.hidden)
    assert mx["expert_blocks"] == expert_values // 2 and mx["expert_scales"] == expert_values // 32
    assert mx["total"] == bf16["total"] - 2 * expert_values + expert_values * 17 // 32


def test_published_fits():
    big, small = get_preset("gpt-oss-120b"), get_preset("gpt-oss-20b")
    assert memory_plan(big, "mxfp4", 131072, capacity=80 * 10**9).fits
    assert not memory_plan(big, "dtype", 4096, capacity=80 * 10**9).fits
    assert memory_plan(small, "mxfp4", 4096, capacity=16 * 10**9).fits
    assert not memory_plan(small, "dtype", 4096, capacity=16 * 10**9).fits


def test_kv_cache_windows_halve_it():
    plan = memory_plan(get_preset("gpt-oss-20b"), "mxfp4", 131072)
    assert plan.kv_cache == pytest.approx(3.22e9, rel=0.005) and plan.kv_cache_all_full == pytest.approx(6.44e9,
                                                                                                        rel=0.005)
    assert 0.45 < plan.kv_cache / plan.kv_cache_all_full < 0.55


def test_activation_estimate_grows_with_the_step():
    cfg = get_preset("gpt-oss-20b")
    decode = memory_plan(cfg, "mxfp4", 4096, 1).activations["total"]
    prefill = memory_plan(cfg, "mxfp4", 4096, 1, mode="prefill").activations["total"]
    eager = memory_plan(cfg, "mxfp4", 4096, 1, mode="prefill", attn_backend="eager").activations["attention"]
    assert decode < prefill and eager == 2 * 64 * 4096 * 4096 * 4


def test_table_rows_and_cards():
    plans = fit_table()
    assert len(plans) == 2 * 2 * 3 and CARDS_GB == (16, 24, 80, 141)
    by = {(p.preset, p.experts, p.context): p for p in plans}
    assert fits_card(by["gpt-oss-120b", "mxfp4", 131072], 80) and not fits_card(by["gpt-oss-120b", "dtype", 4096], 141)


def test_sizes_and_devices():
    assert parse_memory("80GB") == 80 * 10**9 and parse_memory("16GiB") == 16 * 2**30 and parse_memory("24") == 24e9
    assert device_memory("h100") == ("H100 SXM", 80 * 10**9)


@pytest.mark.parametrize("args, code, text", [
    (["fit", "gpt-oss-120b", "--memory", "80GB", "--context", "131072"], 0, "fits on 80.00 GB"),
    (["fit", "gpt-oss-120b", "--device", "h100", "--experts", "bf16"], 0, "does not fit"),
    (["fit", "--table"], 0, "141 GB"),
    (["fit", "--table", "--batch", "8", "--mode", "prefill"], 0, "prefill at batch 8"),
    (["fit", "--table", "gpt-oss-20b"], 2, "drop PRESET"),
    (["fit", "gpt2-small"], 2, "not a gpt-oss preset"),
    (["fit", "gpt-oss-20b", "--memory", "lots"], 2, "--memory"),
    (["fit", "gpt-oss-20b", "--device", "tpu"], 2, "unknown device"),
    (["fit"], 2, "PRESET"),
])
def test_cli(args, code, text):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == code, r.output
    assert text in r.output and "Traceback" not in r.output

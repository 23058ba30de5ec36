"""The backend registry (ossbench/backends.py): built-ins, what a backend supports, validation against the
registered names, and plugins loaded from entry points (faked here; tests/test_plugin.py installs a real one)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

from ossbench import backends
from ossbench.backends import PluginError, Request, Supports, register_backend
from ossbench.cli import main
from ossbench.errors import SkipCase
from ossbench.layers.config import get_preset
from ossbench.workloads import all_families, describe_families, get_family

BUILT_IN = {
    "attention": ["eager", "sdpa", "flex", "triton"],
    "moe": ["gather", "loop", "grouped", "triton"],
    "norm": ["eager", "compile", "fused"],
    "activation": ["eager", "compile"],
    "positions": ["eager", "compile"],
}


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry (built-ins included) and a fresh plugin state, undone after the test."""
    all_families()  # imports every layer module: the built-ins are registered
    monkeypatch.setattr(backends, "_REGISTRY", {f: dict(named) for f, named in backends._REGISTRY.items()})
    monkeypatch.setattr(backends, "_PLUGINS", backends._Plugins())
    monkeypatch.setattr(backends, "_entry_points", lambda: [])
    return monkeypatch


def _plugin(registry, tmp_path, name: str, source: str) -> None:
    """An importable module `name` and an `ossbench.backends` entry point naming its register()."""
    (tmp_path / f"{name}.py").write_text(source)
    registry.syspath_prepend(str(tmp_path))
    registry.setattr(backends, "_entry_points",
                     lambda: [EntryPoint(name, f"{name}:register", backends.ENTRY_POINT_GROUP)])


def _moe_params(**over):
    fam = get_family("moe")
    values = {**fam.defaults(get_preset("gpt-oss-20b")), "hidden": 64, "intermediate": 32, "n_experts": 4,
              "top_k": 2, "tokens": 8, **over}
    return fam.params_model(**values)


def test_the_built_in_backends_are_registered_in_order(registry):
    for family, names in BUILT_IN.items():
        assert backends.backend_names(family) == names
        assert all(b.origin == "ossbench" for b in backends.backends(family))


def test_built_in_refusals_keep_their_texts(registry):
    sdpa, flex = backends.get_backend("attention", "sdpa"), backends.get_backend("attention", "flex")
    assert sdpa.unsupported_reason(Request("cuda", sinks=True)).startswith("sdpa cannot express attention sinks:")
    assert sdpa.unsupported_reason(Request("cuda", sinks=False, train=True, masked=True)) is None
    assert flex.unsupported_reason(Request("cpu", sinks=True)).startswith("flex on CPU cannot express attention sinks")
    assert flex.unsupported_reason(Request("cpu", train=True)).startswith("flex_attention has no backward pass on CPU")
    assert flex.unsupported_reason(Request("mps")) == "flex_attention runs on CUDA or CPU, not mps"
    # dropout is checked first: a CPU training case with dropout and sinks gets the dropout reason
    assert flex.unsupported_reason(Request("cpu", train=True, sinks=True, dropout=True)).startswith(
        "flex_attention cannot drop out attention probabilities")
    assert flex.unsupported_reason(Request("cuda", train=True, sinks=True)) is None


def test_supports_default_reasons_name_the_backend_and_device():
    s = Supports(devices=frozenset({"cuda"}), dtypes=frozenset({"bfloat16"}), train=frozenset({"cuda"}),
                 masks=False)
    assert s.unsupported_reason(Request("cpu"), "k") == "k runs on cuda, not cpu"
    assert s.unsupported_reason(Request("cuda", dtype="float32"), "k") == "k runs in bfloat16, not float32"
    assert s.unsupported_reason(Request("cuda", dtype=None), "k") is None  # dtype not asked: not checked
    assert s.unsupported_reason(Request("cuda", masked=True), "k") == \
        "k cannot express attention masks other than causal or full"
    assert Supports(train=frozenset({"cuda"})).unsupported_reason(Request("cpu", train=True), "k") == \
        "k has no backward pass on cpu"
    assert s.unsupported_reason(Request("cuda", dtype="bfloat16", train=True), "k") is None
    assert s.limits() == ["devices: cuda", "dtypes: bfloat16", "no masks", "train: cuda only"]
    # torch dtypes and plain sets are accepted and stored as frozensets of names
    given = Supports(dtypes=[torch.bfloat16, "float16"], train={"cuda"})
    assert given.dtypes == frozenset({"bfloat16", "float16"}) and given.train == frozenset({"cuda"})
    assert given.unsupported_reason(Request("cuda", dtype="bfloat16", train=True), "k") is None
    own = Supports(sinks=False, reasons={"sinks": "{name} on {device}: no sink column"})
    assert own.unsupported_reason(Request("cpu", sinks=True), "k") == "k on cpu: no sink column"


def test_availability_is_asked_before_the_features(registry):
    seen = []

    def available(device: str) -> str | None:
        seen.append(device)
        return "needs triton" if device == "cpu" else None

    register_backend("moe", "needs-triton", lambda layer, t, r: None, available=available,
                     supports=Supports(train=False))
    assert backends.unsupported_reason("moe", "needs-triton", torch.device("cpu"), torch.float32, train=True) == \
        "needs triton"
    assert backends.unsupported_reason("moe", "needs-triton", "cuda:1", train=True) == \
        "needs-triton has no backward pass"
    assert backends.unsupported_reason("moe", "needs-triton", "cuda:1") is None
    assert seen == ["cpu", "cuda", "cuda"]


def test_a_name_is_registered_once_and_must_fit_a_case_id(registry):
    with pytest.raises(ValueError, match="attention backend 'sdpa' is already registered \\(by ossbench\\)"):
        register_backend("attention", "sdpa", lambda *a: None)
    for bad in ("My Kernel", "a,b", "", "Sdpa"):
        with pytest.raises(ValueError, match="lower-case letters"):
            register_backend("attention", bad, lambda *a: None)


def test_an_unknown_backend_lists_the_registered_names(registry):
    from ossbench.layers.attention import Attention
    from ossbench.layers.attention_spec import AttentionSpec
    from ossbench.layers.moe import MoE
    from ossbench.layers.moe_spec import MoESpec

    with pytest.raises(ValueError, match=r"unknown attention backend 'sdap'; registered: eager, sdpa, flex, triton "
                                         r"\(did you mean 'sdpa'\?\)"):
        Attention(AttentionSpec(64, 4, 2, 16), backend="sdap")
    with pytest.raises(ValueError, match="unknown moe backend 'grouped_mm'; registered: gather, loop, grouped, triton"):
        MoE(MoESpec(64, 32, 4, 2), backend="grouped_mm")
    with pytest.raises(ValidationError, match="not a registered moe backend; registered: gather, loop, grouped, triton "
                                              r"\(did you mean 'loop'\?\)"):
        _moe_params(backend="lop")


def test_a_suite_with_an_unknown_backend_is_refused_at_its_line(registry, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nfamily: norm\npreset: gpt-oss-20b\ndtype: float32\nparams:\n  backend: fusd\n"
                     "variants:\n  a: {}\nsweep:\n  - mode: [prefill]\n    tokens: [8]\n")
    result = CliRunner().invoke(main, ["validate", str(suite)])
    assert result.exit_code == 2
    assert f"{suite}:6: [params.backend] backend: not a registered norm backend; registered: eager, compile, " \
           f"fused (did you mean 'fused'?) (got 'fusd')" in result.output


def test_a_registered_backend_reaches_the_schema_and_the_listing(registry):
    from ossbench.suite import suite_json_schema

    register_backend("norm", "my-norm", lambda kind: None, supports=Supports(devices=frozenset({"cuda"})))
    norm = next(f for f in describe_families() if f["name"] == "norm")
    assert next(p for p in norm["params"] if p["name"] == "backend")["type"] == "eager | compile | fused | my-norm"
    alternatives = suite_json_schema()["properties"]["params"]["properties"]["backend"]["anyOf"]
    assert any(alt["enum"] == ["eager", "compile", "fused", "my-norm"] for alt in alternatives)
    listing = CliRunner().invoke(main, ["list"])
    assert listing.exit_code == 0
    assert "my-norm" in listing.output and "devices: cuda" in listing.output


def test_a_plugin_backend_computes_the_family_and_is_skipped_where_it_says(registry, tmp_path):
    _plugin(registry, tmp_path, "fake_moe_plugin", (
        "from ossbench.backends import Supports, register_backend\n"
        "def experts(layer, t, routing):\n"
        "    return layer._gather(t, routing)  # any correct computation of the slots' expert outputs\n"
        "CALLS = 0\n"
        "def register():\n"
        "    global CALLS\n"
        "    CALLS += 1\n"
        "    register_backend('moe', 'fake-gather', experts, supports=Supports(train=False),\n"
        "                     description='a test plugin')\n"))
    import sys

    from ossbench.layers.moe import MoE
    from ossbench.layers.moe_spec import MoESpec

    assert "fake_moe_plugin" not in sys.modules  # nothing loaded before the first lookup
    assert backends.backend_names("moe") == ["gather", "loop", "grouped", "triton", "fake-gather"]
    assert backends.get_backend("moe", "fake-gather").origin == "fake_moe_plugin"
    torch.manual_seed(0)
    layer = MoE(MoESpec(64, 32, 4, 2), backend="fake-gather")
    x = torch.randn(8, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x, backend="gather"))
        assert not torch.equal(layer(x), x)
    moe = get_family("moe")
    workload = moe.build(_moe_params(backend="fake-gather"), "cpu", torch.float32)
    assert workload.check().ok
    with pytest.raises(SkipCase, match="^fake-gather has no backward pass$"):
        moe.build(_moe_params(backend="fake-gather", mode="train"), "cpu", torch.float32)
    assert sys.modules["fake_moe_plugin"].CALLS == 1  # loaded once, whatever the number of lookups


def test_an_attention_plugin_is_refused_with_its_own_reason_by_the_workload(registry):
    register_backend("attention", "gpu-only", lambda layer, q, k, v, mask: None,
                     supports=Supports(devices=frozenset({"cuda"}), reasons={"devices": "{name} is a CUDA kernel"}))
    attention = get_family("attention")
    values = {**attention.defaults(get_preset("gpt-oss-20b")), "backend": "gpu-only", "hidden": 64, "n_heads": 4,
              "n_kv_heads": 2, "head_dim": 16, "seq_len": 16, "kv_len": 16}
    with pytest.raises(SkipCase, match="^gpu-only is a CUDA kernel$"):
        attention.build(attention.params_model(**values), "cpu", torch.float32)


def test_a_plugin_that_fails_to_load_is_named_every_time(registry, tmp_path):
    _plugin(registry, tmp_path, "broken_plugin", "def register():\n    raise ImportError('needs triton 9')\n")
    for _ in range(2):  # not only on the first lookup
        with pytest.raises(PluginError, match="backend plugin 'broken_plugin' \\(broken_plugin:register, from the "
                                              "package 'broken_plugin'\\) failed to load: ImportError: needs triton 9"):
            backends.backend_names("attention")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nfamily: norm\npreset: gpt-oss-20b\nvariants:\n  a: {}\n"
                     "sweep:\n  - mode: [prefill]\n    tokens: [8]\n")
    result = CliRunner().invoke(main, ["validate", str(suite)])
    assert result.exit_code == 2 and "broken_plugin" in result.output and "Traceback" not in result.output


def test_docs_list_every_built_in_backend():
    """docs/backends.md's table of built-ins is the registry's (one row per family, names in order)."""
    from pathlib import Path

    all_families()
    text = (Path(__file__).resolve().parents[1] / "docs" / "backends.md").read_text()
    for family in BUILT_IN:
        names = ", ".join(f"`{b.name}`" for b in backends.backends(family) if b.origin == "ossbench")
        assert f"| {family} | {names} |" in text

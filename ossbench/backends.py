"""One registry of backends per layer family, open to plugins.

A backend is one way to compute a family's function: attention eager / sdpa / flex, moe gather / loop /
grouped, norm eager / compile / fused, activation and positions eager / compile. Each is registered once,
with its implementation hook (`build`), what it can express (`Supports`) and whether it can run on a device
(`available`), so that its name, its refusals and its dispatch live in one place. The params models, the
JSON Schema, `ossbench list` and the layers all read the names from here.

The built-in backends register themselves when their layer module is imported (ossbench.layers.*).
Third-party backends come from installed packages that declare an entry point in the group
`ossbench.backends`; they are loaded once, on the first lookup. What `build` is differs per family (the
layer calls it): see docs/backends.md.

This module sits below the layers: it imports no other ossbench module but errors.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Mapping, Union

from .errors import UserError

ENTRY_POINT_GROUP = "ossbench.backends"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.+-]*")  # lower case, no spaces or commas: names appear in case ids

# Where a feature works: True everywhere, False nowhere, or only on these device types ("cuda", "cpu").
Where = Union[bool, frozenset]


@dataclass(frozen=True)
class Request:
    """What one case asks of a backend. A family fills in the fields that apply to it."""

    device: str  # device type: "cpu", "cuda", ...
    dtype: str | None = None  # torch dtype name without "torch.", e.g. "bfloat16"; None: not checked
    train: bool = False  # a backward pass is needed
    sinks: bool = False  # attention: learned sink logits (an extra softmax column)
    masked: bool = False  # attention: a mask other than plain causal or full (a window, chunks, ...)
    dropout: bool = False  # attention: dropout on the attention probabilities (GPT-2's attn_pdrop)


def request(device: Any, dtype: Any = None, **features: bool) -> Request:
    """A Request from a torch device (or "cuda:1") and a torch dtype (or its name)."""
    return Request(device=str(device).split(":")[0],
                   dtype=str(dtype).removeprefix("torch.") if dtype is not None else None, **features)


# feature -> how a refusal reads by default ({name}: the backend, {device}: the request's device type)
_DEFAULT_REASONS = {
    "dropout": "{name} cannot drop out attention probabilities",
    "sinks": "{name} cannot express attention sinks",
    "masks": "{name} cannot express attention masks other than causal or full",
    "train": "{name} has no backward pass",
}


@dataclass(frozen=True)
class Supports:
    """What a backend can express. Each feature is True (everywhere), False (nowhere) or a frozenset of
    the device types where it works; `reasons` holds the backend's own refusal texts by feature name
    ("devices", "dtypes", "dropout", "sinks", "masks", "train"), with {device} filled in."""

    devices: frozenset | None = None  # device types it runs on; None: any
    dtypes: frozenset | None = None  # dtype names it runs in; None: any
    dropout: Where = True
    sinks: Where = True
    masks: Where = True
    train: Where = True
    reasons: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # accept any iterable, and torch dtypes as well as their names: stored as frozensets of names
        for key in ("devices", "dtypes"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, frozenset(str(v).removeprefix("torch.") for v in getattr(self, key)))
        for key in ("dropout", "sinks", "masks", "train"):
            if not isinstance(getattr(self, key), bool):
                object.__setattr__(self, key, frozenset(getattr(self, key)))

    def unsupported_reason(self, request: Request, name: str = "this backend") -> str | None:
        """Why a backend with these capabilities cannot run `request` (None when it can). The features are
        checked in a fixed order, so that a case refused for several reasons always gets the same one."""
        def refuse(feature: str, default: str) -> str:
            return self.reasons.get(feature, default).format(name=name, device=request.device)

        if request.dropout and not _works(self.dropout, request.device):
            return refuse("dropout", _on_device(_DEFAULT_REASONS["dropout"], self.dropout))
        if self.devices is not None and request.device not in self.devices:
            return refuse("devices", f"{{name}} runs on {', '.join(sorted(self.devices))}, not {{device}}")
        if self.dtypes is not None and request.dtype is not None and request.dtype not in self.dtypes:
            return refuse("dtypes", f"{{name}} runs in {', '.join(sorted(self.dtypes))}, not {request.dtype}")
        for feature in ("sinks", "masks", "train"):
            if getattr(request, "masked" if feature == "masks" else feature) \
                    and not _works(getattr(self, feature), request.device):
                return refuse(feature, _on_device(_DEFAULT_REASONS[feature], getattr(self, feature)))
        return None

    def limits(self) -> list[str]:
        """What the backend cannot do, in short words (for `ossbench list`): e.g. ["sinks: cuda only"]."""
        out = []
        if self.devices is not None:
            out.append("devices: " + ", ".join(sorted(self.devices)))
        if self.dtypes is not None:
            out.append("dtypes: " + ", ".join(sorted(self.dtypes)))
        for feature in ("sinks", "masks", "train", "dropout"):
            where = getattr(self, feature)
            if where is False:
                out.append(f"no {feature}")
            elif where is not True:
                out.append(f"{feature}: {', '.join(sorted(where))} only")
        return out


def _works(where: Where, device: str) -> bool:
    return where if isinstance(where, bool) else device in where


def _on_device(text: str, where: Where) -> str:
    return text if where is False else text + " on {device}"


def _always_available(device: str) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One registered backend of one family."""

    family: str
    name: str
    build: Callable[..., Any]  # the family's implementation hook (its signature: docs/backends.md)
    supports: Supports = Supports()
    available: Callable[[str], str | None] = _always_available  # device type -> why it cannot run there
    description: str = ""
    origin: str = "ossbench"  # "ossbench" for the built-ins, else the plugin's distribution name
    # it compiles a kernel per new shape on first call (torch.compile): the planner adds a compile time
    compiles: bool = False

    def unsupported_reason(self, request: Request) -> str | None:
        """Why this backend cannot run `request`: not available on the device, or a feature it lacks."""
        return self.available(request.device) or self.supports.unsupported_reason(request, self.name)


class PluginError(UserError):
    """An installed backend plugin that fails to load (exit code 2 from the CLI)."""


_REGISTRY: dict[str, dict[str, Backend]] = {}  # family -> name -> backend, in registration order


@dataclass
class _Plugins:
    loaded: bool = False
    loading: str | None = None  # the distribution whose entry point is being loaded (origin of its backends)
    error: PluginError | None = None  # a failure, raised again on every lookup until the plugin is fixed


_PLUGINS = _Plugins()


def register_backend(family: str, name: str, build: Callable[..., Any], *,
                     available: Callable[[str], str | None] | None = None, supports: Supports | None = None,
                     description: str = "", compiles: bool = False) -> Backend:
    """Register backend `name` of `family`; `build` is what the family's layer calls (docs/backends.md).

    `available(device_type)` says why the backend cannot run on a device (None: it can), for what its
    features do not cover (a missing package, an old torch); `supports` says what it can express;
    `compiles`: its first call on a new shape compiles a kernel (the run planner counts a compile time).
    A name is registered once per family: a plugin cannot replace a built-in."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"backend name {name!r}: use lower-case letters, digits and . _ + - (it goes into "
                         f"case ids)")
    known = _REGISTRY.setdefault(family, {})
    if name in known:
        raise ValueError(f"{family} backend {name!r} is already registered (by {known[name].origin})")
    backend = Backend(family, name, build, supports or Supports(), available or _always_available, description,
                      _PLUGINS.loading or "ossbench", compiles)
    known[name] = backend
    return backend


def backends(family: str) -> list[Backend]:
    """Every registered backend of `family`: the built-ins, then the plugins', in registration order."""
    load_plugins()
    return list(_REGISTRY.get(family, {}).values())


def backend_names(family: str) -> list[str]:
    return [b.name for b in backends(family)]


def families() -> list[str]:
    """The families that have backends."""
    load_plugins()
    return list(_REGISTRY)


def get_backend(family: str, name: str) -> Backend:
    """The backend `name` of `family`; ValueError naming the registered ones when there is none."""
    load_plugins()
    found = _REGISTRY.get(family, {}).get(name)
    if found is None:
        raise ValueError(f"unknown {family} backend {name!r}; {unknown_backend_hint(family, name)}")
    return found


def unsupported_reason(family: str, name: str, device: Any, dtype: Any = None, **features: bool) -> str | None:
    """Why backend `name` of `family` cannot run a case on `device` in `dtype` with `features` (the other
    fields of Request: train, sinks, masked, dropout); None when it can."""
    return get_backend(family, name).unsupported_reason(request(device, dtype, **features))


def unknown_backend_hint(family: str, name: Any) -> str:
    """"registered: a, b, c (did you mean 'b'?)" for a name that is not a backend of `family`."""
    names = backend_names(family)
    close = difflib.get_close_matches(name, names, n=1) if isinstance(name, str) else []
    return f"registered: {', '.join(names) or 'none'}" + (f" (did you mean {close[0]!r}?)" if close else "")


def layer_method(name: str) -> Callable[..., Any]:
    """A build hook that calls the layer's own method `name`: build(layer, *args) = layer.<name>(*args),
    looked up on each call so that a subclass's override (or a test's spy) is the one that runs."""
    def call(layer: Any, *args: Any) -> Any:
        return getattr(layer, name)(*args)
    call.__qualname__ = f"layer_method({name!r})"
    return call


# --- plugins


def load_plugins() -> None:
    """Load every `ossbench.backends` entry point once. An entry point names a callable (called with no
    arguments; it calls register_backend) or a module (importing it registers). A failure raises
    PluginError naming the plugin, now and on every later lookup."""
    if _PLUGINS.error is not None:
        raise _PLUGINS.error
    if _PLUGINS.loaded:
        return
    _PLUGINS.loaded = True  # before loading: a plugin that looks backends up must not load itself again
    for ep in _entry_points():
        dist = ep.dist.name if getattr(ep, "dist", None) is not None else ep.name
        _PLUGINS.loading = dist
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as e:  # noqa: BLE001 - whatever a plugin raises, the user must learn which one
            _PLUGINS.error = PluginError(
                f"backend plugin {ep.name!r} ({ep.value}, from the package {dist!r}) failed to load: "
                f"{type(e).__name__}: {e}. Fix or uninstall that package (pip uninstall {dist}).")
            raise _PLUGINS.error from e
        finally:
            _PLUGINS.loading = None


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)  # a stable order

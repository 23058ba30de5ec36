"""The ``pytest11`` entry point: a switch that loads ossbench's pytest plugin only when asked for.

pytest imports every ``pytest11`` entry point of every installed package at start-up (unless
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` is set), so a plugin there is active in every project that merely has
ossbench installed. This module is what the entry point names instead: it defines one hook and no
fixture, option or marker. The hook turns the real plugin (``ossbench.pytest_plugin``) on when the user
asked for it by the entry point's name:

- ``-p ossbench`` (on the command line, in ``addopts`` or in ``PYTEST_ADDOPTS``), which also works with
  autoloading disabled, since pytest looks ``-p`` names up among the entry points;
- ``PYTEST_PLUGINS=ossbench``.

``-p no:ossbench`` blocks the name, so not even this module loads. A conftest enables the plugin with
``pytest_plugins = ["ossbench.pytest_plugin"]`` (the module itself: under autoloading the name
``ossbench`` is already taken by this switch, and pytest would not load it twice). See docs/pytest.md.
"""

from __future__ import annotations

import os

import pytest

ENTRY_POINT = "ossbench"  # the name in pyproject's [project.entry-points.pytest11]
PLUGIN = "ossbench.pytest_plugin"
# `-p` names that mean "turn it on": the entry point's name, and this module's (which also works where
# the package is not installed, e.g. from a source checkout).
_SWITCH_NAMES = frozenset({ENTRY_POINT, __name__})


def asked_for(plugin_args: list[str] | None, env_plugins: str | None) -> bool:
    """Whether ``-p`` values (``plugin_args``) or ``PYTEST_PLUGINS`` (``env_plugins``) name the switch."""
    names = {p.strip() for p in plugin_args or []}
    names |= {p.strip() for p in (env_plugins or "").split(",")}
    return bool(names & _SWITCH_NAMES)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Runs once `-p` and PYTEST_PLUGINS are processed and before the command line is parsed for good, so
    # the plugin's options are known to that parse (pytest_addoption is replayed for a late plugin).
    plugin_args = getattr(early_config.known_args_namespace, "plugins", None)
    if asked_for(plugin_args, os.environ.get("PYTEST_PLUGINS")):
        early_config.pluginmanager.import_plugin(PLUGIN)  # a no-op when a conftest already loaded it

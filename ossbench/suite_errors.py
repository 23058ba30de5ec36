"""Turning pydantic validation errors into one user-facing SuiteError at the user's own YAML path.

pydantic's error locations can hold its internals (a union member such as
``dict[str,list[nullable[...]]]``, or the index of a block the validator wrapped into a list); users must
see the path they wrote (``sweep.seq_len[2]``), the line it is on, and a reason in plain words.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from .errors import SuiteError
from .suite_yaml import YamlPath

if TYPE_CHECKING:
    from .suite import Suite

# An unknown key usually explains a "missing" one (a typo), so it is reported first.
_ERROR_ORDER = {"extra_forbidden": 0, "missing": 2}


def user_path(data: Any, loc: tuple) -> YamlPath:
    """The part of a pydantic location that indexes into the validated data, i.e. the user's YAML path.

    Parts that do not index into the data at that point (union member tags, a list index where the
    user wrote a mapping) are pydantic's and are dropped; a last part that is absent is kept (a missing
    or unknown key)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part == "[key]":  # pydantic's marker for an error in the mapping key just before it
            continue
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and not isinstance(part, bool) \
                and 0 <= part < len(data):
            data = data[part]
        elif i == len(loc) - 1 and isinstance(data, dict) and isinstance(part, str):
            data = None
        else:
            continue
        out.append(part)
    return tuple(out)


def message(err: Any) -> str:
    # pydantic prefixes messages raised by validators with "Value error, "; the user needs only the reason
    return err["msg"].removeprefix("Value error, ")


def got(err: Any) -> str:
    """` (got VALUE)` for a rejected scalar input; nothing for a mapping or list (too long to repeat)."""
    if err["type"] in ("extra_forbidden", "missing") or "input" not in err:
        return ""
    return "" if isinstance(err["input"], (dict, list)) else f" (got {err['input']!r})"


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_error(suite: Suite, e: ValidationError, data: Any, prefix: YamlPath = (),
                known_keys: Callable[[YamlPath], list[str]] = lambda at: [], context: str = "") -> SuiteError:
    """The most telling of `e`'s errors (data: what was validated, at YAML path `prefix`), and a count of
    the others at distinct places."""
    errors = e.errors()
    err = min(errors, key=lambda x: _ERROR_ORDER.get(x["type"], 1))
    loc = prefix + user_path(data, tuple(err["loc"]))
    others = len({user_path(data, tuple(x["loc"])) for x in errors} - {loc[len(prefix):]})
    more = f" (and {others} more error(s))" if others else ""
    return suite.error(_text(err, loc, known_keys) + context + more, loc)


def all_errors(suite: Suite, e: ValidationError, data: Any, prefix: YamlPath = (),
               known_keys: Callable[[YamlPath], list[str]] = lambda at: []) -> list[SuiteError]:
    """Every one of `e`'s errors, one per place (the most telling there), in the order of their lines."""
    by_place: dict[YamlPath, dict] = {}
    for err in sorted(e.errors(), key=lambda x: _ERROR_ORDER.get(x["type"], 1)):
        by_place.setdefault(prefix + user_path(data, tuple(err["loc"])), err)
    found = [suite.error(_text(err, loc, known_keys), loc) for loc, err in by_place.items()]
    return sorted(found, key=lambda x: (x.line is None, x.line or 0))


def _text(err: dict, loc: YamlPath, known_keys: Callable[[YamlPath], list[str]]) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown field {loc[-1]!r}" + did_you_mean(str(loc[-1]), known_keys(loc[:-1]))
    if err["type"] == "missing":
        return f"missing required field {loc[-1]!r}"
    if "[key]" in err["loc"] and err["type"] == "string_type":
        return f"the key {err['input']!r} must be text (quote it in the YAML)"
    return message(err) + got(err)

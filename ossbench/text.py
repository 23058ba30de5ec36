"""Names from suites and results files made safe to show: in a terminal, a markdown table or XML.

A case id, variant, label or error is user input. Written raw, an ESC starts a terminal escape sequence
(colours, cursor moves, a window title, a hyperlink), a bidi override reorders what the reader sees, XML 1.0
forbids most C0 controls, and a lone surrogate (legal in JSON as ``\\ud800``) cannot be encoded at all.
`printable` shows each such character as a visible escape instead.
"""

from __future__ import annotations

import re

# C0 and C1 controls with DEL, lone surrogates, the XML non-characters U+FFFE/U+FFFF, and the zero-width and
# bidi formatting characters that change how the rest of a line looks.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with every control, formatting or unencodable character written as ``\\xNN`` or
    ``\\uNNNN``, e.g. ``"a\\x1b[31mb"`` prints as the nine visible characters ``a\\x1b[31mb``. A backslash
    is left as it is (ids rarely hold one), so the escape is for reading, not a reversible encoding."""
    return _UNSAFE.sub(_escape, str(text))


def term_text(text: object) -> str:
    """A name for a rich console: `printable`, then rich markup escaped so ``[red]`` shows as typed. (rich's
    own `Text` and `escape` pass ESC through to the terminal untouched.)"""
    from rich.markup import escape

    return escape(printable(text))

"""How a page gets plotly.js: inlined (the default: the page works offline and alone), from plotly's CDN, or
from one shared copy beside many reports (``--plotly-js FILE``: a CI that keeps hundreds of reports stores
the 4.8 MB bundle once).

``PlotlyJs.parse("inline" | "cdn" | PATH)`` reads the option; ``script_tag(page_dir)`` is the ``<script>``
the page carries; ``ensure_copy()`` writes the shared file (when it is missing or differs from this
plotly's bundle) and is called by the ``write_*`` functions, never by ``render_*``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from markupsafe import Markup, escape

from ..errors import UserError
from ..results import write_atomic

CDN = "https://cdn.plot.ly/plotly-{version}.min.js"


@dataclass(frozen=True)
class PlotlyJs:
    mode: Literal["inline", "cdn", "file"] = "inline"
    path: Path | None = None  # mode "file": the shared copy (as given: relative to the current directory)

    @classmethod
    def parse(cls, value: str | os.PathLike | "PlotlyJs" | None) -> "PlotlyJs":
        """"inline" (or None), "cdn", or a file path (a ``.js`` file, created when missing)."""
        if isinstance(value, PlotlyJs):
            return value
        if value is None or str(value) == "inline":
            return cls()
        if str(value) == "cdn":
            return cls("cdn")
        path = Path(value)
        if path.is_dir():
            raise UserError(f"--plotly-js {path}: is a directory; give a file such as {path / 'plotly.min.js'}")
        return cls("file", path)

    def script_tag(self, page_dir: str | os.PathLike | None = None) -> Markup:
        """The page's ``<script>`` for plotly.js; a shared file is referred to relative to `page_dir` (the
        folder the page is written to; default the current directory)."""
        if self.mode == "inline":
            return Markup(f"<script>{bundle()}</script>")
        if self.mode == "cdn":
            src = CDN.format(version=version())
            return Markup(f'<script src="{escape(src)}" charset="utf-8"></script>')
        assert self.path is not None
        rel = os.path.relpath(self.path.resolve(), Path(page_dir or ".").resolve())
        src = quote(Path(rel).as_posix())
        return Markup(f'<script src="{escape(src)}" charset="utf-8"></script>')

    def ensure_copy(self) -> Path | None:
        """Mode "file": write this plotly's bundle to the shared path unless it already holds exactly that."""
        if self.mode != "file":
            return None
        assert self.path is not None
        js = str(bundle())
        try:
            if self.path.read_text(encoding="utf-8") == js:
                return self.path
        except (OSError, UnicodeDecodeError):
            pass
        try:
            return write_atomic(self.path, js)
        except OSError as e:
            raise UserError(f"--plotly-js {self.path}: cannot write the shared plotly.js ({e.strerror or e})") from None


@lru_cache(maxsize=1)
def bundle() -> Markup:
    """plotly.js as shipped with the installed plotly, checked to be safe to inline in a ``<script>``."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    # Inlined as raw script text, so a "</script" inside would end the tag early and break the page.
    if "</script" in js.lower():
        raise RuntimeError("this plotly.js bundle contains '</script' and cannot be inlined")
    return Markup(js)


def version() -> str:
    from plotly.offline import get_plotlyjs_version

    return get_plotlyjs_version()

"""User-facing errors. The CLI turns each into one clear message and exit code 2 (never a traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in something the user gave us (a suite, a results file, an option)."""

    exit_code = 2


class SuiteError(UserError):
    """A suite file that cannot be loaded, validated or expanded.

    `path` is the file, `line` the 1-based line where known, `field` the dotted field path
    (e.g. ``variants.window128.window``).
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message, self.path, self.line, self.field = message, path, line, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<suite>"
        if self.line is not None:
            where += f":{self.line}"
        field = f" [{self.field}]" if self.field else ""
        return f"{where}:{field} {self.message}"


class SuiteErrors(SuiteError):
    """Every error found in one suite (`ossbench validate`): the first as this error's own fields, all of
    them, one per line, as its text."""

    def __init__(self, errors: list[SuiteError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, path=first.path, line=first.line, field=first.field)

    def __str__(self) -> str:
        return "\n".join(SuiteError.__str__(e) for e in self.errors)


class ResultsError(UserError):
    """A results file that is missing, corrupt, or not an ossbench results file."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.message, self.path = message, path
        super().__init__(f"{path}: {message}" if path else message)


class SkipCase(Exception):
    """Raised by a workload builder when a backend cannot express a case; the reason is recorded."""

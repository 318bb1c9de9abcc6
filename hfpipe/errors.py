"""User-facing errors: one family, each carrying where it happened, each with its own exit code.

Library code raises these and never exits; the CLI prints ``str(error)`` on one line and exits with
``error.exit_code``. Anything else escaping is a bug in hfpipe and keeps its traceback.

The exit-code contract (README "Exit codes"; tests/test_exit_codes.py):
    0 success · 1 any other failure · 2 recipe or usage error · 3 data error · 4 training diverged ·
    5 a --fail-under gate failed · 130 interrupted (a checkpoint was saved when training)
"""

from __future__ import annotations

import os
import reprlib


class HfpipeError(Exception):
    """Base class: a message plus an optional location (file, line, key)."""

    exit_code = 1
    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.key = key

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class RecipeError(HfpipeError):
    """The recipe (file, extends chain or command-line overrides) is invalid. Exit code 2."""

    exit_code = 2
    kind = "recipe error"

    def __init__(self, message: str, *, more: list[RecipeError] | None = None, **where) -> None:
        super().__init__(message, **where)
        self.more = more or []

    def all(self) -> list[RecipeError]:
        return [self, *self.more]


class UsageError(HfpipeError):
    """The command cannot run as asked (an occupied output directory, a run directory that is not a run,
    flags that contradict each other). Exit code 2, as a recipe error: fix the command, then rerun."""

    exit_code = 2
    kind = "usage error"


class DataError(HfpipeError):
    """The data named by the recipe cannot be used as it is (file, line or row, column). Exit code 3."""

    exit_code = 3
    kind = "data error"


class TrainingError(HfpipeError):
    """Training diverged: a non-finite loss with train.on_nonfinite_loss: stop. Exit code 4."""

    exit_code = 4
    kind = "training error"


class RunError(UsageError):
    """A run directory given to a command is missing, incomplete or of the wrong kind. Exit code 2."""

    kind = "run error"


class MissingPackage(UsageError):
    """A model, tokenizer or tracker needs a Python package that is not installed. Exit code 2: install it,
    then rerun."""

    kind = "missing package"

    def __init__(self, package: str, needed_by: str, **where) -> None:
        super().__init__(f"{needed_by} needs the {package} package: pip install {package}", **where)
        self.package = package


class GateFailed(HfpipeError):
    """A --fail-under gate: the run worked, a metric came out below its threshold. Exit code 5."""

    exit_code = 5
    kind = "gate failed"


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 300 characters), or its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def shown_path(path: str) -> str:
    """A path as messages show it: relative to the current directory when that is short."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("../..") else path


def did_you_mean(word: str, options) -> str:
    """'; did you mean 'x'?' for an option that looks like a typo of `word`, or ''.

    A typo is a few edits (a letter added, dropped, changed, or two swapped; one per four letters of the
    shorter name, at least one): 'clasification' -> 'classification', 'lrr' -> 'lr'. A name that only
    shares a part is no typo: 'token-classification' is another task, not 'classification'.
    """
    if not isinstance(word, str) or len(word) > 100:
        return ""
    close = []
    for option in options:
        distance = edit_distance(word.lower(), str(option).lower())
        if distance <= max(1, min(len(word), len(str(option))) // 4):
            close.append((distance, str(option)))
    return f"; did you mean {min(close)[1]!r}?" if close else ""


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`."""
    previous2, previous = [], list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


def decode_utf8(raw: bytes, error: type[HfpipeError], file: str) -> str:
    """`raw` as text (a leading byte-order mark dropped), or `error` naming the line of the first byte that
    is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(
            f"not UTF-8 text (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8", file=file, line=line
        ) from None


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to at most `limit` characters, "..." marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A few items per level and a few levels: an excerpt costs little even for a list of thousands of items
# that aliases share.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxdict = 6


def excerpt(value, limit: int = 80) -> str:
    """A repr of `value` in at most `limit` characters: what an error message shows of a user's value."""
    try:
        return clip(_SHORT.repr(value), limit)
    except ValueError:  # an int too long for str() (Python's 4,300-digit limit)
        return f"<{type(value).__name__}>"

"""What a person (or a CI log) sees while hfpipe works: the training progress bar, the final summary.

Three audiences. A terminal gets a live rich bar (steps, elapsed, ETA, loss, lr, tokens/s) that logs
scroll above; a log file (CI) gets a plain line about every 10% of the run instead of a bar; `--quiet`
gets warnings and errors only, and `--json` one machine-readable line on stdout at the end.

The output mode (quiet, json) belongs to whoever owns the terminal: the CLI sets it once per command with
`configure`, as it configures `logging`; a script may too, and gets everything printed if it does not.
It decides only what is printed, never what is computed, and it holds nothing else: how much the
libraries say is an argument of the library's entry points (`verbose=`), not a setting read here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class Settings:
    quiet: bool = False  # --quiet: no bar, no progress lines, no tables
    json: bool = False  # --json: the final line on stdout is a JSON object (tables go away)


SETTINGS = Settings()


def configure(*, quiet: bool = False, json: bool = False) -> None:
    SETTINGS.quiet, SETTINGS.json = quiet, json


def summary_table(rows: list[tuple], header: tuple[str, ...], title: str | None = None) -> None:
    """A table on stdout (rich; plain characters when stdout is not a terminal). Not with --quiet / --json."""
    if SETTINGS.quiet or SETTINGS.json:
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*header, title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(soft_wrap=True).print(table)


def say(text: str) -> None:
    """A line for people on stdout (not with --quiet / --json)."""
    if not (SETTINGS.quiet or SETTINGS.json):
        print(text, flush=True)


def final_json(record: dict) -> None:
    """With --json, the one machine-readable line on stdout."""
    if SETTINGS.json:
        import json

        from hfpipe.io import jsonable

        # strict JSON: a NaN / infinite metric becomes null (as in metrics.json), never a bare NaN token
        print(json.dumps(jsonable(record), default=str, allow_nan=False), flush=True)


def interactive() -> bool:
    """A live bar makes sense: stderr is a terminal and nobody asked for silence or JSON."""
    return sys.stderr.isatty() and not SETTINGS.quiet and not SETTINGS.json


class TrainProgress:
    """The training bar: a rich progress bar on a terminal, nothing elsewhere (the loop logs lines)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("•"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=Console(stderr=True),
            transient=True,  # the bar goes when training ends; the summary stays
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("train", total=total, completed=initial, stats="")
        self._progress.start()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def stats(self, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._progress is not None:
            text = f"loss {loss:.4f} • lr {lr:.2e} • {tokens_per_s:,.0f} tok/s"
            self._progress.update(self._task, stats=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

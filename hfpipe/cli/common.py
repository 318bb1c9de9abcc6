"""What every command shares: argument types, error-to-exit-code mapping, logging."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer


def complete_recipe(incomplete: str) -> list[str]:
    """Shell completion of a recipe path: directories and .yaml / .yml files under what is typed."""
    import os

    folder, _, start = incomplete.rpartition(os.sep)
    base = Path(folder or ".")
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(start) or (entry.name.startswith(".") and not start.startswith(".")):
            continue
        shown = f"{folder}{os.sep}{entry.name}" if folder else entry.name
        if entry.is_dir():
            out.append(shown + os.sep)
        elif entry.suffix in (".yaml", ".yml"):
            out.append(shown)
    return out


def complete_override(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of a `key=value` override: dotted keys of the schema (with their help), then the
    values of keys that take a fixed list (task names, architectures, enums, booleans)."""
    from hfpipe.recipe.editor import override_keys, override_values

    if "=" in incomplete:
        key, _, value = incomplete.partition("=")
        return [(f"{key}={v}", "") for v in override_values(key) if v.startswith(value)]
    prefix = incomplete.lstrip("~")
    deleting = incomplete.startswith("~")
    keys = [(k, help) for k, help in override_keys() if k.startswith(prefix)]
    if deleting:
        return [("~" + k, help) for k, help in keys]
    return [(f"{k}=", help) for k, help in keys]


def complete_recipe_or_override(incomplete: str) -> list:
    """`hfpipe validate`'s arguments: recipe paths, then overrides once nothing on disk matches."""
    if "=" in incomplete or incomplete.startswith("~"):
        return complete_override(incomplete)
    return complete_recipe(incomplete) or complete_override(incomplete)


RecipeArg = Annotated[
    Path,
    typer.Argument(help="Recipe YAML file.", show_default=False, autocompletion=complete_recipe),
]
RunDirArg = Annotated[
    Path, typer.Argument(help="Run directory written by `hfpipe train`.", show_default=False)
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Overrides applied before validation: key.sub=value (YAML value) or ~key (delete).",
        show_default=False,
        autocompletion=complete_override,
    ),
]


@contextlib.contextmanager
def user_errors():
    """Print a user error on one line (stderr) and exit with its code; let real bugs keep their traceback."""
    from hfpipe.errors import HfpipeError

    try:
        yield
    except HfpipeError as exc:
        typer.echo(str(exc), err=True)
        _report_exit(exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        _report_exit(130)
        raise typer.Exit(130) from None


def _report_exit(code: int) -> None:
    """Inside a process started by `hfpipe train --num-processes` (accelerate launch / torchrun), leave the
    error's exit code where the parent finds it: torchrun reports any failure as 1."""
    import os

    path = os.environ.get("HFPIPE_EXIT_FILE")
    if path:
        try:
            with open(path, "x") as f:  # the first process to fail decides
                f.write(str(code))
        except OSError:
            pass


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Warnings and errors only: no progress, no tables.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="End with one JSON line on stdout (for scripts and CI); no tables.")
]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Debug lines, and the libraries' own logs and progress bars."),
]


def setup_logging(verbose: bool = False, quiet: bool = False, json: bool = False) -> None:
    from hfpipe import console

    console.configure(quiet=quiet, json=json)
    logging.basicConfig(
        handlers=[_StderrHandler()],
        format="hfpipe: %(message)s",
        force=True,
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
    )
    # Third-party INFO chatter (datasets, accelerate) hides what matters, unless asked for.
    for name in ("datasets", "accelerate", "transformers", "httpx", "filelock", "urllib3", "matplotlib"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # "Removed shared tensor lm_head.weight while saving": tied embeddings, expected for GPT-2.
    logging.getLogger("accelerate").setLevel(logging.ERROR)

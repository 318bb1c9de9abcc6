"""The `hfpipe` command: a Typer app whose commands live one group per module. Nothing heavy at import."""

from __future__ import annotations

from typing import Annotated

import typer

from hfpipe import __version__

app = typer.Typer(
    name="hfpipe",
    help="Fine-tune, pretrain and evaluate Hugging Face transformer models from YAML recipes.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hfpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune, pretrain and evaluate Hugging Face transformer models from YAML recipes."""


from hfpipe.cli import recipes as _recipes  # noqa: E402  (commands register on `app`)
from hfpipe.cli import run as _run  # noqa: E402, F401

_recipes.register(app)
_run.register(app)


def main() -> None:
    app()

"""Commands about recipes: validate, recipes (bundled ones), tasks (registries), schema. No torch here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hfpipe.cli.common import complete_recipe_or_override
from hfpipe.formatting import table


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Recipe paths and overrides (key=value / ~key) from one argument list, in order."""
    paths, overrides = [], []
    for arg in args:
        (overrides if ("=" in arg and not _is_file(arg)) or arg.startswith("~") else paths).append(arg)
    return paths, overrides


def _is_file(arg: str) -> bool:
    try:
        return Path(arg).exists()
    except (OSError, ValueError):  # longer than a file name may be, or a NUL byte: not a file
        return False


def validate(
    args: Annotated[
        list[str],
        typer.Argument(
            help="Recipe files, then optional key=value / ~key overrides applied to each.",
            show_default=False,
            autocompletion=complete_recipe_or_override,
        ),
    ],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems.")] = False,
    schema_only: Annotated[
        bool,
        typer.Option(
            "--schema-only",
            help="Check the recipes alone, not the files and packages they need on this machine.",
        ),
    ] = False,
) -> None:
    """Check recipes against the schema, and that the files, folders and packages they need are on this
    machine, without importing torch or running anything they name.

    Prints one line per recipe; every problem is one line `file:line: key: message`. Exit code 2 when
    any recipe is invalid.
    """
    from hfpipe.errors import RecipeError
    from hfpipe.preflight import problems
    from hfpipe.recipe import load_recipe

    paths, overrides = _split_args(args)
    if not paths:
        typer.echo("validate: give at least one recipe file", err=True)
        raise typer.Exit(2)
    failed = 0
    for path in paths:
        try:
            recipe = load_recipe(path, overrides)
        except RecipeError as exc:
            failed += 1
            for err in exc.all():
                typer.echo(str(err), err=True)
            continue
        found = [] if schema_only else problems(recipe)  # here: the files it names, the packages it needs
        if found:
            failed += 1
            for err in found:
                typer.echo(f"{path}: {err}", err=True)
            continue
        if recipe.model.trust_remote_code:
            typer.echo(
                f"{path}: warning: model.trust_remote_code is true: loading this model runs code "
                "from its repository",
                err=True,
            )
        if not quiet:
            model = recipe.model.name_or_path or f"{recipe.model.architecture} from config"
            typer.echo(f"ok  {path}  ({recipe.task}, {model})")
    if failed:
        typer.echo(f"{failed} of {len(paths)} recipe(s) invalid", err=True)
        raise typer.Exit(2)


recipes_app = typer.Typer(
    help="The bundled recipes: list them (no arguments), or copy one into a folder to edit.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@recipes_app.callback()
def recipes(ctx: typer.Context) -> None:
    """List the bundled recipes, one line each: run one by name, or copy it to edit."""
    if ctx.invoked_subcommand is not None:
        return
    import yaml

    from hfpipe.recipe import bundled

    rows = []
    for name in bundled.names():
        try:
            data = yaml.safe_load((bundled.FOLDER / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            data = {}
        rows.append((name, str(data.get("task", "?")), str(data.get("description", ""))))
    if not rows:
        typer.echo(f"no recipes found in {bundled.FOLDER}", err=True)
        raise typer.Exit(1)
    typer.echo(table(rows, ("recipe", "task", "description")))
    typer.echo(
        "\nRun one by name from any directory (its paths resolve there): hfpipe train NAME [key=value ...]"
        "\nCopy one to edit: hfpipe recipes copy NAME [DIR]"
    )


@recipes_app.command("copy")
def copy(
    name: Annotated[
        str, typer.Argument(help="A bundled recipe (`hfpipe recipes` lists them).", show_default=False)
    ],
    folder: Annotated[Path, typer.Argument(help="Where the copy goes.")] = Path("."),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace files of the same name there.")
    ] = False,
) -> None:
    """Copy a bundled recipe (and the recipes it extends) into FOLDER to edit; its relative paths are
    rewritten to point where the bundled recipe run from here points."""
    from hfpipe.cli.common import user_errors
    from hfpipe.recipe.copying import copy

    with user_errors():
        for path in copy(name, folder, overwrite=overwrite):
            typer.echo(f"wrote {path}")


def tasks() -> None:
    """List the tasks, the architectures that build from scratch, and the built-in datasets."""
    from hfpipe.architectures import ARCHITECTURES
    from hfpipe.builtin_data import GENERATORS
    from hfpipe.tasks import TASKS, task_names

    task_names()
    typer.echo(table([(t.name, t.description) for t in TASKS.values()], ("task", "description")))
    typer.echo("")
    typer.echo(
        table(
            [(a.name, a.description) for a in ARCHITECTURES.values()], ("model.architecture", "description")
        )
    )
    typer.echo("")
    typer.echo(
        table(
            [(name, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in GENERATORS.items()],
            ("data.builtin.name", "description"),
        )
    )


def schema(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the schema to this file instead of printing it."),
    ] = None,
) -> None:
    """Print (or write) the recipe JSON Schema, for editors and CI.

    A recipe whose first line is `# yaml-language-server: $schema=PATH` is validated and completed by
    editors with the YAML language server; bundled recipes point at recipes/recipe.schema.json.
    """
    from hfpipe.recipe.editor import editor_schema

    text = json.dumps(editor_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    from hfpipe.io import atomic_write_text

    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text)
    typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.add_typer(recipes_app, name="recipes")
    app.command()(tasks)
    app.command()(schema)

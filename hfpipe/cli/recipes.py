"""Commands about recipes: validate, recipes (bundled ones), tasks (registries), schema. No torch here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hfpipe.cli.common import complete_recipe_or_override, table


def bundled_recipes_dir() -> Path:
    import hfpipe

    return Path(hfpipe.__file__).resolve().parent.parent / "recipes"


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Recipe paths and overrides (key=value / ~key) from one argument list, in order."""
    paths, overrides = [], []
    for arg in args:
        (overrides if ("=" in arg and not Path(arg).exists()) or arg.startswith("~") else paths).append(arg)
    return paths, overrides


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
) -> None:
    """Check recipes against the schema without importing torch or running anything they name.

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
        found = problems(recipe)  # on this machine: the files it names, the packages its model needs
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


def recipes() -> None:
    """List the bundled recipes, one line each."""
    import yaml

    folder = bundled_recipes_dir()
    rows = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            data = {}
        rows.append((f"recipes/{path.name}", str(data.get("task", "?")), str(data.get("description", ""))))
    if not rows:
        typer.echo(f"no recipes found in {folder}", err=True)
        raise typer.Exit(1)
    typer.echo(table(rows, ("recipe", "task", "description")))
    typer.echo("\nRun one with: hfpipe train RECIPE [key=value ...]")


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
    app.command()(recipes)
    app.command()(tasks)
    app.command()(schema)

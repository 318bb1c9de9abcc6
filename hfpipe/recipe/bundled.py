"""The recipes that ship inside the package (hfpipe/recipes/): listed by `hfpipe recipes`, run by name
(`hfpipe train quickstart`), copied into a folder to edit (`hfpipe recipes copy quickstart DIR`).

A bundled recipe is a template for the directory it runs from: its relative paths (output_dir: runs/x, a
chain's ./runs/y, data beside the project) resolve against the current directory, however the file is
named (by name, or through the checkout's recipes/ folder), never against the package folder (copying.py
makes an editable copy)."""

from __future__ import annotations

import os
from pathlib import Path

from hfpipe.errors import RecipeError, did_you_mean

FOLDER = Path(__file__).resolve().parent.parent / "recipes"
SCHEMA = "recipe.schema.json"  # beside the recipes: the schema editors read


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def is_bundled(path: Path) -> bool:
    try:
        return Path(path).resolve().parent == FOLDER
    except (OSError, ValueError):
        return False


def locate(argument: str | os.PathLike) -> Path:
    """The recipe file an argument names: a file, or the bundled recipe of that name (quickstart or
    quickstart.yaml, when no such file is here)."""
    path = Path(argument)
    try:
        if path.exists() or len(path.parts) != 1:
            return path
    except (OSError, ValueError):  # a NUL byte, a name too long: the reader says so
        return path
    bundled = FOLDER / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return bundled if bundled.is_file() else path


def not_found(argument: str | os.PathLike) -> RecipeError:
    name = Path(argument).name.removesuffix(".yaml")
    return RecipeError(
        f"recipe file not found, nor a bundled recipe of that name{did_you_mean(name, names())} "
        "(`hfpipe recipes` lists them)",
        file=str(argument),
    )

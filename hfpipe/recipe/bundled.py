"""The recipes that ship inside the package (hfpipe/recipes/): listed by `hfpipe recipes`, run by name
(`hfpipe train quickstart`), copied into a folder to edit (`hfpipe recipes copy quickstart DIR`).

A bundled recipe is a template for the directory it runs from: its relative paths (output_dir: runs/x, a
chain's ./runs/y, data beside the project) resolve against the current directory, however the file is
named (by name, or through the checkout's recipes/ folder), never against the package folder. A copy has
its relative paths rewritten so that they point where the bundled recipe, run from the current
directory, points."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hfpipe.errors import RecipeError, UsageError, did_you_mean

FOLDER = Path(__file__).resolve().parent.parent / "recipes"
SCHEMA = "recipe.schema.json"


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


def copy(name: str, folder: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Copy bundled recipe `name` (and the bundled recipes it extends) into `folder`, with the schema file
    editors read; relative paths rewritten to point where they point from the current directory."""
    source = locate(name)
    if not is_bundled(source):
        raise UsageError(
            f"no bundled recipe {name!r}{did_you_mean(name, names())} (`hfpipe recipes` lists them)"
        )
    folder = Path(folder)
    files = _with_parents(source)
    targets = [folder / f.name for f in files]
    taken = [t for t in targets if t.exists()]
    if taken and not overwrite:
        raise UsageError(f"{taken[0]} exists; pass --overwrite to replace it", file=str(taken[0]))
    folder.mkdir(parents=True, exist_ok=True)
    for file, target in zip(files, targets, strict=True):
        text = rebased(file.read_text(encoding="utf-8"), Path.cwd(), folder)
        # the command in its header runs the copy, not the bundled recipe
        text = re.sub(
            rf"^(# hfpipe \w+ ){re.escape(file.stem)}\b", rf"\g<1>{target}", text, count=1, flags=re.M
        )
        target.write_text(text, encoding="utf-8")
    if not (folder / SCHEMA).exists():
        (folder / SCHEMA).write_text((FOLDER / SCHEMA).read_text(encoding="utf-8"), encoding="utf-8")
        targets.append(folder / SCHEMA)
    return targets


def _with_parents(path: Path) -> list[Path]:
    """`path` and the bundled files it extends (bundled recipes extend only each other)."""
    from hfpipe.recipe.load import parse_yaml

    out, todo = [], [path]
    while todo:
        current = todo.pop()
        if current in out:
            continue
        out.append(current)
        data = parse_yaml(current.read_text(encoding="utf-8")) or {}
        parents = data.get("extends") or []
        todo += [FOLDER / p for p in ([parents] if isinstance(parents, str) else parents)]
    return out


def rebased(text: str, base: Path, folder: Path) -> str:
    """Recipe `text` whose relative paths (against `base`) are rewritten relative to `folder`, in place:
    comments and layout stay."""
    import yaml

    from hfpipe.recipe.load import RecipeLoader, path_values

    edits = []
    for node, mode in path_values(yaml.compose(text, Loader=RecipeLoader)):
        value = node.value
        explicit = value.startswith(("./", "../")) or value in (".", "..")
        if not value or os.path.isabs(os.path.expanduser(value)) or (mode == "maybe" and not explicit):
            continue  # absolute, or a Hub name
        new = os.path.relpath(base.resolve() / value, folder.resolve())
        if value.startswith("./") and not new.startswith("."):
            new = f"./{new}"  # still explicitly a path (a Hub name otherwise)
        shown = (
            new
            if re.fullmatch(r"[\w./-]+", new)
            else '"' + new.replace("\\", "\\\\").replace('"', '\\"') + '"'
        )
        edits.append((node.start_mark.index, node.end_mark.index, shown))
    for start, end, shown in sorted(edits, reverse=True):
        text = text[:start] + shown + text[end:]
    return text

"""`hfpipe recipes copy NAME DIR`: a bundled recipe (with the bundled recipes it extends and the schema file
editors read) copied into a folder to edit. Its relative paths are rewritten in place, comments and
layout kept, so that they point where the bundled recipe, run from the current directory, points."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hfpipe.errors import UsageError, did_you_mean
from hfpipe.recipe.bundled import FOLDER, SCHEMA, is_bundled, locate, names


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

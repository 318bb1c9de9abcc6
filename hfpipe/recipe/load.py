"""Load a recipe: read YAML safely, follow ``extends``, apply ``key=value`` / ``~key`` overrides, validate.

Every key remembers where it came from (file and line, or the override that set it), so an error
reads ``recipes/x.yaml:12: train.lrr: unknown key; did you mean 'lr'?``. Relative paths resolve
against the file that wrote them (overrides: against the current directory).
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from hfpipe.errors import RecipeError, decode_utf8, did_you_mean

Key = tuple[str, ...]


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads `1e-5` as a float, as YAML 1.2 does (1.1 wants `1.0e-5`)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    """Parse recipe YAML: safe (no Python objects can be built), with YAML 1.2 floats."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506  (RecipeLoader is a SafeLoader)


Origins = dict[Key, tuple[str, int | None]]  # key path -> (file or "override 'k=v'", line)


# ---------------------------------------------------------------------------------------------------
# Reading one file


def _line_map(node: yaml.Node, prefix: Key = ()) -> dict[Key, int]:
    lines: dict[Key, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, key))
    return lines


def _read_yaml(path: Path, shown: str) -> tuple[dict, dict[Key, int]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=shown) from None
    except IsADirectoryError:
        raise RecipeError("is a directory, not a recipe file", file=shown) from None
    except OSError as e:
        raise RecipeError(f"cannot read recipe: {e.strerror}", file=shown) from None
    text = decode_utf8(raw, RecipeError, shown)
    try:
        data = parse_yaml(text)  # a SafeLoader: a recipe can never construct Python objects
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(
            f"invalid YAML: {problem}", file=shown, line=mark.line + 1 if mark else None
        ) from None
    if data is None:
        raise RecipeError("empty recipe (expected a mapping with task, model, data, output_dir)", file=shown)
    if not isinstance(data, dict):
        raise RecipeError(
            f"a recipe is a mapping of sections, not a {type(data).__name__}", file=shown, line=1
        )
    return data, _line_map(node)


# ---------------------------------------------------------------------------------------------------
# Paths


def _path_fields() -> dict[Key, str]:
    """Key paths of schema fields marked as paths ("yes") or path-or-Hub-name ("maybe")."""
    from pydantic import BaseModel

    from hfpipe.recipe.schema import Recipe

    found: dict[Key, str] = {}

    def walk(model: type[BaseModel], prefix: Key) -> None:
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            mark = extra.get("hfpipe_path")
            if mark:
                found[(*prefix, name)] = "maybe" if mark == "maybe" else "yes"
            sub = _section_type(info.annotation)
            if sub is not None:
                walk(sub, (*prefix, name))

    walk(Recipe, ())
    return found


def _section_type(annotation: Any):
    """The pydantic model class inside an annotation such as ``Columns | None``, if any."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _resolve_one(value: str, base: Path, mode: str) -> str:
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    explicit = expanded.startswith(("/", "./", "../")) or value.startswith("~") or expanded in (".", "..")
    candidate = base / expanded
    if mode == "yes" or explicit or candidate.exists():
        return str(candidate.resolve()) if not os.path.isabs(expanded) else str(Path(expanded).resolve())
    return value  # a Hub name


def _resolve_paths(data: dict, base: Path, under: Key | None = None) -> None:
    for key, mode in _path_fields().items():
        if under is not None and key[: len(under)] != under:
            continue
        parent = data
        for part in key[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or key[-1] not in parent:
            continue
        value = parent[key[-1]]
        if isinstance(value, list):
            parent[key[-1]] = [_resolve_one(v, base, mode) for v in value]
        else:
            parent[key[-1]] = _resolve_one(value, base, mode)


# ---------------------------------------------------------------------------------------------------
# extends


def _merge(base: dict, top: dict, origins: Origins, top_origins: Origins, prefix: Key = ()) -> dict:
    out = dict(base)
    for key, value in top.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, top_origins, path)
        else:
            # A replaced subtree forgets where its old children came from.
            for k in [k for k in origins if k[: len(path)] == path]:
                del origins[k]
            out[key] = value
            for k, where in top_origins.items():
                if k[: len(path)] == path:
                    origins[k] = where
        if path in top_origins:
            origins[path] = top_origins[path]
    return out


def _load_layers(path: Path, stack: tuple[Path, ...]) -> tuple[dict, Origins]:
    real = path.resolve()
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("../..") else str(path)
    if real in stack:
        chain = " -> ".join(os.path.relpath(p) for p in (*stack, real))
        raise RecipeError(f"extends cycle: {chain}", file=shown, key="extends")
    data, lines = _read_yaml(path, shown)
    origins: Origins = {k: (shown, line) for k, line in lines.items()}
    _resolve_paths(data, path.parent)
    parents = data.pop("extends", None)
    if parents is None:
        return data, origins
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(
            "extends: expected a file name or a list of file names",
            file=shown,
            line=lines.get(("extends",)),
            key="extends",
        )
    merged: dict = {}
    merged_origins: Origins = {}
    for parent in parents:
        parent_path = path.parent / os.path.expanduser(parent)
        if not parent_path.is_file():
            raise RecipeError(
                f"extended recipe {parent!r} not found (looked at {parent_path})",
                file=shown,
                line=lines.get(("extends",)),
                key="extends",
            )
        parent_data, parent_origins = _load_layers(parent_path, (*stack, real))
        merged = _merge(merged, parent_data, merged_origins, parent_origins)
    merged = _merge(merged, data, merged_origins, origins)
    return merged, merged_origins


# ---------------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(
    data: dict, overrides: list[str] | tuple[str, ...], origins: Origins | None = None
) -> dict:
    """Apply ``a.b=value`` (value parsed as YAML) and ``~a.b`` (delete) to a recipe dict, in order."""
    origins = origins if origins is not None else {}
    for item in overrides:
        where = (f"override {item!r}", None)
        if item.startswith("~"):
            key = item[1:]
            *parents, leaf = key.split(".")
            node = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf not in node:
                raise RecipeError(f"cannot delete {key!r}: no such key in the recipe", file=where[0])
            del node[leaf]
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise RecipeError(f"{item!r}: expected key=value or ~key", file="command line")
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise RecipeError(f"value is not valid YAML: {getattr(e, 'problem', e)}", file=where[0]) from None
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(
                    f"cannot set {key!r}: {'.'.join(parents[: i + 1])} is not a section", file=where[0]
                )
            node = child
        node[leaf] = value
        path = tuple(key.split("."))
        for k in [k for k in origins if k[: len(path)] == path]:
            del origins[k]
        origins[path] = where
        _resolve_paths(data, Path.cwd(), under=path)  # `data.train=x` or all of `data={...}`
    return data


# ---------------------------------------------------------------------------------------------------
# Validation: pydantic errors become one-line RecipeErrors with file, line, key and a suggestion


def _fields_at(loc: Key):
    """(model class, clean key path) for a pydantic error location; drops union-member tags."""
    from hfpipe.recipe.schema import Recipe

    model, clean = Recipe, []
    container = False  # inside a free-form dict / list of plain values
    for part in loc:
        if isinstance(part, int):
            clean.append(str(part))
            continue
        if model is not None and part in model.model_fields:
            clean.append(part)
            annotation = model.model_fields[part].annotation
            model = _section_type(annotation)
            container = (
                model is None and typing.get_origin(annotation) in (dict, None) and "dict" in str(annotation)
            )
            continue
        if container:
            clean.append(str(part))
            continue
        if model is not None:  # an unknown key of a section
            clean.append(part)
            return model, tuple(clean), part
        # a union tag such as 'int' or "literal['epoch','never']": not part of the user's key
    return model, tuple(clean), None


def _location(origins: Origins, key: Key, source: str | None) -> tuple[str | None, int | None]:
    for n in range(len(key), 0, -1):
        if key[:n] in origins:
            return origins[key[:n]]
    return source, None


def validate_dict(data: dict, origins: Origins | None = None, source: str | None = None):
    """Validate a recipe dict; raise RecipeError (with the others in ``.more``) on any problem."""
    from pydantic import ValidationError

    from hfpipe.recipe.schema import Recipe

    origins = origins or {}
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        grouped: dict[Key, list[dict]] = {}
        unknown: dict[Key, tuple[type, str]] = {}
        for err in exc.errors():
            model, key, bad = _fields_at(tuple(err["loc"]))
            # A check across sections names the key it is about: ValueError("@qa.doc_stride: ...").
            text = err["msg"].removeprefix("Value error, ")
            if err["type"] == "value_error" and text.startswith("@") and ": " in text:
                named, message = text[1:].split(": ", 1)
                key, err = tuple(named.split(".")), {**err, "msg": message}
            if err["type"] == "extra_forbidden" and bad is not None:
                unknown[key] = (model, bad)
            grouped.setdefault(key, []).append(err)
        errors = []
        for key, errs in grouped.items():
            dotted = ".".join(key) or "(top level)"
            file, line = _location(origins, key, source)
            if key in unknown:
                model, bad = unknown[key]
                msg = f"unknown key{did_you_mean(bad, model.model_fields)}"
                if not msg.endswith("?"):
                    msg += f" (allowed: {', '.join(model.model_fields)})"
            elif errs[0]["type"] == "missing":
                msg = "required key is missing"
                parent = key[:-1]
                file, line = _location(origins, parent, source) if parent else (source, None)
            else:
                msgs = []
                for e in errs:
                    m = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
                    if m not in msgs:
                        msgs.append(m)
                msg = "; or ".join(msgs)
                if errs[0]["type"] not in ("value_error", "assertion_error") and "input" in errs[0]:
                    value = errs[0]["input"]
                    if not isinstance(value, dict):
                        msg += f" (got {value!r})"
            errors.append(RecipeError(msg, file=file, line=line, key=dotted))
        first = errors[0]
        first.more = errors[1:]
        raise first from None


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Read, merge, override and validate a recipe file. Returns a frozen ``Recipe``."""
    path = Path(path)
    data, origins = _load_layers(path, ())
    if "extends" in data:
        del data["extends"]
    apply_overrides(data, list(overrides), origins)
    recipe = validate_dict(data, origins, source=str(path))
    recipe._source = str(path)
    recipe._overrides = tuple(overrides)
    return recipe


def dump_recipe(recipe) -> str:
    """The resolved recipe as YAML: what actually ran (absolute paths, defaults filled in)."""
    header = "# Resolved by hfpipe"
    if recipe.source:
        header += f" from {recipe.source}"
    if recipe.overrides:
        header += " with overrides: " + " ".join(recipe.overrides)
    body = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return f"{header}\n{body}"

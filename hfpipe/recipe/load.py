"""Load a recipe: read YAML safely and within limits, follow ``extends``, apply ``key=value`` / ``~key``
overrides, validate.

Every key remembers where it came from (file and line, or the override that set it), so an error
reads ``recipes/x.yaml:12: train.lrr: unknown key; did you mean 'lr'?``. Relative paths resolve
against the file that wrote them, at any depth (overrides: against the current directory). An override
names a list item by its index or its ``name``: ``fewshot.tasks.piqa.fewshot_split=validation``.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from hfpipe.errors import RecipeError, clip, decode_utf8, did_you_mean, excerpt, first_line

Key = tuple[str, ...]
# key path (a list item by its index) -> (file or "override 'k=v'", line)
Origins = dict[Key, tuple[str, int | None]]

# What a recipe (its file plus the files it extends) or one override value may expand to. CI validates
# recipes from pull requests, so these bound the work and the output any file can cause: a 1 KB alias bomb
# expands to 10^9 values, and PyYAML (pure Python) needs about 1 s per 20,000 values. Real recipes are a
# few KB with a few hundred values, nested under 10 deep, with a handful of aliases and parents: each
# limit is 50x or more beyond that, and at the limits `hfpipe validate` stays within about a second.
MAX_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_VALUES = 20_000  # every scalar, list and mapping (keys too), counted again for each alias that repeats it
MAX_FILES = 100  # a recipe and the files it extends, a file extended twice counted twice
MAX_ERRORS = 20  # problems reported per recipe; any more are counted


class TooLarge(yaml.MarkedYAMLError):
    """Valid YAML beyond one of the limits above."""


class Budget:
    """How much of the limits one recipe has used so far: the files of an extends tree share one."""

    def __init__(self) -> None:
        self.bytes = self.values = self.aliases = self.files = 0


class _Expansion:
    """Counts parser events as aliases would expand them, refusing as soon as a limit is passed.

    It sees events before anything is built: an anchored collection records its expanded size and height
    when it ends, and each alias adds both, so a bomb is refused a few lines in, whatever it expands to.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.open: list[list] = []  # per open collection: [anchor, values before it, tallest child's height]
        self.anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) that its alias repeats

    def see(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.AliasEvent):
            self._alias(event)
        elif isinstance(event, yaml.ScalarEvent):
            self._add(1, 0, event)
            if event.anchor is not None:
                self.anchored[event.anchor] = (1, 0)
        elif isinstance(event, yaml.CollectionStartEvent):
            self._add(1, 1, event)
            self.open.append([event.anchor, self.budget.values - 1, 0])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before, tallest = self.open.pop()
            if self.open:
                self.open[-1][2] = max(self.open[-1][2], tallest + 1)
            if anchor is not None:
                self.anchored[anchor] = (self.budget.values - before, tallest + 1)

    def _alias(self, event: yaml.AliasEvent) -> None:
        self.budget.aliases += 1
        if self.budget.aliases > MAX_ALIASES:
            raise TooLarge(
                problem=f"too many aliases: over the limit of {MAX_ALIASES:,} uses",
                problem_mark=event.start_mark,
            )
        if any(anchor == event.anchor for anchor, _, _ in self.open):
            raise TooLarge(
                problem=f"alias *{clip(event.anchor, 40)} is used inside the value it names",
                problem_mark=event.start_mark,
            )
        # An undefined anchor counts as one value; the composer then rejects it.
        self._add(*self.anchored.get(event.anchor, (1, 0)), event)

    def _add(self, values: int, height: int, event: yaml.Event) -> None:
        self.budget.values += values
        if self.budget.values > MAX_VALUES:
            problem = f"too large: over the limit of {MAX_VALUES:,} values (aliases expanded)"
            raise TooLarge(problem=problem, problem_mark=event.start_mark)
        if len(self.open) + height > MAX_DEPTH:
            raise TooLarge(
                problem=f"too deep: over the limit of {MAX_DEPTH} levels of nesting",
                problem_mark=event.start_mark,
            )
        if self.open and not isinstance(event, yaml.CollectionStartEvent):
            self.open[-1][2] = max(self.open[-1][2], height)


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader within the limits above, reading `1e-5` as a float as YAML 1.2 does (1.1 wants
    `1.0e-5`), and reporting a malformed scalar (`2020-02-30`, `!!bool maybe`) as a YAML error."""

    def __init__(self, text: str, budget: Budget | None = None) -> None:
        super().__init__(text)
        self.expansion = _Expansion(budget or Budget())

    def get_event(self):  # the composer takes every event through here
        event = super().get_event()
        self.expansion.see(event)
        return event

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception:  # SafeConstructor lets ValueError, KeyError, ... escape for some bad scalars
            tag = clip(str(node.tag).rsplit(":", 1)[-1], 40)
            shown = f": {excerpt(node.value, 40)}" if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"not a valid {tag}{shown}", node.start_mark
            ) from None

    def construct_bounded_int(self, node):
        # Python refuses to print an int of over 4,300 digits; no recipe needs one of 200.
        if len(str(node.value)) > 200:
            raise yaml.constructor.ConstructorError(
                None, None, "number too long (over 200 characters)", node.start_mark
            )
        return self.construct_yaml_int(node)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", RecipeLoader.construct_bounded_int)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str, budget: Budget | None = None) -> tuple[Any, yaml.Node | None]:
    """(value, node) of one YAML document; aliases are expanded into copies, so that setting a key through
    one use of an anchor leaves the others as written."""
    loader = RecipeLoader(text, budget)
    try:
        node = loader.get_single_node()
        return (_unshared(loader.construct_document(node)) if node is not None else None), node
    except RecursionError:  # the limits keep nesting shallow; this is a last guard
        raise TooLarge(problem=f"too deep: over the limit of {MAX_DEPTH} levels of nesting") from None
    finally:
        loader.dispose()


def _unshared(value):
    """A tree copy of a constructed document (where aliases share objects)."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def parse_yaml(text: str):
    """Parse recipe YAML: safe (no Python objects can be built), within the limits, YAML 1.2 floats."""
    if len(text) > MAX_BYTES:
        raise TooLarge(problem=f"too large: over the limit of {MAX_BYTES >> 10} KiB")
    return _parse(text)[0]


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, int | None]:
    """(one-line message, line or None) for a YAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    message = clip(" ".join((getattr(exc, "problem", None) or first_line(exc)).split()), 160)
    if not isinstance(exc, TooLarge):
        message = f"invalid YAML: {message}"
    return message, mark.line + 1 if mark else None


# ---------------------------------------------------------------------------------------------------
# Reading one file


def _line_map(root: yaml.Node) -> dict[Key, int]:
    """The line of every key, and of every list item (keyed by its index)."""
    lines: dict[Key, int] = {}
    stack: list[tuple[yaml.Node, Key]] = [(root, ())]
    while stack:
        node, prefix = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                lines[key] = key_node.start_mark.line + 1
                stack.append((value_node, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = (*prefix, str(index))
                lines[key] = item.start_mark.line + 1
                stack.append((item, key))
    return lines


def _read_text(path: Path, shown: str, budget: Budget) -> str:
    left = MAX_BYTES - budget.bytes
    try:
        with path.open("rb") as f:
            raw = f.read(left + 1)  # never more than the limit, even from a device or a pipe
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=shown) from None
    except IsADirectoryError:
        raise RecipeError("is a directory, not a recipe file", file=shown) from None
    except OSError as e:
        raise RecipeError(f"cannot read recipe: {e.strerror}", file=shown) from None
    budget.bytes += len(raw)
    if len(raw) > left:
        limit = f"{MAX_BYTES >> 10} KiB for a recipe and the files it extends"
        raise RecipeError(f"too large: over the limit of {limit}", file=shown)
    return decode_utf8(raw, RecipeError, shown)


def read_yaml(path: Path, shown: str, budget: Budget | None = None) -> tuple[dict, dict[Key, int]]:
    budget = budget or Budget()
    text = _read_text(path, shown, budget)
    try:
        data, node = _parse(text, budget)  # a SafeLoader: a recipe can never construct Python objects
    except yaml.YAMLError as e:
        message, line = yaml_problem(e)
        raise RecipeError(message, file=shown, line=line) from None
    if data is None:
        raise RecipeError("empty recipe (expected a mapping with task, model, data, output_dir)", file=shown)
    if not isinstance(data, dict):
        raise RecipeError(
            f"a recipe is a mapping of sections, not a {type(data).__name__}", file=shown, line=1
        )
    return data, _line_map(node)


# ---------------------------------------------------------------------------------------------------
# Paths


def _section_type(annotation: Any):
    """The pydantic model class inside an annotation such as ``Columns | None`` or ``list[Task]``, if any."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _path_mark(info) -> str | None:
    """How a schema field is resolved: "yes" (marked PATH), "maybe" (PATH_OR_HUB) or None (not a path)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    mark = extra.get("hfpipe_path")
    return None if not mark else "maybe" if mark == "maybe" else "yes"


def _resolve_one(value: Any, base: Path, mode: str) -> Any:
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    explicit = expanded.startswith(("/", "./", "../")) or value.startswith("~") or expanded in (".", "..")
    candidate = Path(expanded) if os.path.isabs(expanded) else base / expanded
    try:
        if mode == "yes" or explicit or candidate.exists():
            return str(candidate.resolve())
    except (OSError, ValueError) as e:  # too long for the file system, a NUL byte, ...
        if mode == "yes" or explicit:
            raise RecipeError(
                f"not a usable path: {excerpt(value, 60)} ({getattr(e, 'strerror', None) or first_line(e)})"
            ) from None
    return value  # a Hub name


def path_values(node: yaml.Node | None, model: Any = None):
    """(scalar node, mode) of every path field in a composed recipe document, at any depth (lists of
    sections included): where `hfpipe recipes copy` rewrites paths without touching the rest of the text."""
    from hfpipe.recipe.schema import Recipe

    model = model or Recipe
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        info = model.model_fields.get(key_node.value) if isinstance(key_node.value, str) else None
        if info is None:
            continue
        mode = _path_mark(info)
        if mode:
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            yield from ((item, mode) for item in items if isinstance(item, yaml.ScalarNode))
            continue
        sub = _section_type(info.annotation)
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for item in items if sub is not None else []:
            yield from path_values(item, sub)


def _sections(value: Any, under: Key, at: Key):
    """(section, rest of `under`, key) for a section, or for each section of a list of them."""
    if isinstance(value, dict):
        yield value, under, at
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict) and (not under or under[0] == str(index)):
                yield item, under[1:], (*at, str(index))


def _resolve_paths(
    section: dict, base: Path, origins: Origins, under: Key = (), model: Any = None, at: Key = ()
) -> None:
    """Make the path fields of `section` (of schema `model`, the Recipe by default) absolute against `base`,
    in sections and lists of sections at any depth; with `under`, only the values at or below that key."""
    from hfpipe.recipe.schema import Recipe

    model = model or Recipe
    for name in [under[0]] if under else list(section):
        info = model.model_fields.get(name) if isinstance(name, str) else None
        if info is None or name not in section:
            continue
        value, rest, key = section[name], under[1:], (*at, name)
        mode = _path_mark(info)
        try:
            if mode and isinstance(value, list):
                section[name] = [
                    _resolve_one(v, base, mode) if not rest or rest[0] == str(i) else v
                    for i, v in enumerate(value)
                ]
            elif mode:
                section[name] = _resolve_one(value, base, mode)
        except RecipeError as e:
            e.key = ".".join(key)
            e.file, e.line = _location(origins, key, None)
            raise
        sub = _section_type(info.annotation)
        if sub is not None and not mode:
            for child, child_under, child_key in _sections(value, rest, key):
                _resolve_paths(child, base, origins, child_under, sub, child_key)


# ---------------------------------------------------------------------------------------------------
# extends


def _merge(base: dict, top: dict, origins: Origins, top_origins: Origins) -> dict:
    """`top` merged into `base` (mappings key by key, anything else replaced); `origins` follows."""
    replaced: set[Key] = set()
    merged = _merge_values(base, top, (), replaced)
    # A replaced value forgets where its old children came from: one pass over all keys, not one per key.
    for key in [k for k in origins if any(k[:n] in replaced for n in range(1, len(k) + 1))]:
        del origins[key]
    origins.update(top_origins)
    return merged


def _merge_values(base: dict, top: dict, prefix: Key, replaced: set[Key]) -> dict:
    out = dict(base)
    for key, value in top.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_values(out[key], value, path, replaced)
        else:
            out[key] = value
            replaced.add(path)
    return out


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("../..") else relative


def _load_layers(
    path: Path, stack: tuple[Path, ...], budget: Budget, base: Path | None = None
) -> tuple[dict, Origins]:
    """The recipe at `path` merged over the files it extends; relative paths resolve against the file's
    folder (`base` instead, for every layer, when given)."""
    real, shown = path.resolve(), _shown(path)
    if real in stack:
        chain = " -> ".join(os.path.relpath(p) for p in (*stack[stack.index(real) :], real))
        raise RecipeError(f"extends cycle: {clip(chain, 300)}", file=shown, key="extends")
    budget.files += 1
    data, lines = read_yaml(path, shown, budget)
    origins: Origins = {k: (shown, line) for k, line in lines.items()}
    _resolve_paths(data, base or path.parent, origins)
    parents = data.pop("extends", None)
    if parents is None:
        return data, origins
    line = lines.get(("extends",))
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(
            "extends: expected a file name or a list of file names", file=shown, line=line, key="extends"
        )
    merged: dict = {}
    merged_origins: Origins = {}
    for parent in parents:
        if budget.files >= MAX_FILES:
            raise RecipeError(
                f"too many files: over the limit of {MAX_FILES} (a file extended twice counts twice)",
                file=shown,
                line=line,
                key="extends",
            )
        parent_data, parent_origins = _load_layers(
            _parent_path(path, parent, shown, line), (*stack, real), budget, base
        )
        merged = _merge(merged, parent_data, merged_origins, parent_origins)
    merged = _merge(merged, data, merged_origins, origins)
    return merged, merged_origins


def _parent_path(path: Path, parent: str, shown: str, line: int | None) -> Path:
    parent_path = path.parent / os.path.expanduser(parent)
    try:
        found = parent_path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long
        found = False
    if not found:
        raise RecipeError(
            f"extended recipe {excerpt(parent)} not found (looked at {clip(str(parent_path), 120)})",
            file=shown,
            line=line,
            key="extends",
        )
    return parent_path


# ---------------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(
    data: dict, overrides: list[str] | tuple[str, ...], origins: Origins | None = None
) -> dict:
    """Apply ``a.b=value`` (value parsed as YAML) and ``~a.b`` (delete) to a recipe dict, in order.

    A part of the key may pick a list item by index (``fewshot.tasks.0.k``) or by its `name`
    (``fewshot.tasks.piqa.k``).
    """
    origins = origins if origins is not None else {}
    for item in overrides:
        where = f"override {excerpt(item)}"
        if item.startswith("~"):
            _delete(data, item[1:], where, origins)
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise RecipeError(f"{excerpt(item)}: expected key=value or ~key", file="command line")
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            message, _ = yaml_problem(e)
            raise RecipeError(
                message.replace("invalid YAML", "value is not valid YAML"), file=where
            ) from None
        path = _set(data, key, value, where)
        for k in [k for k in origins if k[: len(path)] == path]:
            del origins[k]
        origins[path] = (where, None)
        _resolve_paths(data, Path.cwd(), origins, under=path)  # `data.train=x` or all of `data={...}`
    return data


def _parts(key: str, where: str) -> list[str]:
    parts = key.split(".")
    if len(parts) > MAX_DEPTH:
        raise RecipeError(f"too deep: over the limit of {MAX_DEPTH} levels of nesting", file=where)
    return parts


def _set(data: dict, key: str, value: Any, where: str) -> Key:
    """Set `key` to `value`, creating missing sections; returns the key with list items as indices."""
    *parents, leaf = _parts(key, where)
    node: dict | list = data
    path: list[str] = []
    for part in parents:
        slot = _slot(node, part, path, key, "set", where)
        child = node.get(slot) if isinstance(node, dict) else node[slot]
        if child is None:
            child = node[slot] = {}
        elif not isinstance(child, (dict, list)):
            shown = ".".join((*path, str(slot)))
            raise RecipeError(f"cannot set {excerpt(key)}: {clip(shown)} is not a section", file=where)
        node = child
        path.append(str(slot))
    slot = _slot(node, leaf, path, key, "set", where)
    node[slot] = value
    return (*path, str(slot))


def _delete(data: dict, key: str, where: str, origins: Origins) -> None:
    parts = _parts(key, where)
    node: Any = data
    path: list[str] = []
    for part in parts:
        if not isinstance(node, (dict, list)) or (isinstance(node, dict) and part not in node):
            raise RecipeError(f"cannot delete {excerpt(key)}: no such key in the recipe", file=where)
        slot = _slot(node, part, path, key, "delete", where)
        parent, node = node, node[slot]
        path.append(str(slot))
    del parent[slot]
    removed = tuple(path)
    for k in [k for k in origins if k[: len(removed)] == removed]:
        del origins[k]
    if isinstance(parent, list):
        _renumber(origins, removed[:-1], slot)


def _slot(node: dict | list, part: str, path: list[str], key: str, action: str, where: str) -> Any:
    """What one part of a key names in `node`: a mapping key, or a list index given as a number or as the
    `name` of the item."""
    if isinstance(node, dict):
        return part
    if part.isascii() and part.isdigit():
        if int(part) < len(node):
            return int(part)
    else:
        for index, item in enumerate(node):
            if isinstance(item, dict) and item.get("name") == part:
                return index
    shown = clip(".".join(path) or "(top level)")
    raise RecipeError(
        f"cannot {action} {excerpt(key)}: {shown} has no item {excerpt(part, 40)} ({_items_named(node)})",
        file=where,
    )


def _items_named(items: list) -> str:
    """How the items of a list can be named: 'indices 0-2; names: piqa, swag, hellaswag'."""
    if not items:
        return "the list is empty"
    text = f"indices 0-{len(items) - 1}" if len(items) > 1 else "index 0"
    names = [item["name"] for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)]
    if names:
        shown = ", ".join(clip(name, 30) for name in names[:8])
        text += f"; names: {shown}{', ...' if len(names) > 8 else ''}"
    return text


def _renumber(origins: Origins, list_key: Key, removed: int) -> None:
    """After item `removed` of the list at `list_key` is deleted, the items after it move up by one."""
    n = len(list_key)
    later = [k for k in origins if len(k) > n and k[:n] == list_key and int(k[n]) > removed]
    origins.update({(*list_key, str(int(k[n]) - 1), *k[n + 1 :]): origins.pop(k) for k in later})


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


def _dotted(key: Key) -> str:
    """A key as the user wrote it, shortened to one line (a hostile file may use keys of a megabyte)."""
    parts = [part if part.isprintable() else excerpt(part, 40) for part in key]
    return clip(".".join(parts)) or "(top level)"


def validate_dict(data: dict, origins: Origins | None = None, source: str | None = None):
    """Validate a recipe dict; raise RecipeError (with the others in ``.more``) on any problem."""
    from pydantic import ValidationError

    from hfpipe.recipe.schema import Recipe

    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        grouped, unknown = _group(exc.errors())
        keys = list(grouped)
        errors = [_problem(k, grouped[k], unknown.get(k), origins or {}, source) for k in keys[:MAX_ERRORS]]
        if len(keys) > MAX_ERRORS:
            errors.append(RecipeError(f"and {len(keys) - MAX_ERRORS:,} more problem(s)", file=source))
        errors[0].more = errors[1:]
        raise errors[0] from None


def _group(errors: list[dict]) -> tuple[dict[Key, list[dict]], dict[Key, tuple[type, str]]]:
    """pydantic's errors by the user's key, and the unknown keys with the section that rejected them."""
    grouped: dict[Key, list[dict]] = {}
    unknown: dict[Key, tuple[type, str]] = {}
    for err in errors:
        model, key, bad = _fields_at(tuple(err["loc"]))
        # A check across sections names the key it is about: ValueError("@qa.doc_stride: ...").
        text = err["msg"].removeprefix("Value error, ")
        if err["type"] == "value_error" and text.startswith("@") and ": " in text:
            named, message = text[1:].split(": ", 1)
            key, err = tuple(named.split(".")), {**err, "msg": message}
        if err["type"] == "extra_forbidden" and bad is not None:
            unknown[key] = (model, bad)
        grouped.setdefault(key, []).append(err)
    return grouped, unknown


def _problem(
    key: Key, errs: list[dict], unknown: tuple[type, str] | None, origins: Origins, source: str | None
) -> RecipeError:
    file, line = _location(origins, key, source)
    if unknown is not None:
        model, bad = unknown
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
                msg += f" (got {excerpt(value)})"
    return RecipeError(msg, file=file, line=line, key=_dotted(key))


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Read, merge, override and validate a recipe file (or a bundled recipe by name: `quickstart`). Returns
    a frozen ``Recipe``."""
    from hfpipe.recipe import bundled

    path = bundled.locate(path)
    if len(path.parts) == 1 and path.suffix not in (".yaml", ".yml") and not path.exists():
        raise bundled.not_found(path)
    # A bundled recipe is a template for the directory it runs from (bundled.py).
    base = Path.cwd() if bundled.is_bundled(path) else None
    data, origins = _load_layers(path, (), Budget(), base)
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

"""What editors and shells need from the schema: the recipe JSON Schema as a YAML language server reads
it, and the dotted keys / values that shell completion offers. No torch here.

A bundled recipe starts with ``# yaml-language-server: $schema=recipe.schema.json``: editors with the
YAML language server (VS Code's YAML extension, Neovim, Helix, JetBrains) then validate the file as it
is typed, complete keys and show each key's description. `hfpipe schema -o FILE` writes the schema for
recipes kept elsewhere.
"""

from __future__ import annotations

import copy
from typing import Any

SCHEMA_FILE = "recipe.schema.json"
SCHEMA_LINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"


def editor_schema() -> dict[str, Any]:
    """The recipe JSON Schema (from the pydantic models) as editors should use it on recipe files.

    Differences from `Recipe.model_json_schema()`, each because a file is not yet a resolved recipe:
    `extends` is a key (load.py resolves it before validation), and a recipe that extends another needs
    none of the required keys (its parent gives them); `task` lists the known task names, so editors
    complete them.
    """
    from hfpipe.recipe.schema import Recipe
    from hfpipe.tasks import task_names

    schema = copy.deepcopy(Recipe.model_json_schema())
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hfpipe recipe",
        **schema,
    }
    properties = schema["properties"]
    properties["task"] = {**properties["task"], "enum": task_names()}
    properties["extends"] = {
        "description": "Parent recipe(s), relative to this file: their keys first, this file's on top.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    required = schema.pop("required", [])
    schema["if"] = {"not": {"required": ["extends"]}}
    schema["then"] = {"required": required}
    return schema


def _resolve(schema: dict, node: dict) -> dict:
    """A schema node with its $ref / anyOf-with-null unwrapped to the object it describes."""
    while True:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node:
            objects = [n for n in node["anyOf"] if "$ref" in n or n.get("type") == "object"]
            if len(objects) != 1:
                return node
            node = objects[0]
        else:
            return node


def override_keys() -> list[tuple[str, str]]:
    """Every dotted key a `key=value` override can set, with the first line of its description."""
    schema = editor_schema()
    keys: list[tuple[str, str]] = []

    def walk(node: dict, prefix: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            key = f"{prefix}{name}"
            resolved = _resolve(schema, child)
            description = (child.get("description") or resolved.get("description") or "").split("\n")[0]
            keys.append((key, description))
            if resolved.get("properties"):
                walk(resolved, f"{key}.")

    walk(schema, "")
    return keys


def override_values(key: str) -> list[str]:
    """The values a key takes from a fixed list (task names, enums, booleans); [] for free values."""
    if key == "task":
        from hfpipe.tasks import task_names

        return task_names()
    if key == "model.architecture":
        from hfpipe.architectures import ARCHITECTURES

        return sorted(ARCHITECTURES)
    if key == "data.builtin.name":
        from hfpipe.builtin_data import GENERATORS

        return sorted(GENERATORS)
    schema = editor_schema()
    node: dict = schema
    for part in key.split("."):
        node = _resolve(schema, (node.get("properties") or {}).get(part, {}))
        if not node:
            return []
    options = node.get("anyOf", [node])
    values: list[str] = []
    for option in options:
        option = _resolve(schema, option)
        values += [str(v) for v in option.get("enum", [])]
        if "const" in option:
            values.append(str(option["const"]))
        if option.get("type") == "boolean":
            values += ["true", "false"]
    return values

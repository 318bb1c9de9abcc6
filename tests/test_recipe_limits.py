"""Hostile recipes: CI validates recipes from pull requests, so any file gets one short error line, fast.

The limits live in hfpipe/recipe/load.py; the small cases are files in tests/corpus/recipes/ (38 and up),
the big ones are generated here.
"""

from __future__ import annotations

import pytest
from conftest import write

from hfpipe.errors import RecipeError
from hfpipe.recipe import load_recipe
from hfpipe.recipe.load import MAX_BYTES

HEAD = """\
task: classification
model: {architecture: bert}
data: {builtin: {name: sentiment}}
output_dir: out
"""


def alias_bomb() -> tuple[str, str]:
    """(a flow mapping of nine anchors, each nine aliases of the one before, an alias of the last): 9^9
    values from a few hundred bytes."""
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for before, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{before}"] * 9) + "]")
    return "{" + ", ".join(lines) + "}", "*i"


def one_short_line(result, fragment: str) -> str:
    """The error line of a rejected recipe: exit 2, no traceback, one line, short."""
    assert result.exit_code == 2, result.output[:500]
    assert "Traceback" not in result.output
    assert len(result.output) < 1000, result.output[:500]
    errors = [line for line in result.output.splitlines() if "recipe(s) invalid" not in line]
    assert len(errors) == 1, errors
    assert fragment in errors[0], errors[0]
    return errors[0]


# The recipes below are validated from their folder: messages show a path relative to the working
# directory when that is short, and the checkout may sit anywhere.


def test_alias_bomb_is_refused_before_it_expands(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    anchors, alias = alias_bomb()
    path = write(tmp_path / "bomb.yaml", f"{HEAD}anchors: {anchors}\ntrain: {{epochs: {alias}}}\n")
    assert len(path.read_bytes()) < 1024
    line = one_short_line(cli("validate", path.name), "over the limit of 20,000 values (aliases expanded)")
    assert line.startswith("bomb.yaml:5: ")


def test_deep_nesting_is_refused_without_recursion(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "deep.yaml", f"{HEAD}train:\n  epochs: {'[' * 20_000}{']' * 20_000}\n")
    line = one_short_line(cli("validate", path.name), "too deep: over the limit of 64 levels of nesting")
    assert line.startswith("deep.yaml:6: ")


def test_file_over_the_size_limit_is_refused_unread(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "big.yaml", HEAD + "# " + "x" * MAX_BYTES + "\n")
    one_short_line(cli("validate", "big.yaml"), "big.yaml: too large: over the limit of 256 KiB")


def test_size_limit_counts_the_files_a_recipe_extends(tmp_path, cli):
    write(tmp_path / "parent.yaml", HEAD + "# " + "x" * (MAX_BYTES - 1000) + "\n")
    path = write(tmp_path / "child.yaml", "extends: parent.yaml\n# " + "x" * 2000 + "\n")
    one_short_line(
        cli("validate", path), "parent.yaml: too large: over the limit of 256 KiB for a recipe and"
    )


def test_extends_fan_out_is_refused(tmp_path, cli):
    write(tmp_path / "leaf.yaml", "train: {lr: 0.001}\n")
    write(tmp_path / "middle.yaml", "extends: [" + ", ".join(["leaf.yaml"] * 60) + "]\n")
    path = write(tmp_path / "top.yaml", HEAD + "extends: [" + ", ".join(["middle.yaml"] * 60) + "]\n")
    one_short_line(cli("validate", path), "extends: too many files: over the limit of 100")


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("[" * 20_000 + "]" * 20_000, "too deep: over the limit of 64 levels of nesting"),
        (alias_bomb()[0], "over the limit of 20,000 values (aliases expanded)"),
        ("x" * (MAX_BYTES + 1), "too large: over the limit of 256 KiB"),
        ("fast " * 1000, "unable to parse string as a number (got 'fast fast"),
    ],
    ids=["deep", "bomb", "big", "long"],
)
def test_override_values_have_the_same_limits(tmp_path, value, fragment):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path / "r.yaml", HEAD), [f"train.epochs={value}"])
    shown = "\n".join(str(e) for e in info.value.all())
    assert fragment in shown and "\n" not in shown and len(shown) < 300
    assert shown.startswith("override 'train.epochs=")


def test_a_long_bad_value_is_shown_as_an_excerpt(tmp_path, cli):
    path = write(tmp_path / "r.yaml", HEAD + "train: {epochs: [" + ", ".join(["1"] * 5000) + "]}\n")
    one_short_line(cli("validate", path), "(got [1, 1, 1, 1, 1, 1, ...])")


def test_many_problems_are_counted_not_listed(tmp_path, cli):
    path = write(tmp_path / "r.yaml", HEAD + "tags:\n" + "  - [a]\n" * 5000)
    result = cli("validate", path)
    assert result.exit_code == 2 and len(result.output) < 5000
    assert "tags.0: Input should be a valid string" in result.output
    assert f"{path}: and 4,980 more problem(s)" in result.output.splitlines()


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("2024-02-30", "not a valid timestamp: '2024-02-30'"),
        ("!!bool maybe", "not a valid bool: 'maybe'"),
        ("!!timestamp soon", "not a valid timestamp: 'soon'"),
        ("!!int many", "not a valid int: 'many'"),
        ("9" * 5000, "number too long"),
        ("0x" + "f" * 5000, "number too long"),
    ],
)
def test_malformed_scalars_are_recipe_errors(tmp_path, value, fragment):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path / "r.yaml", f"{HEAD}description: {value}\n"))
    assert fragment in info.value.message and info.value.line == 5


@pytest.mark.parametrize(
    "line, key",
    [
        ('output_dir: "out\\0put"', "output_dir"),
        ('model: {name_or_path: "./a\\0b"}', "model.name_or_path"),
    ],
)
def test_unusable_paths_are_recipe_errors(tmp_path, line, key):
    section = line.split(":")[0]
    text = "".join(kept for kept in HEAD.splitlines(keepends=True) if not kept.startswith(section))
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path / "r.yaml", f"{text}{line}\n"))
    assert info.value.key == key and "not a usable path" in info.value.message and info.value.line == 4


def test_a_name_too_long_for_a_path_is_a_hub_name(tmp_path):
    name = "org/" + "m" * 5000
    text = HEAD.replace("{architecture: bert}", f"{{name_or_path: {name}}}")
    assert load_recipe(write(tmp_path / "r.yaml", text)).model.name_or_path == name


def test_a_long_extends_name_is_cut_in_the_error(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path / "r.yaml", f"extends: {'x' * 5000}.yaml\n"))
    assert info.value.key == "extends" and "not found" in info.value.message and len(str(info.value)) < 400

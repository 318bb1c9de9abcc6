"""What editors and shells get: the recipe JSON Schema, the bundled recipes' schema and command lines,
and shell completion of recipe paths, override keys and task names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import RECIPES, ROOT

from hfpipe.recipe import load_recipe
from hfpipe.recipe.editor import SCHEMA_LINE, editor_schema

BUNDLED = sorted(RECIPES.glob("*.yaml"))


def test_the_committed_schema_is_the_generated_one(cli, tmp_path):
    out = tmp_path / "s" / "recipe.schema.json"
    result = cli("schema", "-o", out)
    assert result.exit_code == 0
    assert out.read_text() == (RECIPES / "recipe.schema.json").read_text(), (
        "recipes/recipe.schema.json is stale: run `hfpipe schema -o recipes/recipe.schema.json`"
    )
    assert json.loads(cli("schema").output) == json.loads(out.read_text())


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_recipes_start_with_the_schema_line_and_their_command(path):
    first, second = path.read_text().splitlines()[:2]
    assert first == SCHEMA_LINE
    command = "fewshot" if load_recipe(path).task == "fewshot" else "train"
    assert second.split()[:4] == ["#", "hfpipe", command, path.stem]  # by name, from any directory


def test_every_bundled_recipe_is_valid_for_editors_and_typos_are_not():
    schema = editor_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in BUNDLED:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, (path.name, [e.message for e in errors])
    quickstart = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    bad = {**quickstart, "train": {**quickstart["train"], "lrr": 1e-4}}
    assert any("lrr" in e.message for e in validator.iter_errors(bad))
    assert any("'regresion'" in e.message for e in validator.iter_errors({**quickstart, "task": "regresion"}))
    assert any("output_dir" in e.message for e in validator.iter_errors({"task": "classification"}))
    assert not list(validator.iter_errors({"extends": "quickstart.yaml", "train": {"lr": 1e-4}}))


def complete(*words: str, shell: str = "bash") -> list[str]:
    """What the installed completion script gets back from `hfpipe` for the words typed so far."""
    env = {**os.environ, "_HFPIPE_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        env |= {"COMP_WORDS": " ".join(["hfpipe", *words]), "COMP_CWORD": str(len(words))}
    else:
        env["_TYPER_COMPLETE_ARGS"] = " ".join(["hfpipe", *words])
    done = subprocess.run(
        [str(Path(sys.executable).with_name("hfpipe"))],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_shell_completion_of_recipes_keys_and_task_names():
    assert complete("train", "recipes/qu") == ["recipes/quickstart.yaml"]
    assert "recipes/gpt2-clm-pretrain.yaml" in complete("validate", "recipes/gpt")
    assert complete("train", "recipes/quickstart.yaml", "train.preci") == ["train.precision="]
    assert complete("train", "recipes/quickstart.yaml", "task=c") == ["task=causal-lm", "task=classification"]
    assert complete("train", "recipes/quickstart.yaml", "train.precision=b") == ["train.precision=bf16"]
    assert "~train.early_stopping_patience" in complete("train", "x.yaml", "~train.early")
    zsh = " ".join(complete("train", "recipes/quickstart.yaml", "model.archi", shell="zsh"))
    assert "model.architecture=" in zsh and "Build a randomly initialised model" in zsh


def test_install_completion_is_offered(cli):
    assert "--install-completion" in cli("--help").output

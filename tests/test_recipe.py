"""The recipe contract: strict schema, did-you-mean, locations, extends, overrides, path resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, ROOT, write

from hfpipe.errors import RecipeError
from hfpipe.recipe import dump_recipe, load_recipe

BASE = """\
task: classification
model:
  architecture: bert
  config: {hidden_size: 32}
data:
  train: train.csv
train:
  lr: 1.0e-4
output_dir: out
"""


def recipe_file(tmp_path: Path, text: str = BASE, name: str = "r.yaml") -> Path:
    return write(tmp_path / name, text)


def error_of(path, overrides=()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return info.value


def test_minimal_recipe_fills_defaults_and_resolves_paths(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path))
    assert recipe.task == "classification"
    assert recipe.train.lr == 1e-4 and recipe.train.batch_size == 32
    # A model built from scratch gets a tokenizer trained with the architecture's algorithm.
    assert recipe.tokenizer.train is not None and recipe.tokenizer.train.algorithm == "wordpiece"
    # Paths resolve against the recipe file, not the current directory.
    assert recipe.data.train == str(tmp_path / "train.csv")
    assert recipe.output_dir == str(tmp_path / "out")


def test_unknown_top_level_key_names_file_line_and_suggestion(tmp_path):
    path = recipe_file(tmp_path, BASE + "ouput_dir: x\n")
    err = error_of(path)
    assert err.key == "ouput_dir" and err.line == 10
    assert "did you mean 'output_dir'" in str(err)
    assert Path(err.file).resolve() == path.resolve()
    assert str(err) == f"{err.file}:10: ouput_dir: unknown key; did you mean 'output_dir'?"


@pytest.mark.parametrize(
    "yaml_text, key, fragment",
    [
        ("train:\n  lrr: 1\n", "train.lrr", "did you mean 'lr'"),
        ("model:\n  architecture: bert\n  confg: {}\n", "model.confg", "did you mean 'config'"),
        ("data:\n  train: x.csv\n  columns:\n    txt: a\n", "data.columns.txt", "did you mean 'text'"),
        (
            "data:\n  builtin:\n    name: sentiment\n    train_sise: 3\n",
            "data.builtin.train_sise",
            "did you mean 'train_size'",
        ),
        ("tokenizer:\n  train:\n    vocab: 100\n", "tokenizer.train.vocab", "unknown key"),
    ],
)
def test_unknown_keys_are_rejected_at_every_level(tmp_path, yaml_text, key, fragment):
    import yaml

    data = yaml.safe_load(BASE)
    for section, value in yaml.safe_load(yaml_text).items():
        data.setdefault(section, {})
        data[section] = {**data[section], **value} if isinstance(value, dict) else value
    path = recipe_file(tmp_path, yaml.safe_dump(data, sort_keys=False))
    err = error_of(path)
    keys = [e.key for e in err.all()]
    assert key in keys, keys
    hit = err.all()[keys.index(key)]
    assert fragment in hit.message
    assert hit.line is not None


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("train.lr=fast", "train.lr", "valid number"),
        ("train.lr=-1", "train.lr", "greater than 0"),
        ("train.batch_size=0", "train.batch_size", "greater than or equal to 1"),
        ("train.scheduler=exponential", "train.scheduler", "'constant' or 'inverse_sqrt'"),
        ("train.eval_every=sometimes", "train.eval_every", "epoch"),
        ("train.precision=fp8", "train.precision", "fp32"),
        ("data.max_length=2", "data.max_length", "greater than or equal to 8"),
        ("task=clasification", "task", "did you mean 'classification'"),
        ("model.architecture=bret", "model", "did you mean 'bert'"),
        ("model.name_or_path=bert-base-uncased", "model", "exactly one of"),
        ("data.validation_fraction=1.5", "data.validation_fraction", "less than 1"),
        ("data.labels=[a, a]", "data", "duplicates"),
        ("train.early_stopping_patience=2", None, None),  # valid: eval_every defaults to epoch
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, override, key, fragment):
    path = recipe_file(tmp_path)
    if key is None:
        load_recipe(path, [override])
        return
    err = error_of(path, [override])
    hit = next(e for e in err.all() if e.key == key)
    assert fragment in hit.message, hit.message
    assert "\n" not in str(hit)
    assert hit.file == f"override {override!r}" or key in ("model", "data")


def test_missing_required_section(tmp_path):
    err = error_of(recipe_file(tmp_path, BASE.replace("output_dir: out\n", "")))
    assert err.key == "output_dir" and "required" in err.message


def test_conflicting_sources(tmp_path):
    err = error_of(recipe_file(tmp_path), ["data.builtin.name=sentiment"])
    assert err.key == "data" and "only one data source" in err.message


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        ("task: classification\nmodel: [unclosed\n", 3, "invalid YAML"),
        ("task: classification\n  bad indent: 1\n", 2, "invalid YAML"),
        ("", None, "empty recipe"),
        ("- just\n- a list\n", 1, "mapping"),
    ],
)
def test_unreadable_recipes(tmp_path, content, line, fragment):
    err = error_of(recipe_file(tmp_path, content))
    assert fragment in err.message
    assert err.line == line


def test_non_utf8_recipe(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"task: classification\ndescription: caf\xe9\n")
    err = error_of(path)
    assert "not UTF-8" in err.message and err.line == 2


def test_missing_file():
    err = error_of("does/not/exist.yaml")
    assert "not found" in err.message


def test_extends_merges_then_overrides(tmp_path):
    write(tmp_path / "base" / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", "extends: base/base.yaml\ntrain:\n  batch_size: 8\n")
    recipe = load_recipe(child, ["train.epochs=1"])
    assert recipe.train.batch_size == 8  # child wins over parent
    assert recipe.train.lr == 1e-4  # parent's value kept (deep merge)
    assert recipe.train.epochs == 1  # override wins over both
    # The parent's relative paths resolve against the parent file.
    assert recipe.data.train == str(tmp_path / "base" / "train.csv")


def test_extends_error_points_into_the_parent(tmp_path):
    write(tmp_path / "base.yaml", BASE.replace("lr: 1.0e-4", "lr: 1.0e-4\n  bogus: 1"))
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    err = error_of(child)
    assert err.key == "train.bogus" and err.file.endswith("base.yaml") and err.line == 9


def test_extends_cycle(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    err = error_of(tmp_path / "a.yaml")
    assert "extends cycle" in err.message and "a.yaml" in err.message and "b.yaml" in err.message


def test_extends_missing_parent(tmp_path):
    err = error_of(write(tmp_path / "c.yaml", "extends: nowhere.yaml\n"))
    assert err.key == "extends" and "not found" in err.message and err.line == 1


def test_overrides_set_create_and_delete(tmp_path):
    path = recipe_file(tmp_path)
    recipe = load_recipe(
        path, ["train.adam_betas=[0.8, 0.9]", "data.columns.text=sentence", "~train.lr", "description=a b c"]
    )
    assert recipe.train.adam_betas == (0.8, 0.9)
    assert recipe.data.columns.text == "sentence"
    assert recipe.train.lr == 5e-5  # deleted -> schema default
    assert recipe.description == "a b c"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lr", "expected key=value"),
        ("~train.nothing", "no such key"),
        ("=3", "expected key=value"),
        ("train.lr.x=1", "not a section"),
    ],
)
def test_bad_overrides(tmp_path, override, fragment):
    err = error_of(recipe_file(tmp_path), [override])
    assert fragment in err.message


def test_override_path_resolves_against_cwd(tmp_path, monkeypatch):
    path = recipe_file(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    recipe = load_recipe(path, ["data.train=elsewhere.csv"])
    assert recipe.data.train == str(tmp_path.parent / "elsewhere.csv")


def test_hub_names_are_not_turned_into_paths(tmp_path):
    text = BASE.replace(
        "architecture: bert\n  config: {hidden_size: 32}", "name_or_path: google-bert/bert-base-uncased"
    )
    recipe = load_recipe(recipe_file(tmp_path, text))
    assert recipe.model.name_or_path == "google-bert/bert-base-uncased"
    (tmp_path / "local_model").mkdir()
    recipe = load_recipe(recipe_file(tmp_path, text.replace("google-bert/bert-base-uncased", "local_model")))
    assert recipe.model.name_or_path == str(tmp_path / "local_model")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path), ["train.epochs=2"])
    dumped = write(tmp_path / "resolved.yaml", dump_recipe(recipe))
    again = load_recipe(dumped)
    assert again.model_dump() == recipe.model_dump()
    assert "train.epochs=2" in dumped.read_text().splitlines()[0]


def test_model_config_keys_are_checked_when_building(tmp_path):
    from transformers import BertConfig

    from hfpipe.models import _check_config_keys

    with pytest.raises(RecipeError) as info:
        _check_config_keys(BertConfig, {"hidden_sise": 3}, "model.config")
    assert info.value.key == "model.config.hidden_sise" and "did you mean 'hidden_size'" in info.value.message


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_recipe_validates_and_says_how_to_run_it(path):
    from hfpipe.errors import DataError
    from hfpipe.preflight import problems

    recipe = load_recipe(path)
    schema, command = path.read_text().splitlines()[:2]  # the editor's schema line, then the command
    assert schema.startswith("# yaml-language-server: $schema=")
    assert command.split()[:3] in (["#", "hfpipe", "train"], ["#", "hfpipe", "fewshot"])
    assert command.split()[3] == path.stem  # by name, from any directory
    assert recipe.description
    # What it needs and this checkout does not hold: a run another bundled recipe makes (or `make minilm`),
    # or data whose source the recipe names
    produced = [ROOT / "runs", ROOT / "models"]
    for problem in problems(recipe):
        if isinstance(problem, DataError):
            assert recipe.data.source_hint and recipe.data.source_hint in problem.message
        else:
            assert "no such directory" in problem.message and any(str(p) in problem.message for p in produced)


def test_validate_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from hfpipe.cli import app\n"
        "r = CliRunner().invoke(app, ['validate', '--schema-only', *sys.argv[1:]])\n"
        "assert r.exit_code == 0, r.output\n"
        "CliRunner().invoke(app, ['validate', *sys.argv[1:]])  # the files and packages they need too\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    recipes = [str(p) for p in sorted(RECIPES.glob("*.yaml"))]
    done = subprocess.run([sys.executable, "-c", code, *recipes], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


FEWSHOT = """\
task: fewshot
model: {name_or_path: gpt2}
fewshot:
  tasks:
    - name: piqa
      mode: multiple_choice
      choices: ["{sol1}", "{sol2}"]
      data: {train: ../data/piqa.jsonl, validation: [../data/a.jsonl, ../data/b.jsonl]}
    - name: swag
      mode: classification
      prompt: "Q: {text}"
      data: {test: ../data/swag.jsonl}
output_dir: ../runs/fewshot
"""


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """The current directory: neither the recipe's folder nor its parent."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "elsewhere"


def test_paths_in_list_items_resolve_against_the_recipe_file(tmp_path, elsewhere):
    tasks = load_recipe(write(tmp_path / "recipes" / "r.yaml", FEWSHOT)).fewshot.tasks
    data = tmp_path / "data"
    assert tasks[0].data.train == str(data / "piqa.jsonl")
    assert tasks[0].data.validation == [str(data / "a.jsonl"), str(data / "b.jsonl")]
    assert tasks[1].data.test == str(data / "swag.jsonl")


def test_paths_in_list_items_of_a_parent_resolve_against_the_parent(tmp_path, elsewhere):
    write(tmp_path / "shared" / "base.yaml", FEWSHOT)
    child = write(tmp_path / "recipes" / "deep" / "r.yaml", "extends: ../../shared/base.yaml\n")
    recipe = load_recipe(child)
    assert recipe.fewshot.tasks[1].data.test == str(tmp_path / "data" / "swag.jsonl")
    # A child's own list replaces the parent's, and its paths resolve against the child.
    write(
        child,
        "extends: ../../shared/base.yaml\nfewshot:\n  tasks:\n"
        "    - {name: t, mode: loglikelihood_rolling, data: {test: t.txt}}\n",
    )
    assert load_recipe(child).fewshot.tasks[0].data.test == str(child.parent / "t.txt")


@pytest.mark.parametrize(
    "override, task, split, expected",
    [
        ("fewshot.tasks.0.data.train=mine.jsonl", 0, "train", "mine.jsonl"),
        ("fewshot.tasks.swag.data.test=[x.jsonl, y.jsonl]", 1, "test", ["x.jsonl", "y.jsonl"]),
        ("fewshot.tasks.1.data={test: z.jsonl}", 1, "test", "z.jsonl"),
        ("fewshot.tasks=[{name: t, mode: loglikelihood_rolling, data: {test: t.txt}}]", 0, "test", "t.txt"),
        (
            "fewshot={tasks: [{name: t, mode: loglikelihood_rolling, data: {test: t.txt}}]}",
            0,
            "test",
            "t.txt",
        ),
    ],
)
def test_override_paths_in_list_items_resolve_against_cwd(
    tmp_path, elsewhere, override, task, split, expected
):
    recipe = load_recipe(write(tmp_path / "recipes" / "r.yaml", FEWSHOT), [override])
    value = getattr(recipe.fewshot.tasks[task].data, split)
    if isinstance(expected, list):
        assert value == [str(elsewhere / name) for name in expected]
    else:
        assert value == str(elsewhere / expected)


def test_overrides_pick_list_items_by_index_or_name(tmp_path):
    path = recipe_file(tmp_path, FEWSHOT)
    tasks = load_recipe(
        path, ["fewshot.tasks.0.fewshot_split=validation", "fewshot.tasks.swag.split=validation"]
    ).fewshot.tasks
    assert (tasks[0].fewshot_split, tasks[0].split) == ("validation", "test")
    assert (tasks[1].fewshot_split, tasks[1].split) == ("train", "validation")
    tasks = load_recipe(path, ["~fewshot.tasks.swag.prompt"]).fewshot.tasks
    assert tasks[1].prompt == "{text}"  # the schema default
    assert [t.name for t in load_recipe(path, ["~fewshot.tasks.piqa"]).fewshot.tasks] == ["swag"]
    assert [t.name for t in load_recipe(path, ["~fewshot.tasks.1"]).fewshot.tasks] == ["piqa"]


def test_override_of_one_alias_use_leaves_the_others(tmp_path):
    text = FEWSHOT.replace("data: {test: ../data/swag.jsonl}", "data: &swag {test: ../data/swag.jsonl}")
    text = text.replace("output_dir:", "    - {name: swag2, mode: classification, data: *swag}\noutput_dir:")
    tasks = load_recipe(recipe_file(tmp_path, text), ["fewshot.tasks.swag.data.max_length=64"]).fewshot.tasks
    assert (tasks[1].data.max_length, tasks[2].data.max_length) == (64, 128)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("fewshot.tasks.2.split=test", "cannot set 'fewshot.tasks.2.split': fewshot.tasks has no item '2'"),
        ("fewshot.tasks.hella.split=test", "fewshot.tasks has no item 'hella'"),
        ("~fewshot.tasks.7", "cannot delete 'fewshot.tasks.7': fewshot.tasks has no item '7'"),
        ("~fewshot.tasks.hella.prompt", "cannot delete 'fewshot.tasks.hella.prompt'"),
        ("fewshot.tasks.0.choices.5=x", "fewshot.tasks.0.choices has no item '5' (indices 0-1)"),
    ],
)
def test_override_of_a_missing_list_item_lists_the_items(tmp_path, override, fragment):
    err = error_of(recipe_file(tmp_path, FEWSHOT), [override])
    assert fragment in err.message and "\n" not in str(err)
    if "tasks has no item" in fragment:
        assert err.message.endswith("(indices 0-1; names: piqa, swag)")


@pytest.mark.parametrize(
    "override, key",
    [
        ("fewshot.tasks.1.fewshot_split=nope", "fewshot.tasks.1.fewshot_split"),
        ("fewshot.tasks.swag.fewshot_split=nope", "fewshot.tasks.1.fewshot_split"),
        ("fewshot.tasks.swag={name: swag, mode: nope, data: {test: t.jsonl}}", "fewshot.tasks.1.mode"),
    ],
)
def test_errors_in_list_items_point_at_the_override(tmp_path, override, key):
    err = error_of(recipe_file(tmp_path, FEWSHOT), [override])
    assert err.key == key and err.file == f"override {override!r}"


def test_errors_in_list_items_point_at_their_line(tmp_path):
    path = recipe_file(tmp_path, FEWSHOT.replace("mode: classification", "mode: classifier"))
    err = error_of(path)
    assert err.key == "fewshot.tasks.1.mode" and err.line == 10
    # Deleting an earlier item renumbers the later ones: the error still finds its line.
    err = error_of(path, ["~fewshot.tasks.piqa"])
    assert err.key == "fewshot.tasks.0.mode" and err.line == 10

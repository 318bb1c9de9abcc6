"""Every command through Typer's CliRunner: output, exit codes, one-line errors."""

from __future__ import annotations

import json

from conftest import RECIPES, TINY, write

from hfpipe import __version__


def test_help_and_version(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("train", "validate", "evaluate", "predict", "recipes", "tasks", "schema"):
        assert command in result.output
    result = cli("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_recipes_lists_bundled_recipes(cli):
    result = cli("recipes")
    assert result.exit_code == 0
    for path in RECIPES.glob("*.yaml"):
        assert f"\n{path.stem} " in result.output


def test_tasks_and_schema(cli):
    result = cli("tasks")
    assert result.exit_code == 0 and "classification" in result.output and "bert" in result.output
    result = cli("schema")
    schema = json.loads(result.output)
    assert "task" in schema["properties"] and "train" in schema["properties"]


def test_validate_ok_and_typo(cli):
    result = cli("validate", RECIPES / "quickstart.yaml")
    assert result.exit_code == 0 and result.output.startswith("ok")
    result = cli("validate", RECIPES / "quickstart.yaml", "train.lrr=1e-4")
    assert result.exit_code == 2
    assert "train.lrr" in result.output and "did you mean 'lr'" in result.output
    assert "Traceback" not in result.output


def test_validate_reports_every_problem_of_every_recipe(cli, tmp_path):
    bad = write(
        tmp_path / "bad.yaml",
        "task: classification\nmodel: {architecture: bert}\n"
        "data: {builtin: {name: sentiment}}\noutput_dir: o\ntrain: {lrr: 1, epochz: 2}\n",
    )
    result = cli("validate", RECIPES / "quickstart.yaml", bad)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "bad.yaml:5: " in line]
    assert len(lines) == 2, result.output
    assert "1 of 2 recipe(s) invalid" in result.output


def test_validate_warns_on_trust_remote_code(cli, tmp_path):
    r = write(
        tmp_path / "remote.yaml",
        "task: classification\nmodel: {name_or_path: org/model, "
        "trust_remote_code: true}\ndata: {builtin: {name: sentiment}}\noutput_dir: o\n",
    )
    result = cli("validate", r)
    assert result.exit_code == 0 and "warning: model.trust_remote_code" in result.output


def test_validate_checks_the_files_and_folders_a_recipe_names(cli, tmp_path):
    missing = tmp_path / "missing.csv"
    result = cli(
        "validate",
        RECIPES / "quickstart.yaml",
        "~data.builtin",
        f"data.train={missing}",
        "~model.architecture",
        "~model.config",
        "~tokenizer.train",
        f"model.name_or_path={tmp_path / 'no-such-model'}",
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "model.name_or_path: no such directory" in result.output
    assert "missing.csv: file not found" in result.output


def test_an_occupied_output_dir_is_refused_before_loading_data_or_model(cli, tmp_path, monkeypatch):
    import hfpipe.data

    def load_raw(recipe):
        raise AssertionError("loaded the data before checking output_dir")

    monkeypatch.setattr(hfpipe.data, "load_raw", load_raw)
    out = write(tmp_path / "run" / "notes.txt", "someone's files").parent
    result = cli("train", RECIPES / "quickstart.yaml", *TINY, f"output_dir={out}")
    assert result.exit_code == 2 and "already holds files" in result.output


def test_train_recipe_error_exits_2(cli):
    result = cli("train", RECIPES / "quickstart.yaml", "train.batch_size=zero")
    assert result.exit_code == 2
    assert "train.batch_size" in result.output and "Traceback" not in result.output


def test_train_data_error_exits_3(cli, tmp_path):
    data = write(tmp_path / "d.csv", "text,label\ngood,pos\n,neg\n")
    result = cli(
        "train",
        RECIPES / "quickstart.yaml",
        *TINY,
        "~data.builtin",
        f"data.train={data}",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.exit_code == 3
    assert "d.csv:3: " in result.output and "empty text" in result.output


def test_train_refuses_to_overwrite_a_run(cli, tmp_path, tiny_run):
    result = cli("train", RECIPES / "quickstart.yaml", f"output_dir={tiny_run}")
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    stranger = tmp_path / "not_a_run"
    write(stranger / "precious.txt", "keep me")
    result = cli("train", RECIPES / "quickstart.yaml", *TINY, f"output_dir={stranger}", "--overwrite")
    assert result.exit_code == 2 and (stranger / "precious.txt").exists()


def test_train_end_to_end(cli, tmp_path):
    result = cli(
        "train", RECIPES / "quickstart.yaml", *TINY, "train.max_steps=6", f"output_dir={tmp_path / 'r'}"
    )
    assert result.exit_code == 0, result.output
    assert "run directory:" in result.output and "validation" in result.output
    resolved = (tmp_path / "r" / "recipe.yaml").read_text()
    assert "max_steps: 6" in resolved and "train.max_steps=6" in resolved.splitlines()[0]


def test_predict_text_file_and_output(cli, tiny_run, tmp_path):
    result = cli("predict", tiny_run, "--text", "What a superb film!", "--text", "The plot was dull.")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["text"] for r in rows] == ["What a superb film!", "The plot was dull."]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in rows)

    inputs = write(tmp_path / "in.txt", "What a superb film!\n\nThe plot was dull.\n")
    out = tmp_path / "preds.jsonl"
    result = cli("predict", tiny_run, "--file", inputs, "--output", out)
    assert result.exit_code == 0
    assert [json.loads(x)["label"] for x in out.read_text().splitlines()] == [r["label"] for r in rows]

    csv_in = write(tmp_path / "in.csv", 'text\n"What a superb film!"\n')
    result = cli("predict", tiny_run, "--file", csv_in)
    assert result.exit_code == 0 and json.loads(result.output)["label"] == rows[0]["label"]


def test_predict_errors(cli, tiny_run, tmp_path):
    result = cli("predict", tiny_run)
    assert result.exit_code == 2 and "--text" in result.output
    result = cli("predict", tmp_path, "--text", "x")
    assert result.exit_code == 2 and "not an hfpipe run directory" in result.output
    result = cli("predict", tiny_run, "--file", write(tmp_path / "x.csv", "sentence\nhello\n"))
    assert result.exit_code == 3 and "column 'text' not found" in result.output


def test_evaluate_on_recipe_split_and_on_a_file(cli, tiny_run, tmp_path):
    result = cli("evaluate", tiny_run, "--output", tmp_path / "m.json")
    assert result.exit_code == 0 and "accuracy" in result.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= saved["accuracy"] <= 1
    data = write(
        tmp_path / "labelled.csv", "text,label\nWhat a superb film!,positive\nThe plot was dull.,negative\n"
    )
    result = cli("evaluate", tiny_run, "--data", data)
    assert result.exit_code == 0 and "accuracy" in result.output
    bad = write(tmp_path / "bad.csv", "text,label\nWhat a superb film!,great\n")
    result = cli("evaluate", tiny_run, "--data", bad)
    assert result.exit_code == 3 and "bad.csv:2: " in result.output and "'great'" in result.output


def test_python_dash_m_works(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "hfpipe", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and __version__ in done.stdout


def test_every_command_gives_one_message_for_a_recipe_of_another_command(cli):
    """A few-shot recipe is listed as a task, and each command refuses a recipe another command runs with the
    same line: which command runs it."""
    assert "\nfewshot " in cli("tasks").output
    for command in ("train", "plan"):
        result = cli(command, "fewshot-gpt2-sentiment")
        assert result.exit_code == 2
        assert result.output.strip() == (
            "fewshot-gpt2-sentiment: task: a fewshot recipe runs with `hfpipe fewshot fewshot-gpt2-sentiment`, "
            "not `hfpipe " + command + "`"
        )
    result = cli("fewshot", "quickstart")
    assert (
        result.exit_code == 2 and "runs with `hfpipe train quickstart`, not `hfpipe fewshot`" in result.output
    )


def test_an_unknown_task_suggests_only_a_typo_and_lists_the_tasks(cli):
    near = cli("validate", "quickstart", "task=clasification")
    assert "did you mean 'classification'?" in near.output
    other = cli("validate", "quickstart", "task=token-classification")  # another head, not a typo
    assert other.exit_code == 2 and "did you mean" not in other.output
    assert "(known: causal-lm, classification, fewshot, generation" in other.output

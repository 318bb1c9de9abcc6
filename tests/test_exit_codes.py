"""The exit-code contract of the README ("Exit codes") held to the code.

Each code is also exercised end to end where its failure lives: 2 and 3 in test_cli.py, 4 (a NaN loss)
and 130 (SIGTERM) in test_resume.py, 5 (a --fail-under gate) in test_fewshot.py.
"""

from __future__ import annotations

import json
import re

from conftest import RECIPES, ROOT

from hfpipe import errors
from hfpipe.training import TrainingInterrupted

CONTRACT = {0: None, 1: errors.HfpipeError, 2: errors.RecipeError, 3: errors.DataError}
CONTRACT |= {4: errors.TrainingError, 5: errors.GateFailed, 130: TrainingInterrupted}


def readme_codes() -> dict[int, str]:
    section = ROOT.joinpath("README.md").read_text().split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| ([^|]+) \|", section, re.M)}


def test_readme_lists_every_exit_code_the_errors_use():
    documented = readme_codes()
    assert sorted(documented) == [0, 1, 2, 3, 4, 5, 130]
    for code, cls in CONTRACT.items():
        if cls is not None:
            assert cls.exit_code == code, cls
    # every user error class has a documented code; usage errors share the recipe's 2
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.HfpipeError)]
    assert {c.exit_code for c in classes} <= set(documented)
    assert errors.UsageError.exit_code == errors.RunError.exit_code == 2
    assert "diverged" in documented[4] and "gate" in documented[5] and "interrupted" in documented[130]


def test_usage_errors_exit_2_and_leave_no_output_dir(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", RECIPES / "quickstart.yaml", f"output_dir={out}", "--resume", "--overwrite")
    assert result.exit_code == 2 and "contradict" in result.output and not out.exists()
    result = cli("evaluate", tmp_path / "nowhere")
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = cli("validate", RECIPES / "quickstart.yaml")
    assert result.exit_code == 0


def test_fail_under_gates_of_train_and_evaluate(cli, tmp_path, tiny_run):
    from conftest import TINY

    test_accuracy = json.loads((tiny_run / "metrics.json").read_text())["test"]["accuracy"]
    result = cli("evaluate", tiny_run, "--fail-under", f"accuracy={test_accuracy + 0.01}")
    assert result.exit_code == 5 and f"fail-under: scored accuracy {test_accuracy:.4f} <" in result.output
    assert cli("evaluate", tiny_run, "--fail-under", f"accuracy={test_accuracy - 0.01}").exit_code == 0
    result = cli("evaluate", tiny_run, "--fail-under", "f1_macro=0.5")
    assert (
        result.exit_code == 2 and "no f1_macro to check (there is: accuracy, f1, loss, mcc)" in result.output
    )

    out = tmp_path / "run"
    small = [*TINY, "data.builtin.train_size=256", "train.epochs=1", f"output_dir={out}"]
    result = cli("train", RECIPES / "quickstart.yaml", *small, "--fail-under", "accuracy=1.01", "--json")
    assert result.exit_code == 5 and "fail-under: test accuracy" in result.output
    assert (out / "model.safetensors").exists()  # the run is kept: the gate judges it, it does not undo it
    assert json.loads(result.stdout.strip().splitlines()[-1])["run_dir"] == str(out)
    result = cli(
        "train", RECIPES / "quickstart.yaml", *small, "--overwrite", "--fail-under", "validation.loss=0"
    )
    assert result.exit_code == 0
    for bad in ("accuracy", "accuracy=high", "train.accuracy=0.5"):
        result = cli("train", RECIPES / "quickstart.yaml", *small, "--overwrite", "--fail-under", bad)
        assert result.exit_code == 2 and "expected [validation. | test.]METRIC=NUMBER" in result.output

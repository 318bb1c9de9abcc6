"""The bundled recipes ship inside the package: run by name from any directory (their paths resolve there),
copied into a folder to edit (their paths still point where they pointed), and present in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import RECIPES, ROOT

from hfpipe.recipe import bundled, load_recipe


def test_a_bundled_recipe_runs_by_name_from_any_directory(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("quickstart")
    assert recipe.output_dir == str(tmp_path / "runs" / "quickstart")  # the directory it runs from
    chain = load_recipe("bert-sentiment-from-mlm.yaml")
    assert chain.model.name_or_path == str(tmp_path / "runs" / "bert-mlm-pretrain")
    # through the checkout's recipes/ folder too: the same template, the same paths
    assert load_recipe(RECIPES / "quickstart.yaml").output_dir == recipe.output_dir
    result = cli("validate", "--schema-only", "quickstart", "fewshot-gpt2-sentiment")
    assert result.exit_code == 0, result.output
    result = cli("validate", "quickstrat")
    assert result.exit_code == 2 and "did you mean 'quickstart'?" in result.output


def test_a_copied_recipe_points_where_the_bundled_one_does(tmp_path, monkeypatch, cli):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    result = cli("recipes", "copy", "bert-sentiment-scratch-baseline", "mine")
    assert result.exit_code == 0, result.output
    # the recipe, the recipe it extends, the schema editors read
    written = sorted(p.name for p in (project / "mine").iterdir())
    assert written == [
        "bert-sentiment-from-mlm.yaml",
        "bert-sentiment-scratch-baseline.yaml",
        "recipe.schema.json",
    ]
    copied = project / "mine" / "bert-sentiment-scratch-baseline.yaml"
    assert copied.read_text().splitlines()[1].startswith(f"# hfpipe train {copied.relative_to(project)}")
    by_name = load_recipe("bert-sentiment-scratch-baseline").model_dump()
    monkeypatch.chdir(tmp_path)  # the copy's paths hold wherever it is loaded from
    assert load_recipe(copied).model_dump() == by_name
    again = cli("recipes", "copy", "bert-sentiment-scratch-baseline", project / "mine")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_a_recipe_that_reads_external_data_says_where_it_comes_from(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # no ../shared/data here
    result = cli("train", "marian-multi30k")
    assert result.exit_code == 3 and "Traceback" not in result.output
    line = [x for x in result.output.splitlines() if "file not found" in x][0]
    assert "github.com/multi30k/dataset" in line
    assert not (tmp_path / "runs").exists()
    header = (bundled.FOLDER / "marian-multi30k.yaml").read_text()
    assert "../shared/data/multi30k" in header.split("task:")[0]


@pytest.mark.slow
def test_the_wheel_ships_every_bundled_recipe(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            ROOT,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("hfpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in bundled.FOLDER.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json"):
            assert f"hfpipe/recipes/{path.relative_to(bundled.FOLDER)}" in names

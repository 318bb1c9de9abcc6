"""`hfpipe report`: the plotted curves are the logged ones, runs overlay, the summary names what differs."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import RECIPES, TINY

from hfpipe.api import train
from hfpipe.recipe import load_recipe
from hfpipe.report import figures, load_run, recipe_diff


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("other") / "faster"
    recipe = load_recipe(
        RECIPES / "quickstart.yaml",
        [*TINY, "data.builtin.train_size=256", "train.lr=1e-2", "train.eval_every=8", f"output_dir={out}"],
    )
    return train(recipe)


def records(run, kind):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["type"] == kind]


def test_plots_hold_the_logged_values_of_every_run(tiny_run, other_run):
    runs = [load_run(tiny_run), load_run(other_run)]
    figs = figures(runs)
    assert set(figs) == {"loss.png", "lr.png", "metrics.png"}
    lines = {line.get_label(): line for line in figs["loss.png"].axes[0].lines}
    for run, path in zip(runs, (tiny_run, other_run), strict=True):
        train_records, evals = records(path, "train"), records(path, "eval")
        line = lines[f"{run.name} train"]
        assert list(line.get_xdata()) == [r["step"] for r in train_records]
        assert list(line.get_ydata()) == [r["loss"] for r in train_records]
        line = lines[f"{run.name} eval"]
        assert list(line.get_ydata()) == [r["eval_loss"] for r in evals]
        (lr,) = [ln for ln in figs["lr.png"].axes[0].lines if ln.get_label() == run.name]
        assert list(lr.get_ydata()) == [r["lr"] for r in train_records]
    titles = [ax.get_title() for ax in figs["metrics.png"].axes if ax.get_visible()]
    assert titles == ["eval accuracy", "eval f1", "eval mcc"]
    accuracy = figs["metrics.png"].axes[0].lines
    assert len(accuracy) == 2 and list(accuracy[1].get_ydata()) == [
        r["eval_accuracy"] for r in records(other_run, "eval")
    ]


def test_report_command_writes_pngs_and_a_summary_with_the_recipe_diff(cli, tiny_run, other_run, tmp_path):
    out = tmp_path / "report"
    result = cli("report", tiny_run, other_run, "-o", out)
    assert result.exit_code == 0, result.output
    for name in ("loss.png", "lr.png", "metrics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| train.lr | 0.0030 | 0.0100 |" in summary
    assert "| train.eval_every | epoch | 8 |" in summary
    assert "output_dir" not in summary.split("## Recipe differences")[1].split("## Curves")[0]
    test_accuracy = json.loads((tiny_run / "metrics.json").read_text())["test"]["accuracy"]
    assert f"| test | accuracy | {test_accuracy:.4f} |" in summary
    assert "![loss.png](loss.png)" in summary
    page = (out / "summary.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Recipe differences" in page


def test_resumed_and_cut_logs_and_bad_directories(tmp_path, tiny_run, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    # a step logged twice (the later record wins); a crash cuts the last line
    log.write_text("\n".join([*lines, lines[0].replace('"loss": ', '"loss": 9.0, "x": '), '{"type": "tr']))
    loaded = load_run(run)
    assert len(loaded.train) == len(records(tiny_run, "train")) and loaded.train[0]["loss"] == 9.0
    assert recipe_diff([loaded, load_run(tiny_run)]) == []
    assert cli("report", tmp_path / "nowhere", "-o", tmp_path / "r").exit_code == 2


def test_a_run_that_logged_nothing_yet_still_reports(tmp_path, tiny_run, cli):
    run = tmp_path / "starting"
    run.mkdir()
    shutil.copy(tiny_run / "recipe.yaml", run / "recipe.yaml")
    result = cli("report", run, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "(no final metrics yet)" in (tmp_path / "r" / "summary.md").read_text()
    assert result.output.count("wrote ") == 4  # loss, lr, summary.md, summary.html: what it wrote


def test_json_line_is_strict_json(capsys):
    from hfpipe import console

    console.configure(json=True)
    try:
        console.final_json({"metrics": {"perplexity": float("inf"), "loss": float("nan")}})
    finally:
        console.configure()
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == {"metrics": {"perplexity": "inf", "loss": None}} and "NaN" not in line

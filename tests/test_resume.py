"""Crash safety: killed at any moment (SIGKILL mid-step or mid-checkpoint, SIGTERM) and resumed, a run ends
with the metrics of an unbroken one; non-finite losses stop or are skipped; checkpoints stay whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import RECIPES, TINY

RECIPE = [
    *TINY,
    "data.builtin.train_size=256",
    "data.builtin.validation_size=64",
    "data.builtin.test_size=64",
    "train.epochs=2",
    "train.save_every=5",
    "train.eval_every=8",
    "train.log_every=2",
    "train.save_total_limit=3",
]  # 16 steps an epoch, 32 in all


def hfpipe(out, *extra, fault=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HFPIPE_FAULT", None)
    if fault:
        env["HFPIPE_FAULT"] = fault
    cmd = [
        sys.executable,
        "-m",
        "hfpipe",
        "train",
        str(RECIPES / "quickstart.yaml"),
        *RECIPE,
        f"output_dir={out}",
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(run):
    return [
        (r["step"], r["loss"])
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "train"
    ]


def evals(run):
    return [
        {k: v for k, v in r.items() if k.startswith("eval_") or k == "step"}
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "eval"
    ]


def assert_same_run(a, b):
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for split in ("validation", "test"):
        for key, value in ma[split].items():
            assert mb[split][key] == pytest.approx(value, abs=1e-6), (split, key)
    assert ma["best_step"] == mb["best_step"] and ma["train"]["steps"] == mb["train"]["steps"]
    assert [s for s, _ in losses(a)] == [s for s, _ in losses(b)]
    for (_, x), (_, y) in zip(losses(a), losses(b), strict=True):
        assert y == pytest.approx(x, abs=1e-6)
    assert len(evals(a)) == len(evals(b))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken") / "run"
    done = hfpipe(out)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_killed_anywhere_and_resumed_equals_unbroken(unbroken, tmp_path):
    out = tmp_path / "run"
    # SIGKILL: in a step of epoch 1, while writing checkpoint 10, in epoch 2 just after a checkpoint,
    # and in the last steps. Each time the same command with --resume picks up.
    crashes = ["step:7", "checkpoint:10", "step:16", "step:21", "step:31"]
    for i, fault in enumerate(crashes):
        done = hfpipe(out, *(["--resume"] if i else []), fault=fault)
        assert done.returncode == -signal.SIGKILL, (fault, done.stderr[-2000:])
        if fault == "checkpoint:10":
            assert (out / "checkpoints" / ".tmp-step-0000010").exists()  # cut short, mid-write
            assert not (out / "checkpoints" / "step-0000010").exists()
        assert not (out / "config.json").exists()
    done = hfpipe(out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step-0000030" in done.stderr
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert_same_run(unbroken, out)


@pytest.mark.slow
def test_sigterm_saves_and_resume_finishes_the_same(unbroken, tmp_path):
    out = tmp_path / "run"
    done = hfpipe(out, fault="sigterm:12")
    assert done.returncode == 130
    message = done.stderr.strip().splitlines()[-1]
    assert (
        message.startswith("SIGTERM at step 12: checkpoint saved; continue with `") and "--resume`" in message
    )
    saved = json.loads((out / "checkpoints" / "step-0000012" / "trainer_state.json").read_text())
    done = hfpipe(out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(unbroken, out)
    # Both times cover the whole run, both sessions: training alone never exceeds it
    times = json.loads((out / "metrics.json").read_text())["train"]
    assert saved["train_seconds"] <= saved["runtime_seconds"] < times["runtime_s"]
    assert saved["train_seconds"] < times["train_s"] <= times["runtime_s"]


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, cli):
    out = tmp_path / "run"
    os.environ["HFPIPE_FAULT"] = "nan:7"
    try:
        result = cli("train", RECIPES / "quickstart.yaml", *RECIPE, f"output_dir={out}")
    finally:
        del os.environ["HFPIPE_FAULT"]
    assert result.exit_code == 4
    assert "loss is nan at step 7" in result.output and "last checkpoint is intact" in result.output
    state = json.loads((out / "checkpoints" / "step-0000005" / "trainer_state.json").read_text())
    assert state["step"] == 5 and not (out / "checkpoints" / "step-0000007").exists()


def test_nonfinite_loss_skip(tmp_path):
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    os.environ["HFPIPE_FAULT"] = "nan:3"
    try:
        run = train(
            load_recipe(
                RECIPES / "quickstart.yaml",
                [
                    *RECIPE,
                    "train.on_nonfinite_loss=skip",
                    "train.max_steps=6",
                    f"output_dir={tmp_path / 'run'}",
                ],
            )
        )
    finally:
        del os.environ["HFPIPE_FAULT"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["skipped_nonfinite_batches"] == 1 and metrics["train"]["steps"] == 6
    assert all(loss == loss for _, loss in losses(run))  # no NaN reached the logs


def test_resume_refuses_a_changed_recipe_and_a_missing_checkpoint(tmp_path, cli):
    out = tmp_path / "run"
    assert (
        cli("train", RECIPES / "quickstart.yaml", *RECIPE, "train.max_steps=5", f"output_dir={out}").exit_code
        == 0
    )
    result = cli(
        "train",
        RECIPES / "quickstart.yaml",
        *RECIPE,
        "train.max_steps=5",
        "data.max_length=32",
        f"output_dir={out}",
        "--resume",
    )
    assert result.exit_code == 2 and "resuming needs the same data" in result.output
    bare = tmp_path / "bare"
    assert (
        cli(
            "train",
            RECIPES / "quickstart.yaml",
            *RECIPE,
            "train.max_steps=2",
            "train.save_every=never",
            f"output_dir={bare}",
        ).exit_code
        == 0
    )
    result = cli(
        "train",
        RECIPES / "quickstart.yaml",
        *RECIPE,
        "train.save_every=never",
        f"output_dir={bare}",
        "--resume",
    )
    assert result.exit_code == 2 and "no complete checkpoint" in result.output


def test_resume_auto_starts_fresh_then_continues(tmp_path):
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(
        RECIPES / "quickstart.yaml",
        [*RECIPE, "train.resume=auto", "train.max_steps=5", f"output_dir={tmp_path / 'run'}"],
    )
    run = train(recipe)  # nothing to resume: a fresh start
    longer = load_recipe(
        RECIPES / "quickstart.yaml",
        [*RECIPE, "train.resume=auto", "train.max_steps=10", f"output_dir={tmp_path / 'run'}"],
    )
    train(longer)  # the train section may change: continue from step 5 to 10
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 10


@pytest.mark.slow
def test_signal_on_an_epochs_last_step_keeps_that_epochs_evaluation(tmp_path):
    """The epoch-end evaluation comes before the epoch-end checkpoint, so the resumed run knows it."""
    cadence = ["train.eval_every=epoch", "train.save_every=never", "train.epochs=3"]
    base = tmp_path / "base"
    assert hfpipe(base, *cadence).returncode == 0
    out = tmp_path / "run"
    done = hfpipe(out, *cadence, "--overwrite", fault="sigterm:16")
    assert done.returncode == 130
    assert "--overwrite" not in done.stderr.strip().splitlines()[-1]  # the suggested command must work
    done = hfpipe(out, *cadence, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(base, out)


def test_killed_before_the_first_checkpoint_starts_again(tmp_path):
    out = tmp_path / "run"
    assert hfpipe(out, "train.max_steps=6", fault="step:3").returncode == -signal.SIGKILL
    done = hfpipe(out, "train.max_steps=6", "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped before its first checkpoint" in done.stderr


def test_early_stopping_survives_a_resume(tmp_path):
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    stop = [
        *RECIPE,
        "train.lr=1e-9",
        "train.metric_for_best=loss",
        "train.early_stopping_patience=1",
        "train.early_stopping_threshold=1.0",
        f"output_dir={tmp_path / 'run'}",
    ]
    run = train(load_recipe(RECIPES / "quickstart.yaml", stop))
    steps = json.loads((run / "metrics.json").read_text())["train"]["steps"]
    assert steps == 16  # best at 8, no improvement at 16
    train(load_recipe(RECIPES / "quickstart.yaml", stop), resume=True)
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == steps


def test_resume_guards(tmp_path, cli):
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "a good film,pos\na dull film,neg\n" * 20)
    common = [
        *RECIPE,
        "~data.builtin",
        f"data.train={data}",
        "train.max_steps=5",
        f"output_dir={tmp_path / 'run'}",
    ]
    run = train(load_recipe(RECIPES / "quickstart.yaml", common))
    # a cut-short last line in the log does not block a resume
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "st')
    train(load_recipe(RECIPES / "quickstart.yaml", common), resume=True)
    # a different batch size would replay or skip examples
    result = cli("train", RECIPES / "quickstart.yaml", *common, "train.batch_size=8", "--resume")
    assert result.exit_code == 2 and "train.batch_size" in result.output
    # changed data under the same path
    data.write_text("text,label\n" + "a good film,neg\na dull film,pos\n" * 20)
    result = cli("train", RECIPES / "quickstart.yaml", *common, "--resume")
    assert result.exit_code == 3 and "changed since the run started" in result.output
    # --overwrite wins over train.resume: auto
    result = cli("train", RECIPES / "quickstart.yaml", *common, "train.resume=auto", "--overwrite")
    assert result.exit_code == 0 and "resumed" not in result.output

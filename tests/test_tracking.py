"""`tracking: [jsonl, tensorboard, mlflow]`: real TensorBoard event files and a real local MLflow store,
read back and compared with metrics.jsonl."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, TINY

from hfpipe.api import train
from hfpipe.errors import RecipeError
from hfpipe.recipe import load_recipe


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path_factory.mktemp("tracked") / "run"
    recipe = load_recipe(
        RECIPES / "quickstart.yaml",
        [
            *TINY,
            "data.builtin.train_size=256",
            "train.epochs=2",
            "train.log_every=4",
            "name=tracked",
            "tags=[smoke, tiny]",
            "tracking=[jsonl, tensorboard, mlflow]",
            f"output_dir={out}",
        ],
    )
    return train(recipe)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def logged(run, kind: str, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if r["type"] == kind and key in r}


def test_tensorboard_events_hold_what_metrics_jsonl_holds(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard" / "tracked")).Reload()
    assert {"train/loss", "train/lr", "train/tokens_per_s", "eval/loss", "eval/accuracy"} <= set(
        events.Tags()["scalars"]
    )
    for tag, kind, key in (("train/loss", "train", "loss"), ("eval/accuracy", "eval", "eval_accuracy")):
        written = {e.step: e.value for e in events.Scalars(tag)}
        expected = logged(tracked_run, kind, key)
        assert written.keys() == expected.keys() and len(written) >= 2
        assert all(abs(written[s] - expected[s]) < 1e-6 * max(1, abs(expected[s])) for s in written)


def test_mlflow_store_holds_the_run_its_name_tags_params_and_metrics(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.tags["smoke"] == "true" and run.data.tags["tiny"] == "true"
    assert run.data.params["train.lr"] == "0.003" and run.data.params["task"] == "classification"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    expected = logged(tracked_run, "train", "loss")
    assert history.keys() == expected.keys()
    assert all(abs(history[s] - expected[s]) < 1e-6 for s in history)
    accuracy = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert [m.value for m in accuracy] == list(logged(tracked_run, "eval", "eval_accuracy").values())


def test_a_missing_tracker_package_is_a_recipe_error_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    out = tmp_path / "run"
    recipe = load_recipe(RECIPES / "quickstart.yaml", [*TINY, "tracking=[mlflow]", f"output_dir={out}"])
    with pytest.raises(
        RecipeError, match=r"tracking: mlflow is not installed: pip install 'hfpipe\[tracking\]'"
    ):
        train(recipe)
    assert not out.exists()


def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_log(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    common = [
        *TINY,
        "data.builtin.train_size=256",
        "train.log_every=2",
        "train.save_every=4",
        "train.eval_every=4",
    ]
    common += ["name=resumed", "tracking=[tensorboard, mlflow]", f"output_dir={out}"]
    train(load_recipe(RECIPES / "quickstart.yaml", [*common, "train.max_steps=8"]))
    train(load_recipe(RECIPES / "quickstart.yaml", [*common, "train.max_steps=12"]), resume=True)

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(steps) and steps[-1] == 12 and 8 in steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [4, 8, 12]
    events = EventAccumulator(str(out / "tensorboard" / "resumed")).Reload()
    written = [e.step for e in events.Scalars("train/loss")]
    assert written == list(range(2, 13, 2))  # each step once, across the resume

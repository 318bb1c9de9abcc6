"""Experiment trackers besides metrics.jsonl (always written), through Accelerate's trackers: one registry,
one class a tracker. Light at import (no accelerate, no tracker package): the schema reads the names."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

from hfpipe import io
from hfpipe.errors import HfpipeError, RecipeError, first_line

STATE = "tracking.json"  # what a resumed run needs to log into the same tracker run (the MLflow run id)


class Tracker:
    """A tracker of the recipe's `tracking` list: its Accelerate name, the package it needs, the keyword
    arguments Accelerate starts it with, and what it sets up before / keeps after starting."""

    name = ""
    package = ""

    def setup(self, accelerator, recipe, run_dir: Path) -> None:
        """Before the trackers start (every process)."""

    def init_kwargs(self, recipe, resumed_at: int | None, saved: dict) -> dict:
        return {}

    def started(self, tracker, run_dir: Path) -> dict:
        """What to keep in RUN_DIR/tracking.json for a resume (main process)."""
        return {}


TRACKERS: dict[str, Tracker] = {}


def register(tracker: Tracker) -> Tracker:
    TRACKERS[tracker.name] = tracker
    return tracker


class TensorBoard(Tracker):
    """Event files in RUN_DIR/tensorboard/NAME; a resumed run drops the events logged after its checkpoint."""

    name = package = "tensorboard"

    def init_kwargs(self, recipe, resumed_at, saved):
        return {"purge_step": resumed_at + 1} if resumed_at is not None else {}


class MLflow(Tracker):
    """MLFLOW_TRACKING_URI when set (a server, a database), else a local store in RUN_DIR/mlruns; a resumed
    run logs into the same MLflow run."""

    name = package = "mlflow"

    def setup(self, accelerator, recipe, run_dir):
        if accelerator.is_main_process and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            # MLflow 3 keeps its file store in "maintenance mode" and asks for this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())

    def init_kwargs(self, recipe, resumed_at, saved):
        kwargs = {"run_name": run_name(recipe), "tags": {tag: "true" for tag in recipe.tags}}
        if resumed_at is not None and saved.get("mlflow_run_id"):
            kwargs["run_id"] = saved["mlflow_run_id"]
        return kwargs

    def started(self, tracker, run_dir):
        run = getattr(tracker, "active_run", None)
        return {"mlflow_run_id": run.info.run_id} if run is not None else {}


register(TensorBoard())
register(MLflow())


def names() -> list[str]:
    """What a recipe's `tracking` list may hold: jsonl (metrics.jsonl, always written) and the trackers."""
    return ["jsonl", *TRACKERS]


def run_name(recipe) -> str:
    return recipe.name or Path(recipe.output_dir).name


def check_installed(recipe) -> None:
    """Fail before anything runs when a recipe's tracker is not installed (Accelerate would drop it with a
    warning and the run would log nowhere)."""
    for name in recipe.tracking:
        tracker = TRACKERS.get(name)
        if tracker is not None and importlib.util.find_spec(tracker.package) is None:
            raise RecipeError(
                f"{name} is not installed: pip install 'hfpipe[tracking]' (or {tracker.package})",
                key="tracking",
            )


def start(accelerator, recipe, run_dir: Path, resumed_at: int | None = None) -> list[str]:
    """Start the recipe's trackers: the run's name, its tags and the whole recipe as parameters (a resumed
    run, `resumed_at` its checkpoint's step, logs its parameters no second time). Returns their names."""
    chosen = [TRACKERS[name] for name in recipe.tracking if name in TRACKERS]
    if not chosen:
        return []
    from accelerate.tracking import filter_trackers

    saved = json.loads((run_dir / STATE).read_text()) if (run_dir / STATE).exists() else {}
    for tracker in chosen:
        tracker.setup(accelerator, recipe, run_dir)
    # The Accelerator was made before the run directory existed (nothing may touch it before every check
    # has passed): its trackers and their directory are set now.
    accelerator.project_configuration.set_directories(str(run_dir))
    accelerator.project_configuration.logging_dir = str(run_dir / "tensorboard")
    accelerator.log_with = filter_trackers([t.name for t in chosen], accelerator.logging_dir)
    init_kwargs = {t.name: t.init_kwargs(recipe, resumed_at, saved) for t in chosen}
    config = {
        key: str(value) if value is None or isinstance(value, (list, tuple)) else value
        for key, value in io.flatten(recipe.model_dump(mode="json")).items()
    }  # dotted keys with scalar values: what TensorBoard's hparams and MLflow params take
    config["tags"] = ", ".join(recipe.tags)
    try:
        # A resumed run's parameters are logged already (MLflow refuses a changed value, and `train` may
        # change on resume: more steps).
        accelerator.init_trackers(
            run_name(recipe), config=None if resumed_at is not None else config, init_kwargs=init_kwargs
        )
    except Exception as exc:  # a tracker's own failure (a server down, a bad URI): one line, not a traceback
        finish(accelerator, quietly=True)
        names = ", ".join(t.name for t in chosen)
        raise HfpipeError(
            f"tracking: {names} did not start: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if accelerator.is_main_process:
        kept: dict = {}
        for started in accelerator.trackers:
            kept |= TRACKERS[started.name].started(started, run_dir) if started.name in TRACKERS else {}
        if kept:
            io.write_json(run_dir / STATE, kept)
    return [t.name for t in chosen]


def log(accelerator, kind: str, values: dict, step: int) -> None:
    """The numbers of a log record as `kind/name` scalars (eval_accuracy -> eval/accuracy)."""
    scalars = {
        f"{kind}/{k.removeprefix(kind + '_')}": v
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    accelerator.log(scalars, step=step)


def finish(accelerator, quietly: bool = False) -> None:
    """Flush TensorBoard's writer, end the MLflow run; not accelerator.end_training(), which also destroys
    the process group that the rest of the run (test scoring, saving) still needs."""
    for tracker in accelerator.trackers:
        try:
            tracker.finish()
        except Exception:  # noqa: BLE001  (quietly: already failing, the first error is the one to show)
            if not quietly:
                raise
    accelerator.trackers = []

"""The loop's pieces below api.train: the schedule arithmetic, the clock, the log window, the best-model rule
and the callbacks' events, each on its own (no whole run where one is not the point)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import RECIPES, TINY

from hfpipe.training.callbacks import Callback
from hfpipe.training.checkpoint import BestModel
from hfpipe.training.schedule import Schedule
from hfpipe.training.state import Clock, TrainState


def settings(**values):
    base = {"max_steps": None, "epochs": 3.0, "warmup_steps": None, "warmup_ratio": 0.1}
    return SimpleNamespace(**{**base, **values})


def test_the_schedule_counts_optimizer_steps_epochs_and_warmup():
    # 10 passes an epoch, 3 accumulated a step: 4 steps an epoch (the last step takes the one left)
    schedule = Schedule.of(settings(), passes_per_epoch=10, accumulation=3)
    assert (schedule.steps_per_epoch, schedule.total_steps, schedule.epochs, schedule.warmup_steps) == (
        4,
        12,
        3,
        2,
    )
    capped = Schedule.of(settings(max_steps=9, warmup_steps=5), passes_per_epoch=10, accumulation=3)
    assert (capped.total_steps, capped.epochs, capped.warmup_steps) == (9, 3, 5)
    half = Schedule.of(settings(epochs=0.5), passes_per_epoch=10, accumulation=1)
    assert (half.total_steps, half.epochs) == (5, 1)
    stream = Schedule.of(settings(max_steps=7), passes_per_epoch=None, accumulation=2)
    assert stream.total_steps == 7 and stream.steps_per_epoch is None


def test_the_schedule_counts_evaluations_as_the_loop_runs_them():
    schedule = Schedule.of(settings(), passes_per_epoch=10, accumulation=1)  # 30 steps, 3 epochs
    assert schedule.evaluations("epoch") == 3
    assert schedule.evaluations(7) == 5  # steps 7, 14, 21, 28 and the end
    assert schedule.evaluations(10) == 3  # the end is step 30 itself
    assert schedule.evaluations("never") == 0


def test_the_clock_keeps_evaluation_out_of_training_time_and_counts_on_after_a_resume():
    now = [100.0]
    clock = Clock(now=lambda: now[0])
    clock.start(TrainState(train_seconds=5.0, runtime_seconds=8.0))  # what earlier sessions spent
    now[0] += 2.0
    with clock.excluding():  # an evaluation of 10 s
        now[0] += 10.0
    now[0] += 1.0
    assert clock.trained() == pytest.approx(8.0) and clock.ran() == pytest.approx(21.0)
    assert clock.window_seconds() == pytest.approx(3.0)  # training since the window started
    state = TrainState()
    clock.record(state)
    assert state.train_seconds <= state.runtime_seconds


def test_the_best_model_rule():
    best = BestModel("unused", accelerator=None, metric="accuracy", greater=True, threshold=0.01)
    state = TrainState()
    assert best.improved(0.5, 0.9, state)
    state.best_metric, state.best_loss = 0.5, 0.9
    assert not best.improved(0.505, 0.1, state)  # better, but not by more than the threshold
    assert best.improved(0.52, 2.0, state)
    assert best.improved(0.5, 0.8, state) and not best.improved(0.5, 0.95, state)  # a tie: the lower loss
    assert not best.improved(float("nan"), 0.1, state)


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, loop):
        self.events.append(("start", loop.state.step))

    def on_step_end(self, loop):
        self.events.append(("step", loop.state.step))

    def on_epoch_end(self, loop):
        self.events.append(("epoch", loop.state.step))

    def on_log(self, loop, values):
        self.events.append(("log", loop.state.step, sorted(values)))

    def on_evaluate(self, loop, metrics):
        self.events.append(("evaluate", loop.state.step))

    def on_save(self, loop, folder):
        self.events.append(("save", loop.state.step, folder.name))

    def on_train_end(self, loop):
        self.events.append(("end", loop.state.step, loop.final_model is not None))


def test_callbacks_see_every_event_in_order_and_time_comes_from_an_injected_clock(tmp_path):
    """A run of 2 epochs of 4 steps, logging every 3, evaluating each epoch, saving every 2 steps; its clock
    moves 100 s during each evaluation, which shows in runtime_s and not in train_s."""
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    recorder = Recorder()
    offset = [0.0]
    import time

    clock = Clock(now=lambda: time.perf_counter() + offset[0])

    class SlowEvaluation(Callback):  # the clock jumps while evaluating (the evaluation itself is timed)
        def on_evaluate(self, loop, metrics):
            offset[0] += 100.0

    recipe = load_recipe(
        RECIPES / "quickstart.yaml",
        [
            *TINY,
            "data.builtin.train_size=64",
            "data.builtin.validation_size=16",
            "data.builtin.test_size=0",
            "train.epochs=2",
            "train.log_every=3",
            "train.save_every=2",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    run = train(recipe, callbacks=[recorder, SlowEvaluation()], clock=clock)
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert [e[1] for e in recorder.events if e[0] == "step"] == list(range(1, 9))
    assert [e[1] for e in recorder.events if e[0] == "log"] == [3, 6, 8]
    assert [e[1] for e in recorder.events if e[0] == "evaluate"] == [4, 8]
    assert [e[1] for e in recorder.events if e[0] == "save"] == [2, 4, 6, 8]
    assert [e[1] for e in recorder.events if e[0] == "epoch"] == [4, 8]
    assert recorder.events[-1] == ("end", 8, True)
    # an epoch's end: its evaluation, then its checkpoint, then the epoch's end event
    at_4 = [e[0] for e in recorder.events if e[1] == 4]
    assert at_4.index("evaluate") < at_4.index("save") < at_4.index("epoch")
    times = json.loads((run / "metrics.json").read_text())["train"]
    assert times["runtime_s"] >= 200 > times["train_s"]

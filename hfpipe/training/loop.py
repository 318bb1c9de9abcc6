"""The loop: for each batch, take a step; on a step that updates the weights, log, evaluate and save when
they are due; stop when asked (the end of the schedule, early stopping, a signal). Everything else is a
named piece: the schedule, the step, checkpoints and the best model, the log window, the clock, and the
callbacks that watch it all."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfpipe import io
from hfpipe.errors import DataError
from hfpipe.training.batching import epoch_batches
from hfpipe.training.callbacks import Callback, TrainingInterrupted
from hfpipe.training.checkpoint import BestModel, Checkpoints
from hfpipe.training.schedule import Schedule
from hfpipe.training.state import Clock, LogWindow, TrainState
from hfpipe.training.step import TrainStep


@dataclass
class Loop:
    recipe: Any
    task: Any
    accelerator: Any
    model: Any  # prepared (wrapped by Accelerate)
    tokenizer: Any
    step: TrainStep
    schedule: Schedule
    train_loader: Any
    order: Any  # what orders the training batches: a BatchSampler, or the stream
    eval_loader: Any  # None: no evaluation
    checkpoints: Checkpoints
    best: BestModel
    window: LogWindow
    clock: Clock
    kernels: Any  # train.fast_kernels, restored when training ends
    callbacks: list[Callback]
    state: TrainState
    run_dir: Path
    metric_for_best: str
    resumed_at: int | None = None  # the step of the checkpoint the run resumed from
    should_stop: bool = False
    interrupted: str = ""  # the signal that asked to stop
    last_eval: dict = field(default_factory=dict)
    last_eval_step: int = -1
    final_model: Any = None  # the model returned: unwrapped, with the best evaluation's weights
    validation: dict = field(default_factory=dict)  # what it scored on the validation split

    def __post_init__(self) -> None:
        self.settings = self.recipe.train
        self.metrics_log = Path(self.run_dir) / io.METRICS_LOG
        if self.resumed_at is not None:
            self.should_stop = self.state.stopped  # early stopping decided before a resume: nothing left
            self.last_eval_step = self.state.step

    def emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def stop(self) -> None:
        """Stop after this step, as at the end of the schedule (early stopping)."""
        self.should_stop = True

    def interrupt(self, signal_name: str) -> None:
        """Stop after this step with a checkpoint, and say how to resume (a signal)."""
        self.interrupted = signal_name

    def run(self) -> None:
        self.model.train()
        self.emit("on_train_start")
        try:
            self.train()
            self.finish()
        finally:
            self.kernels.restore()  # own modules and attention, PyTorch's dropout: the model saved is its own
            self.emit("on_train_end")

    def train(self) -> None:
        """For each batch, take a step; on a step that updates the weights, log, evaluate and save when due;
        stop when asked. An epoch ends with its evaluation, then its checkpoint."""
        for epoch, skip in self.epochs():
            for index, batch in self.batches(epoch, skip):
                outcome = self.step(batch, self.state, index)
                if outcome.skipped:
                    continue  # its loss was not finite (train.on_nonfinite_loss: skip)
                self.window.add(outcome.loss, outcome.tokens, outcome.examples)
                if not outcome.synced:
                    continue  # still accumulating
                self.advance(epoch, index)  # counted; logged and evaluated when due
                if self.epoch_ends(index):
                    break  # the epoch's (or the run's) last step: evaluated and saved below
                if self.due(self.settings.save_every):
                    self.save()
                if self.interrupted:
                    self.stop_with_checkpoint()
            if self.end_epoch(epoch):
                break
            if self.interrupted:
                self.stop_with_checkpoint()

    def epochs(self):
        """(epoch, its batches already trained) from where the run stands (a resumed run: mid-epoch)."""
        state, schedule = self.state, self.schedule
        first, skip = state.epoch, state.batches_in_epoch
        if schedule.steps_per_epoch is not None and skip >= len(self.train_loader):  # saved at an epoch's end
            first, skip = first + 1, 0
        last = schedule.epochs if state.step < schedule.total_steps and not self.should_stop else first
        for epoch in range(first, last):
            yield epoch, skip
            skip = 0

    def batches(self, epoch: int, skip: int):
        """(index, batch) of the epoch's batches after the first `skip`; the state knows where it is."""
        self.state.epoch, self.state.batches_in_epoch = epoch, skip
        for index, batch in enumerate(
            epoch_batches(self.accelerator, self.train_loader, self.order, epoch, skip), skip
        ):
            self.state.batches_in_epoch = index + 1
            yield index, batch

    def advance(self, epoch: int, index: int) -> None:
        """A step is done: count it, then log and evaluate when due."""
        state = self.state
        state.step += 1
        per_epoch = self.schedule.steps_per_epoch
        state.epoch_float = epoch + (0 if per_epoch is None else (index + 1) / len(self.train_loader))
        self.emit("on_step_end")
        if state.step % self.settings.log_every == 0 or state.step == self.schedule.total_steps:
            self.log()
        if self.eval_loader is not None and self.due(self.settings.eval_every):
            self.evaluate()

    def due(self, every) -> bool:
        return isinstance(every, int) and self.state.step % every == 0

    def epoch_ends(self, index: int) -> bool:
        per_epoch = self.schedule.steps_per_epoch
        last_batch = per_epoch is not None and index + 1 == len(self.train_loader)
        return self.should_stop or self.state.step >= self.schedule.total_steps or last_batch

    def end_epoch(self, epoch: int) -> bool:
        """An epoch's end: evaluate first (a run resumed from the checkpoint knows this evaluation), then
        save. The final model is always evaluated and saved. True when training is over."""
        state, settings = self.state, self.settings
        if self.schedule.steps_per_epoch is None and state.batches_in_epoch == 0:
            raise DataError(
                f"the streamed train files hold no full block of data.max_length={self.recipe.data.max_length} "
                "tokens",
                file=str(self.recipe.data.train),
            )
        finished = (
            self.should_stop or state.step >= self.schedule.total_steps or epoch == self.schedule.epochs - 1
        )
        if self.eval_loader is not None and self.last_eval_step != state.step:
            if settings.eval_every == "epoch" or finished:
                self.evaluate()
                finished = finished or self.should_stop
        state.stopped = self.should_stop
        due = settings.save_every == "epoch" or self.due(settings.save_every)
        if settings.save_every != "never" and self.checkpoints.last_step != state.step and (due or finished):
            self.save()
        self.emit("on_epoch_end")
        return finished

    def log(self) -> None:
        loss, tokens, examples = self.window.close(self.accelerator, self.state)
        seconds = self.clock.window_seconds()
        values = {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "examples_per_s": examples / seconds,
            "tokens_per_s": tokens / seconds,
            "train_s": round(self.clock.trained(), 3),
        }
        self.emit("on_log", values)

    def evaluate(self) -> None:
        with self.clock.excluding():  # tokens/s and train_s are training only
            metrics = self.task.evaluate(
                self.model, self.eval_loader, self.accelerator, self.recipe, tokenizer=self.tokenizer
            )
            self.last_eval, self.last_eval_step = metrics, self.state.step
            self.best.consider(metrics, self.state, self.model)
            self.emit("on_evaluate", metrics)

    def save(self) -> None:
        with self.clock.excluding():
            self.checkpoints.save(
                self.state, self.window, self.clock, lambda folder: self.emit("on_save", folder)
            )

    def stop_with_checkpoint(self) -> None:
        if self.checkpoints.last_step != self.state.step:
            self.save()
        raise TrainingInterrupted(self.interrupted, self.state.step)

    def finish(self) -> None:
        """The model to return, with the best evaluation's weights, and the validation metrics it scored."""
        self.kernels.restore()
        self.clock.record(self.state)
        self.accelerator.wait_for_everyone()
        from hfpipe.training.checkpoint import logged_evaluation

        final = self.accelerator.unwrap_model(self.model)
        if self.eval_loader is not None:
            self.validation = self.last_eval or logged_evaluation(self.metrics_log, self.state.step)
            if self.state.best_step is not None and self.state.best_step != self.state.step:
                final = self.best.restore(final, self.state)
                self.validation = logged_evaluation(self.metrics_log, self.state.best_step)
        self.final_model = final

    @property
    def scheduler(self):
        return self.step.scheduler

"""What happens around the loop, on its events: the metrics log, trackers, the console, early stopping,
stopping on a signal, fault injection for the crash tests. Every process runs every callback (a callback
that meets the other processes must); sinks write on the main process only."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from hfpipe import formatting, io
from hfpipe.errors import HfpipeError

log = logging.getLogger("hfpipe")


class Callback:
    """Hooks on the loop's events; `loop` gives the state, the settings, the model and `stop()`."""

    def on_train_start(self, loop) -> None:
        """Training is about to start (or to resume: loop.resumed_at is the checkpoint's step)."""

    def on_step_end(self, loop) -> None:
        """An optimizer step is done (loop.state.step counts it)."""

    def on_epoch_end(self, loop) -> None:
        """An epoch is done, its evaluation and checkpoint too."""

    def on_log(self, loop, values: dict) -> None:
        """The log window closed: loss, lr, examples_per_s, tokens_per_s, train_s."""

    def on_evaluate(self, loop, metrics: dict) -> None:
        """An evaluation's metrics (the best model is already decided: loop.state.best_step)."""

    def on_save(self, loop, folder: Path) -> None:
        """A checkpoint's files are written into its staging `folder`, not yet renamed into place."""

    def on_train_end(self, loop) -> None:
        """Training ended, however it ended (loop.final_model: the model returned, when it ended well)."""


class MetricsLog(Callback):
    """RUN_DIR/metrics.jsonl: one record a log line and one an evaluation (main process)."""

    def on_log(self, loop, values):
        self._append(loop, "train", values)

    def on_evaluate(self, loop, metrics):
        self._append(loop, "eval", {f"eval_{k}": v for k, v in metrics.items()})

    def _append(self, loop, kind: str, values: dict) -> None:
        if loop.accelerator.is_main_process:
            record = {
                "type": kind,
                "step": loop.state.step,
                "epoch": round(loop.state.epoch_float, 4),
                **values,
            }
            io.append_jsonl(loop.metrics_log, record)


class Trackers(Callback):
    """The recipe's TensorBoard / MLflow trackers (hfpipe.training.trackers), started once every check has
    passed, fed what metrics.jsonl gets, finished however training ends."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_train_start(self, loop):
        from hfpipe.training import trackers

        self.started = trackers.start(loop.accelerator, loop.recipe, loop.run_dir, resumed_at=loop.resumed_at)

    def on_log(self, loop, values):
        self._log(loop, "train", values)

    def on_evaluate(self, loop, metrics):
        self._log(loop, "eval", {f"eval_{k}": v for k, v in metrics.items()})

    def _log(self, loop, kind, values) -> None:
        if self.started:
            from hfpipe.training import trackers

            trackers.log(loop.accelerator, kind, values, loop.state.step)

    def on_train_end(self, loop):
        from hfpipe.training import trackers

        trackers.finish(loop.accelerator)


class Progress(Callback):
    """The console: a live bar on a terminal (`interactive`), a progress line about every 10% elsewhere
    (CI logs), and a line per evaluation."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self.bar = None

    def on_train_start(self, loop):
        from hfpipe import console

        total, state = loop.schedule.total_steps, loop.state
        self.bar = console.TrainProgress(
            total, state.step, enabled=loop.accelerator.is_local_main_process and self.interactive
        )
        self.first_step = self.last_line = state.step
        self.every = max(loop.settings.log_every, total // 10)

    def on_step_end(self, loop):
        self.bar.advance()

    def on_log(self, loop, values):
        state, total = loop.state, loop.schedule.total_steps
        self.bar.stats(values["loss"], values["lr"], values["tokens_per_s"])
        if self.interactive or not (state.step - self.last_line >= self.every or state.step == total):
            return
        self.last_line = state.step
        # ETA from this session's pace (evaluation and checkpoints left out: they come at their own cadence)
        pace = (loop.clock.trained() - loop.clock.trained_before) / max(state.step - self.first_step, 1)
        log.info(
            "step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s  eta %s",
            state.step,
            total,
            values["loss"],
            values["lr"],
            values["tokens_per_s"],
            formatting.clock(pace * (total - state.step)),
        )

    def on_evaluate(self, loop, metrics):
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        log.info("eval at step %d: %s", loop.state.step, shown)

    def on_train_end(self, loop):
        if self.bar is not None:
            self.bar.close()  # the terminal gets its cursor back, whatever happened


class EarlyStopping(Callback):
    """Stop when metric_for_best has not improved for train.early_stopping_patience evaluations."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_evaluate(self, loop, metrics):
        state = loop.state
        if state.evals_without_improvement < self.patience:
            return
        best = "none" if state.best_step is None else f"{state.best_metric:.4f} at step {state.best_step}"
        log.info(
            "early stopping at step %d: %s has not improved for %d evaluations (best: %s)",
            state.step,
            loop.metric_for_best,
            state.evals_without_improvement,
            best,
        )
        loop.stop()


class TrainingInterrupted(HfpipeError):
    """SIGTERM / Ctrl-C: a checkpoint was saved at a step boundary; the run can be resumed."""

    exit_code = 130

    def __init__(self, signal_name: str, step: int, command: str | None = None) -> None:
        how = f"`{command}`" if command else "the same command plus --resume"
        super().__init__(f"{signal_name} at step {step}: checkpoint saved; continue with {how}")
        self.signal_name, self.step = signal_name, step


class SignalStop(Callback):
    """SIGTERM / SIGINT become a request to stop at the next step boundary, with a checkpoint (main thread
    only; every process stops at the same step). A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal_name, self._previous = "", {}

    def on_train_start(self, loop):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.signal_name:  # a second Ctrl-C: stop now, as the user insists
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s: saving a checkpoint at the end of this step (again to stop at once)", self.signal_name
        )

    def on_step_end(self, loop):
        self._poll(loop)

    def on_epoch_end(self, loop):
        self._poll(loop)

    def _poll(self, loop) -> None:
        flag = bool(self.signal_name)
        if loop.accelerator.num_processes > 1:  # every process must stop at the same step
            import torch

            total = loop.accelerator.reduce(torch.tensor(int(flag), device=loop.accelerator.device), "sum")
            flag = bool(total)
            self.signal_name = self.signal_name or ("SIGTERM" if flag else "")
        if flag:
            loop.interrupt(self.signal_name)

    def on_train_end(self, loop):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class FaultInjection(Callback):
    """The crash tests' faults, from HFPIPE_FAULT (added only when it is set; never from a recipe):
    `step:N` SIGKILLs this process in the middle of step N (after its backward pass), `sigterm:N` sends it
    SIGTERM there, `checkpoint:N` SIGKILLs it while checkpoint N is half-written, `nan:N` makes one loss of
    step N NaN (once)."""

    VARIABLE = "HFPIPE_FAULT"

    def __init__(self, fault: str) -> None:
        self.point, _, number = fault.partition(":")
        self.step = int(number) if number.isdigit() else -1
        self.fired = False

    def on_train_start(self, loop):
        if self.point in ("step", "sigterm"):
            loop.step.backward_hooks.append(self._mid_step)
        if self.point == "nan":
            loop.step.loss_hooks.append(self._nan)

    def _mid_step(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL if self.point == "step" else signal.SIGTERM)

    def _nan(self, loss, step: int):
        if step != self.step or self.fired:
            return loss
        self.fired = True
        return loss * float("nan")

    def on_save(self, loop, folder):
        if self.point == "checkpoint" and loop.state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def standard(recipe, *, interactive: bool) -> list[Callback]:
    """The callbacks of every run: the metrics log, the recipe's trackers, the console, early stopping when
    the recipe asks for it, stopping on a signal; fault injection when HFPIPE_FAULT is set."""
    callbacks: list[Callback] = [MetricsLog(), Trackers(), Progress(interactive)]
    if recipe.train.early_stopping_patience:
        callbacks.append(EarlyStopping(recipe.train.early_stopping_patience))
    callbacks.append(SignalStop())
    if os.environ.get(FaultInjection.VARIABLE):
        callbacks.append(FaultInjection(os.environ[FaultInjection.VARIABLE]))
    return callbacks

"""What a run carries from step to step (and, in checkpoints, across a resume): its counters, the clock that
keeps training time apart from evaluation and checkpoints, and the window of steps the next log line
averages over."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TrainState:
    """Saved in every checkpoint (trainer_state.json) and read back on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    best_metric: float | None = None
    best_loss: float | None = None  # the best evaluation's loss: breaks ties of metric_for_best
    best_step: int | None = None
    evals_without_improvement: int = 0
    epoch_float: float = 0.0  # progress in epochs, for the logs
    batches_in_epoch: int = 0  # batches of the current epoch already consumed (where a resume starts)
    examples_seen: int = 0
    tokens_seen: int = 0
    skipped_nonfinite: int = 0
    stopped: bool = False  # early stopping decided: a resumed run has nothing left to train
    # The unlogged part of the current logging window, so a resumed run logs what an unbroken one would.
    window_loss_sum: float = 0.0
    window_loss_count: int = 0
    window_tokens: int = 0
    window_examples: int = 0
    # Seconds of training so far, without evaluation and checkpointing, and with them (both carried across a
    # resume, so that train_seconds <= runtime_seconds always)
    train_seconds: float = 0.0
    runtime_seconds: float = 0.0
    processes: int | None = None  # of the run that saved the checkpoint (a resume needs as many)


class Clock:
    """Wall time of a run: all of it, and training alone (evaluations and checkpoints run `excluded`), both
    counted on from what earlier sessions of a resumed run spent. `now` is injectable (tests move time)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.trained_before = self.ran_before = 0.0
        self.started = self.window_started = now()
        self.excluded = self.window_excluded = 0.0

    def start(self, state: TrainState) -> None:
        self.trained_before, self.ran_before = state.train_seconds, state.runtime_seconds
        self.started = self.window_started = self.now()
        self.excluded = self.window_excluded = 0.0

    def trained(self) -> float:
        return self.trained_before + self.now() - self.started - self.excluded

    def ran(self) -> float:
        return self.ran_before + self.now() - self.started

    def record(self, state: TrainState) -> None:
        state.train_seconds = self.trained()
        state.runtime_seconds = self.ran()  # read after: never less

    @contextlib.contextmanager
    def excluding(self):
        """Time spent in the block counts in the run, not in training (nor in the log window's rates)."""
        begin = self.now()
        try:
            yield
        finally:
            spent = self.now() - begin
            self.excluded += spent
            self.window_excluded += spent

    def window_seconds(self) -> float:
        """Training seconds since the last log line; the window starts again."""
        now = self.now()
        seconds = max(now - self.window_started - self.window_excluded, 1e-9)
        self.window_started, self.window_excluded = now, 0.0
        return seconds


class LogWindow:
    """The steps since the last log line: loss summed on the device (no sync per step), tokens, examples."""

    def __init__(self, device) -> None:
        import torch

        self.loss = torch.zeros((), device=device)
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.count = self.examples = 0

    def add(self, loss, tokens, examples: int) -> None:
        self.loss += loss
        self.tokens += tokens
        self.count += 1
        self.examples += examples

    def close(self, accelerator, state: TrainState) -> tuple[float, int, int]:
        """(mean loss, tokens, examples) over the window and every process; the window starts again.
        `.item()` syncs: only here, every log_every steps."""
        loss = accelerator.reduce(self.loss / max(self.count, 1), "mean").item()
        tokens = int(accelerator.reduce(self.tokens, "sum").item())
        examples = self.examples * accelerator.num_processes
        state.examples_seen += self.examples
        state.tokens_seen += tokens
        self.loss.zero_()
        self.tokens.zero_()
        self.count = self.examples = 0
        return loss, tokens, examples

    def save(self, state: TrainState) -> None:
        """Into the checkpoint: the part of the window not yet logged."""
        state.window_loss_sum, state.window_loss_count = float(self.loss.item()), self.count
        state.window_tokens, state.window_examples = int(self.tokens.item()), self.examples

    def restore(self, state: TrainState) -> None:
        self.loss += state.window_loss_sum
        self.tokens += state.window_tokens
        self.count, self.examples = state.window_loss_count, state.window_examples

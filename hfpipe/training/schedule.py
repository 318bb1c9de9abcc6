"""The schedule of a run: how many optimizer steps, over how many epochs, with how much warmup, and how
often it evaluates. One definition: training follows it, `hfpipe plan` reports it, the bench reads it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    total_steps: int  # optimizer steps of the run
    steps_per_epoch: int | None  # None for a stream (a pass ends when its files do)
    epochs: int  # passes over the data to start (the last one may stop early at total_steps)
    warmup_steps: int
    accumulation: int  # forward passes per optimizer step, per process

    @classmethod
    def of(cls, settings, passes_per_epoch: int | None, accumulation: int) -> Schedule:
        """The schedule of train `settings` for an epoch of `passes_per_epoch` forward passes (global
        batches; None for a stream, whose run is max_steps long)."""
        if passes_per_epoch is None:
            total, per_epoch, epochs = settings.max_steps, None, 2**31
        else:
            per_epoch = math.ceil(passes_per_epoch / accumulation)
            total = settings.max_steps or math.ceil(settings.epochs * per_epoch)
            epochs = math.ceil(total / per_epoch)
        warmup = (
            settings.warmup_steps
            if settings.warmup_steps is not None
            else math.ceil(settings.warmup_ratio * total)
        )
        return cls(total, per_epoch, epochs, warmup, accumulation)

    @property
    def epochs_run(self) -> float:
        """The run's length in epochs (fractional: max_steps may end one mid-way)."""
        return self.total_steps / self.steps_per_epoch if self.steps_per_epoch else float("nan")

    def scheduler(self, optimizer, name: str):
        """The learning-rate schedule (transformers' `get_scheduler`) over this many steps and warmup."""
        from transformers import get_scheduler

        return get_scheduler(
            name if name != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=self.warmup_steps,
            num_training_steps=self.total_steps,
        )

    def evaluations(self, eval_every) -> int:
        """Evaluations of a run that has validation examples: at each epoch's end (`epoch`) or every N steps,
        and always at the end; none with `never`."""
        if eval_every == "never" or not self.total_steps:
            return 0
        if eval_every == "epoch":
            return self.epochs if self.steps_per_epoch else 1
        return self.total_steps // eval_every + (self.total_steps % eval_every != 0)

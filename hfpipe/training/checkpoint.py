"""Checkpoints and the best model. A checkpoint is the resumable state of every process (model, optimizer,
scheduler, RNG, the loop's counters and the unlogged log window, the tokenizer), staged in a temporary
directory and renamed into place: a crash leaves the previous one whole. The best model is the weights of
the best evaluation so far, saved when it is reached and put back in the model when training ends."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

from hfpipe import io
from hfpipe.errors import UsageError
from hfpipe.training.state import TrainState

log = logging.getLogger("hfpipe")

TRAINER_STATE = "trainer_state.json"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (renamed into place, with its trainer_state.json), or None."""
    root = Path(run_dir) / io.CHECKPOINTS
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / TRAINER_STATE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def log_records(metrics_log: Path) -> list[tuple[str, dict]]:
    """(line, record) of metrics.jsonl; a line cut short by a crash is skipped."""
    out = []
    for line in metrics_log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


def logged_evaluation(metrics_log: Path, step: int) -> dict:
    """The metrics of the evaluation logged at `step` (without their eval_ prefix), or {}."""
    found: dict = {}
    if not metrics_log.exists():
        return found
    for _, record in log_records(metrics_log):
        if record.get("type") == "eval" and record.get("step") == step:
            found = {k.removeprefix("eval_"): v for k, v in record.items() if k.startswith("eval_")}
    return found


class Checkpoints:
    """Saves and restores the resumable state of a run in RUN_DIR/checkpoints/step-NNNNNNN."""

    def __init__(self, run_dir: Path, accelerator, tokenizer, settings) -> None:
        self.root = Path(run_dir) / io.CHECKPOINTS
        self.accelerator, self.tokenizer, self.settings = accelerator, tokenizer, settings
        self.last_step = -1  # the step of the newest checkpoint this run has (saved or resumed from)

    def save(self, state: TrainState, window, clock, on_write=None) -> Path:
        """Every process writes its own RNG state (and, under FSDP / DeepSpeed, its shards); the main one
        the rest. `on_write(staging folder)` runs once the main process's files are written, before the
        folder is renamed into place (where a test kills the process)."""
        accelerator = self.accelerator
        self.last_step = state.step
        clock.record(state)
        final = self.root / f"step-{state.step:07d}"
        tmp = io.staging_dir(final) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        accelerator.save_state(str(self.root / f".tmp-{final.name}"), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            window.save(state)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            if on_write is not None:
                on_write(tmp)
            (tmp / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=2))
            io.commit_dir(tmp, final)
            if self.settings.save_total_limit:
                for old in sorted(p for p in self.root.glob("step-*") if p.is_dir())[
                    : -self.settings.save_total_limit
                ]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def resume(self, checkpoint: Path, window, metrics_log: Path) -> TrainState:
        """The state of `checkpoint`, loaded into the prepared model, optimizer, scheduler and every RNG;
        log records written after it are dropped (they will be written again)."""
        state = TrainState(**json.loads((Path(checkpoint) / TRAINER_STATE).read_text()))
        processes = self.accelerator.num_processes
        if state.processes not in (None, processes):
            raise UsageError(
                f"the run was saved by {state.processes} process(es) and resumes in {processes}: each process "
                "restores its own random state and share of the batches, so resume with --num-processes "
                f"{state.processes}"
            )
        self.accelerator.load_state(str(checkpoint))
        window.restore(state)
        self.last_step = state.step
        if metrics_log.exists() and self.accelerator.is_main_process:
            keep = [line for line, record in log_records(metrics_log) if record.get("step", 0) <= state.step]
            io.atomic_write_text(metrics_log, "".join(line + "\n" for line in keep))
        return state


class BestModel:
    """The best evaluation so far by metric_for_best (ties go to the lower validation loss): its weights
    are saved in RUN_DIR/checkpoints/best when it is reached, and put back in the model at the end."""

    def __init__(self, run_dir: Path, accelerator, metric: str, greater: bool, threshold: float) -> None:
        self.folder = Path(run_dir) / io.CHECKPOINTS / "best"
        self.accelerator, self.metric, self.greater, self.threshold = accelerator, metric, greater, threshold

    def improved(self, value, loss, state: TrainState) -> bool:
        """Better than the best evaluation so far: by more than the threshold in metric_for_best, or equal
        in it with a lower validation loss (BLEU 0.0 twice early in a run: the step whose outputs improved
        wins)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        best = state.best_metric
        if best is None:
            return True
        if value == best:
            return loss is not None and state.best_loss is not None and loss < state.best_loss
        return value > best + self.threshold if self.greater else value < best - self.threshold

    def consider(self, metrics: dict, state: TrainState, model) -> bool:
        """Record an evaluation; save the model's weights when it is the best yet (True)."""
        value = metrics[self.metric]  # checked against task.metric_names before training
        if not self.improved(value, metrics.get("loss"), state):
            state.evals_without_improvement += 1
            return False
        state.best_metric, state.best_loss, state.best_step = value, metrics.get("loss"), state.step
        state.evals_without_improvement = 0
        from hfpipe.adapters import save_options

        state_dict = self.accelerator.get_state_dict(model)  # all processes (gathers FSDP / DeepSpeed shards)
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(model)
            io.atomic_dir(
                self.folder,
                lambda tmp: unwrapped.save_pretrained(
                    tmp, state_dict=state_dict, safe_serialization=True, **save_options(unwrapped)
                ),
            )
        return True

    def restore(self, model, state: TrainState):
        """`model` (unwrapped) with the best evaluation's weights, when that was not the last step."""
        if state.best_step is None or state.best_step == state.step:
            return model
        log.info("loading the best model: step %d, %s %.4f", state.best_step, self.metric, state.best_metric)
        from hfpipe.adapters import is_peft_model, load_saved_adapter

        if is_peft_model(model):  # the best adapter goes back into the model in hand (same frozen base)
            load_saved_adapter(model, self.folder)
            return model
        return type(model).from_pretrained(str(self.folder)).to(self.accelerator.device)

"""fit(): a run's pieces put together (loaders, optimizer, schedule, step, checkpoints, callbacks) and handed
to the loop; and the Accelerator every run (and `hfpipe plan`) trains with."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hfpipe import io
from hfpipe.errors import RecipeError, did_you_mean

log = logging.getLogger("hfpipe")


@dataclass
class FitResult:
    model: object  # the unwrapped model holding the best (or last) weights
    state: object  # TrainState
    validation: dict
    metric_for_best: str | None
    padding_fraction: float = 0.0  # of the training batches (0 for packed blocks)

    @property
    def train_runtime(self) -> float:
        """Seconds of the whole run (every session of a resumed one)."""
        return self.state.runtime_seconds


def make_accelerator(recipe, processes: int | None = None):
    """The Accelerator for a recipe (device, precision, accumulation for `processes`, default the process
    group's); fails early on an impossible setup."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin

    settings = recipe.train
    # Runs one after another in one process (the Python API, the tests): Accelerate's state is a
    # process-wide singleton, and the previous run's precision, compile and accumulation settings must
    # not stick to this one. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    if settings.precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError(
            "precision fp16 needs a CUDA GPU; use fp32 (or bf16) on this machine", key="train.precision"
        )
    # the process group (torchrun / accelerate launch / mpirun) knows how many processes there are
    processes = processes or PartialState(cpu=not torch.cuda.is_available()).num_processes
    return Accelerator(
        mixed_precision={"fp32": "no"}.get(settings.precision, settings.precision),
        gradient_accumulation_steps=settings.accumulation(processes),
        # Each global batch (train.batch_size x processes, drawn as one process would draw it) is split
        # between the processes, so N processes see the batches of one process with N times the batch.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Without a GPU, processes started by `accelerate launch` / torchrun form a gloo CPU group.
        cpu=not torch.cuda.is_available(),
        # Batches change shape (dynamic padding): compile for dynamic shapes, not one graph per length.
        dynamo_plugin=TorchDynamoPlugin(backend=settings.compile_backend, dynamic=True)
        if settings.compile
        else None,
    )


GENERATED = ("bleu", "chrf", "exact_match")  # metrics of generated outputs: need generation at evaluation


def resolve_metric_for_best(recipe, task, config) -> str:
    """train.metric_for_best (an `eval_` prefix, as in transformers, is accepted) or the task's default."""
    name = recipe.train.metric_for_best
    if name is None:
        name = task.primary_metric(config)
        # generation.eval_samples: 0 (loss only) falls back to the loss
        return "loss" if name in GENERATED and recipe.generation.eval_samples == 0 else name
    name = name.removeprefix("eval_")
    if name in GENERATED and recipe.generation.eval_samples == 0:
        raise RecipeError(
            f"{name} needs generated outputs, but generation.eval_samples is 0 (loss only)",
            key="train.metric_for_best",
        )
    known = task.metric_names(config)
    if name not in known:
        raise RecipeError(
            f"task {task.name} does not compute {name!r}{did_you_mean(name, known)} (it computes: "
            f"{', '.join(known)})",
            key="train.metric_for_best",
        )
    return name


def greater_is_better(settings, metric: str) -> bool:
    if settings.greater_is_better is not None:
        return settings.greater_is_better
    return not any(word in metric for word in ("loss", "perplexity", "mse", "error"))


def fit(
    recipe,
    task,
    model,
    tokenizer,
    train_ds,
    eval_ds,
    run_dir: Path,
    accelerator=None,
    resume_from=None,
    *,
    callbacks=(),
    clock=None,
    interactive: bool = False,
) -> FitResult:
    """Train `model` on `train_ds` (evaluating on `eval_ds`) into `run_dir`, resuming from `resume_from`.
    `callbacks` run besides the standard ones; `clock` (a state.Clock) measures time; `interactive` shows a
    live bar instead of progress lines."""
    from accelerate.utils import set_seed

    from hfpipe.kernels import FastKernels
    from hfpipe.training import callbacks as standard
    from hfpipe.training.checkpoint import BestModel, Checkpoints
    from hfpipe.training.loop import Loop
    from hfpipe.training.state import Clock, LogWindow, TrainState
    from hfpipe.training.step import TrainStep

    settings = recipe.train
    accelerator = accelerator or make_accelerator(recipe)
    set_seed(settings.seed)
    parts = _prepared(recipe, task, model, tokenizer, train_ds, eval_ds, accelerator)
    metric = resolve_metric_for_best(recipe, task, accelerator.unwrap_model(parts["model"]).config)
    state, window = TrainState(processes=accelerator.num_processes), LogWindow(accelerator.device)
    checkpoints = Checkpoints(run_dir, accelerator, tokenizer, settings)
    if resume_from is not None:
        state = checkpoints.resume(resume_from, window, Path(run_dir) / io.METRICS_LOG)
        _log_resume(resume_from, state, parts["schedule"])
    # train.fast_kernels: the same functions, faster (undone by itself if it cannot start)
    kernels = FastKernels(parts["model"], settings, accelerator, attention=recipe.model.attn_implementation)
    if kernels.description:
        log.info("fast kernels: %s", kernels.description)
    step = TrainStep(
        parts["model"], parts.pop("optimizer"), parts.pop("scheduler"), accelerator, task, settings, kernels
    )
    clock = clock or Clock()
    clock.start(state)
    greater, threshold = greater_is_better(settings, metric), settings.early_stopping_threshold
    loop = Loop(
        recipe=recipe,
        task=task,
        accelerator=accelerator,
        tokenizer=tokenizer,
        step=step,
        checkpoints=checkpoints,
        best=BestModel(run_dir, accelerator, metric, greater, threshold),
        window=window,
        clock=clock,
        kernels=kernels,
        callbacks=[*standard.standard(recipe, interactive=interactive), *callbacks],
        state=state,
        run_dir=Path(run_dir),
        metric_for_best=metric,
        resumed_at=state.step if resume_from is not None else None,
        **{k: parts[k] for k in ("model", "schedule", "train_loader", "order", "eval_loader")},
    )
    loop.run()
    accelerator.free_memory()
    evaluated = metric if parts["eval_loader"] is not None else None
    return FitResult(loop.final_model, state, loop.validation, evaluated, parts["padding"])


def _prepared(recipe, task, model, tokenizer, train_ds, eval_ds, accelerator) -> dict:
    """The loaders, optimizer, schedule and learning-rate scheduler, prepared by Accelerate."""
    from hfpipe.adapters import register_checkpoint_hooks
    from hfpipe.training.batching import eval_loader, is_stream, train_loader
    from hfpipe.training.schedule import Schedule
    from hfpipe.training.step import make_optimizer

    settings, processes = recipe.train, accelerator.num_processes
    accumulation = accelerator.gradient_accumulation_steps
    train_dl, order, padding = train_loader(
        train_ds, task.collator(tokenizer, recipe), settings, processes, accumulation
    )
    if not is_stream(train_ds):
        log.info("training batches: %.1f%% padding", 100 * padding)
    eval_dl = None
    if eval_ds is not None and len(eval_ds) > 0 and settings.eval_every != "never":
        eval_dl = eval_loader(eval_ds, task.collator(tokenizer, recipe, train=False), settings, processes)
    optimizer = make_optimizer(model, settings)
    register_checkpoint_hooks(accelerator)  # frozen weights (an adapter's base) stay out of checkpoints
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)
    # Counted on the prepared loader: one global batch per iteration (split_batches), so the prepared
    # scheduler steps once per optimizer step.
    schedule = Schedule.of(settings, None if is_stream(train_ds) else len(train_dl), accumulation)
    scheduler = accelerator.prepare(schedule.scheduler(optimizer, settings.scheduler))
    if eval_dl is None:
        log.info(
            "no validation split: training for %d steps without evaluation; the last model is kept",
            schedule.total_steps,
        )
    log.info(
        "training: %s, %s, %d steps of %d examples (batch %d per process x %d process(es) x "
        "%d accumulation), warmup %d",
        "a stream of blocks" if is_stream(train_ds) else f"{len(order.lengths)} examples",
        "passes as needed" if is_stream(train_ds) else f"{schedule.epochs} epochs",
        schedule.total_steps,
        settings.batch_size * processes * accumulation,
        settings.batch_size,
        processes,
        accumulation,
        schedule.warmup_steps,
    )
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "schedule": schedule,
        "train_loader": train_dl,
        "order": order,
        "eval_loader": eval_dl,
        "padding": padding,
    }


def _log_resume(checkpoint, state, schedule) -> None:
    log.info(
        "resumed from %s: step %d of %d, epoch %d, batch %d",
        Path(checkpoint).name,
        state.step,
        schedule.total_steps,
        state.epoch,
        state.batches_in_epoch,
    )

"""fit(): the one training loop, on Accelerate, shared by every task.

Tasks hand it tokenized datasets, a collator and an evaluate function; it owns batching, the optimizer
and schedule, accumulation, clipping, evaluation cadence, best-model selection, early stopping,
checkpoints and the metrics log. Reads top to bottom: setup, loop, finish.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hfpipe import io
from hfpipe.errors import DataError, HfpipeError, RecipeError, TrainingError, UsageError, first_line
from hfpipe.kernels import FastKernels, scale_and_clip_

log = logging.getLogger("hfpipe")


# ---------------------------------------------------------------------------------------------------
# Batching


class BatchSampler:
    """Shuffled batches; with `group_by_length`, examples of similar length share a batch.

    Like transformers' LengthGroupedSampler: shuffle, cut into mega-batches of 50 batches, sort each
    mega-batch by length, cut into batches, shuffle the batches. Padding falls to a few percent while
    the order stays random. Deterministic in (seed, epoch).
    """

    def __init__(
        self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, accumulation: int = 1
    ) -> None:
        # batch_size is one forward pass (of all processes); a step's batch of batch_size x accumulation
        # is drawn whole and cut into its passes, so accumulating k passes of b is one batch of k x b.
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group_by_length, self.accumulation = group_by_length, accumulation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        size = self.batch_size
        return [step[i : i + size] for step in self.step_batches() for i in range(0, len(step), size)]

    def step_batches(self) -> list[list[int]]:
        """The batches of the optimizer steps (batch_size x accumulation examples)."""
        import torch

        size = self.batch_size * self.accumulation
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if not self.group_by_length:
            return [order[i : i + size] for i in range(0, len(order), size)]
        mega = size * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        # The one short batch (the end of the last mega-batch) goes last: Accelerate's sharding of a batch
        # across processes takes full batches only until the end.
        short = [b for b in batches if len(b) < size]
        batches = [b for b in batches if len(b) == size]
        shuffle = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffle] + short

    def __iter__(self):
        return iter(self.batches())

    def padding_fraction(self) -> float:
        """Share of the batch slots (batch x its longest example) that are padding, in this epoch."""
        real = slots = 0
        for batch in self.batches():
            lengths = [self.lengths[i] for i in batch]
            real, slots = real + sum(lengths), slots + max(lengths) * len(lengths)
        return 1 - real / slots if slots else 0.0

    def __len__(self) -> int:
        size = self.batch_size * self.accumulation
        full, rest = divmod(len(self.lengths), size)
        return full * self.accumulation + math.ceil(rest / self.batch_size)


class EvalBatches(list):
    """A fixed list of batches with the `batch_size` attribute Accelerate's sharding asks for."""

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        super().__init__(batches)
        self.batch_size = batch_size


def eval_batches(lengths: list[int], batch_size: int) -> EvalBatches:
    """Evaluation batches in length order: least padding, and order does not matter for metrics."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return EvalBatches([order[i : i + batch_size] for i in range(0, len(order), batch_size)], batch_size)


def split_lengths(dataset):
    """(dataset without its 'length' column, lengths); lengths from input_ids when absent. Read as one
    Arrow column (a datasets Column iterates row by row: ~15 s a million rows)."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    if "length" in dataset.column_names:
        return dataset.remove_columns("length"), table["length"].to_pylist()
    return dataset, pc.list_value_length(table["input_ids"]).to_pylist()


# ---------------------------------------------------------------------------------------------------
# State kept across steps (and, in checkpoints, across processes)


@dataclass
class TrainState:
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


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_trackers(recipe) -> None:
    """Fail before anything runs when a recipe's tracker is not installed (Accelerate would drop it with
    a warning and the run would log nowhere)."""
    import importlib.util

    for name in recipe.tracking:
        package = TRACKER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise RecipeError(
                f"{name} is not installed: pip install 'hfpipe[tracking]' (or {package})", key="tracking"
            )


def _scalar_params(recipe) -> dict:
    """The recipe as dotted keys with scalar values (what TensorBoard's hparams and MLflow params take)."""
    return {
        key: str(value) if value is None or isinstance(value, (list, tuple)) else value
        for key, value in io.flatten(recipe.model_dump(mode="json")).items()
    }


TRACKING_STATE = "tracking.json"  # the MLflow run id, so that a resumed run logs into the same run


def finish_trackers(accelerator) -> None:
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def start_trackers(accelerator, recipe, run_dir: Path, resumed_at: int | None = None) -> list[str]:
    """Start the recipe's TensorBoard / MLflow trackers (jsonl is metrics.jsonl, always written): the
    run's name, its tags and the whole recipe as parameters. A resumed run (`resumed_at`: its checkpoint's
    step) drops TensorBoard events logged after the checkpoint, as metrics.jsonl does, and continues the
    same MLflow run. Returns the trackers started."""
    names = [t for t in recipe.tracking if t != "jsonl"]
    if not names:
        return []
    import os

    name = recipe.name or Path(recipe.output_dir).name
    init_kwargs: dict = {}
    if "tensorboard" in names and resumed_at is not None:
        init_kwargs["tensorboard"] = {"purge_step": resumed_at + 1}
    saved = json.loads((run_dir / TRACKING_STATE).read_text()) if (run_dir / TRACKING_STATE).exists() else {}
    if "mlflow" in names:
        if accelerator.is_main_process and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            # A local file store in the run directory (MLflow 3 keeps it in "maintenance mode" and asks for
            # this opt-in; a server or database comes through MLFLOW_TRACKING_URI).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        init_kwargs["mlflow"] = {"run_name": name, "tags": {tag: "true" for tag in recipe.tags}}
        if resumed_at is not None and saved.get("mlflow_run_id"):
            init_kwargs["mlflow"]["run_id"] = saved["mlflow_run_id"]
    from accelerate.tracking import filter_trackers

    # The Accelerator was made before the run directory existed (nothing may touch it before every check
    # has passed): its trackers and their directory are set now.
    accelerator.project_configuration.set_directories(str(run_dir))
    accelerator.project_configuration.logging_dir = str(run_dir / "tensorboard")
    accelerator.log_with = filter_trackers(names, accelerator.logging_dir)
    config = _scalar_params(recipe)
    config["tags"] = ", ".join(recipe.tags)
    try:
        # A resumed run's parameters are logged already (MLflow refuses a changed value, and `train` may
        # change on resume: more steps).
        accelerator.init_trackers(
            name, config=None if resumed_at is not None else config, init_kwargs=init_kwargs
        )
    except Exception as exc:  # a tracker's own failure (a server down, a bad URI): one line, not a traceback
        for tracker in accelerator.trackers:  # the ones that did start
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001, S110  (already failing: the first error is the one to show)
                pass
        accelerator.trackers = []
        first = first_line(exc)
        raise HfpipeError(
            f"tracking: {', '.join(names)} did not start: {type(exc).__name__}: {first}"
        ) from None
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            if tracker.name == "mlflow" and getattr(tracker, "active_run", None) is not None:
                io.write_json(run_dir / TRACKING_STATE, {"mlflow_run_id": tracker.active_run.info.run_id})
    return names


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def _improved(value: float, loss, state: TrainState, greater: bool, threshold: float) -> bool:
    """Better than the best evaluation so far: by more than `threshold` in metric_for_best, or equal in it
    with a lower validation loss (BLEU 0.0 twice early in a run: the step whose outputs improved wins)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    best = state.best_metric
    if best is None:
        return True
    if value == best:
        return loss is not None and state.best_loss is not None and loss < state.best_loss
    return value > best + threshold if greater else value < best - threshold


def _optimizer(model, spec):
    import torch

    # The usual split: no weight decay on biases and normalisation weights.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # PyTorch's fused AdamW updates every tensor in one kernel: 4-6x faster than its default per-tensor
    # loop on this CPU (0.5 against 3.2 ms a step for the quickstart model, a tenth of its step time).
    # It needs floating-point parameters on a device it has kernels for; otherwise the default loop.
    params = decay + no_decay
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups, lr=spec.lr, betas=tuple(spec.adam_betas), eps=spec.adam_epsilon, fused=fused or None
    )


def loss_items(batch, kind: str):
    """How many items the batch's mean loss is over (a device tensor): examples, or target tokens."""
    import torch

    if kind == "examples" or "labels" not in batch:
        return torch.tensor(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    labels = batch["labels"][:, 1:] if kind == "next_tokens" else batch["labels"]
    return (labels != -100).sum()


def smoothed_loss(outputs, labels, smoothing: float, shift: bool):
    """Cross-entropy of the model's logits with label smoothing; -100 labels are ignored.

    Token-level heads (logits batch x length x vocab) average over target tokens, as the models' own loss
    does; `shift` for causal LMs, whose logits at position t predict the label at t + 1.
    """
    import torch.nn.functional as F

    logits = outputs.logits
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1).to(logits.device),
        ignore_index=-100,
        label_smoothing=smoothing,
    )


# ---------------------------------------------------------------------------------------------------
# fit


@dataclass
class FitResult:
    model: object  # the unwrapped model holding the best (or last) weights
    state: TrainState
    validation: dict
    train_runtime: float
    metric_for_best: str | None
    padding_fraction: float = 0.0  # of the training batches (0 for packed blocks)


def make_accelerator(recipe):
    """The Accelerator for a recipe (device, precision, accumulation); fails early on an impossible setup."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin

    spec = recipe.train
    # Runs one after another in one process (the Python API, the tests): Accelerate's state is a
    # process-wide singleton, and the previous run's precision, compile and accumulation settings must
    # not stick to this one. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    if spec.precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError(
            "precision fp16 needs a CUDA GPU; use fp32 (or bf16) on this machine", key="train.precision"
        )
    return Accelerator(
        mixed_precision={"fp32": "no"}.get(spec.precision, spec.precision),
        # the process group (torchrun / accelerate launch / mpirun) knows how many processes there are
        gradient_accumulation_steps=spec.accumulation(
            PartialState(cpu=not torch.cuda.is_available()).num_processes
        ),
        # Each global batch (train.batch_size x processes, drawn as one process would draw it) is split
        # between the processes, so N processes see the batches of one process with N times the batch.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Without a GPU, processes started by `accelerate launch` / torchrun form a gloo CPU group.
        cpu=not torch.cuda.is_available(),
        # Batches change shape (dynamic padding): compile for dynamic shapes, not one graph per length.
        dynamo_plugin=TorchDynamoPlugin(backend=spec.compile_backend, dynamic=True) if spec.compile else None,
    )


def resolve_metric_for_best(recipe, task, config) -> str:
    """train.metric_for_best (an `eval_` prefix, as in transformers, is accepted) or the task's default."""
    name = recipe.train.metric_for_best
    generated = ("bleu", "chrf", "exact_match")  # need generation at evaluation
    if name is None:
        name = task.primary_metric(config)
        # generation.eval_samples: 0 (loss only) falls back to the loss
        return "loss" if name in generated and recipe.generation.eval_samples == 0 else name
    name = name.removeprefix("eval_")
    if name in generated and recipe.generation.eval_samples == 0:
        from hfpipe.errors import RecipeError

        raise RecipeError(
            f"{name} needs generated outputs, but generation.eval_samples is 0 (loss only)",
            key="train.metric_for_best",
        )
    known = task.metric_names(config)
    if name not in known:
        from hfpipe.errors import RecipeError, did_you_mean

        raise RecipeError(
            f"task {task.name} does not compute {name!r}{did_you_mean(name, known)} (it computes: "
            f"{', '.join(known)})",
            key="train.metric_for_best",
        )
    return name


def fit(
    recipe, task, model, tokenizer, train_ds, eval_ds, run_dir: Path, accelerator=None, resume_from=None
) -> FitResult:
    import torch
    from accelerate.utils import DistributedType, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    spec = recipe.train
    accelerator = accelerator or make_accelerator(recipe)
    set_seed(spec.seed)
    collate = task.collator(tokenizer, recipe)
    shift = task.peft_task_type == "CAUSAL_LM"  # label smoothing: logits at t predict the label at t + 1
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))

    # Loaders get generators of their own: creating an iterator then draws from it, not from the global
    # torch RNG that dropout uses, so evaluation cadence cannot change the training result.
    def generator():
        return torch.Generator().manual_seed(spec.seed)

    # train.batch_size is per process; split_batches cuts each global batch between the processes
    processes = accelerator.num_processes
    accumulation = accelerator.gradient_accumulation_steps
    stream = isinstance(train_ds, torch.utils.data.IterableDataset)  # data.streaming: no length, no sampler
    if stream:
        sampler, padding = None, 0.0
        batching = {"batch_size": spec.batch_size * processes}
    else:
        train_ds, train_lengths = split_lengths(train_ds)
        sampler = BatchSampler(
            train_lengths, spec.batch_size * processes, spec.seed, spec.group_by_length, accumulation
        )
        padding = sampler.padding_fraction()
        log.info("training batches: %.1f%% padding", 100 * padding)
        batching = {"batch_sampler": sampler}
    train_dl = DataLoader(
        train_ds, **batching, collate_fn=collate, num_workers=spec.num_workers, generator=generator()
    )
    eval_dl = None
    if eval_ds is not None and len(eval_ds) > 0 and spec.eval_every != "never":
        eval_ds, eval_lengths = split_lengths(eval_ds)
        eval_dl = DataLoader(
            eval_ds,
            batch_sampler=eval_batches(
                eval_lengths, (spec.eval_batch_size or 2 * spec.batch_size) * processes
            ),
            collate_fn=task.collator(tokenizer, recipe, train=False),
            num_workers=spec.num_workers,
            generator=generator(),
        )
    optimizer = _optimizer(model, spec)
    from hfpipe.adapters import register_checkpoint_hooks, save_options

    register_checkpoint_hooks(accelerator)  # frozen weights (an adapter's base) stay out of checkpoints
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)

    # Counted on the prepared loader: one global batch per iteration (split_batches), so the prepared
    # scheduler steps once per optimizer step.
    if stream:  # a pass over the stream ends when the files do; max_steps (required) decides
        total_steps, num_epochs = spec.max_steps, 2**31
    else:
        steps_per_epoch = math.ceil(len(train_dl) / accumulation)
        total_steps = spec.max_steps or math.ceil(spec.epochs * steps_per_epoch)
        num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = (
        spec.warmup_steps if spec.warmup_steps is not None else math.ceil(spec.warmup_ratio * total_steps)
    )
    scheduler = get_scheduler(
        spec.scheduler if spec.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
    )
    scheduler = accelerator.prepare(scheduler)

    metric_for_best = resolve_metric_for_best(recipe, task, accelerator.unwrap_model(model).config)
    greater = spec.greater_is_better
    if greater is None:
        greater = not any(word in metric_for_best for word in ("loss", "perplexity", "mse", "error"))
    if eval_dl is None:
        log.info(
            "no validation split: training for %d steps without evaluation; the last model is kept",
            total_steps,
        )
    log.info(
        "training: %s, %s, %d steps of %d examples (batch %d per process x %d process(es) x "
        "%d accumulation), warmup %d",
        "a stream of blocks" if stream else f"{len(train_ds)} examples",
        "passes as needed" if stream else f"{num_epochs} epochs",
        total_steps,
        spec.batch_size * processes * accumulation,
        spec.batch_size,
        processes,
        accumulation,
        warmup,
    )

    state = TrainState(processes=processes)
    metrics_log = run_dir / io.METRICS_LOG
    best_dir = run_dir / io.CHECKPOINTS / "best"
    last_eval: dict = {}
    last_eval_step = last_save_step = -1
    stop = False

    trackers: list[str] = []  # started just before the loop, once the resume checks have passed

    def record(kind: str, values: dict) -> None:
        if accelerator.is_main_process:
            io.append_jsonl(
                metrics_log,
                {"type": kind, "step": state.step, "epoch": round(state.epoch_float, 4), **values},
            )
        if trackers:  # TensorBoard / MLflow through Accelerate (main process only)
            scalars = {  # eval_accuracy -> eval/accuracy
                f"{kind}/{k.removeprefix(kind + '_')}": v
                for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
            accelerator.log(scalars, step=state.step)

    # Evaluation and checkpoints are timed apart from training: tokens/s and train_s are training only.
    clock = {"started": time.perf_counter(), "before": 0.0, "excluded": 0.0, "window": 0.0}

    def trained_seconds() -> float:
        return clock["before"] + time.perf_counter() - clock["started"] - clock["excluded"]

    def excluded(function):
        def timed(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - begin
                clock["excluded"] += spent
                clock["window"] += spent

        return timed

    @excluded
    def run_eval() -> dict:
        nonlocal stop
        nonlocal last_eval_step
        metrics = task.evaluate(model, eval_dl, accelerator, recipe, tokenizer=tokenizer)
        last_eval_step = state.step
        record("eval", {f"eval_{k}": v for k, v in metrics.items()})
        value = metrics[metric_for_best]  # checked against task.metric_names before training
        if _improved(value, metrics.get("loss"), state, greater, spec.early_stopping_threshold):
            state.best_metric, state.best_loss, state.best_step = value, metrics.get("loss"), state.step
            state.evals_without_improvement = 0
            state_dict = accelerator.get_state_dict(model)  # all processes (gathers FSDP / DeepSpeed shards)
            if accelerator.is_main_process:
                unwrapped = accelerator.unwrap_model(model)
                io.atomic_dir(
                    best_dir,
                    lambda tmp: unwrapped.save_pretrained(
                        tmp, state_dict=state_dict, safe_serialization=True, **save_options(unwrapped)
                    ),
                )
        else:
            state.evals_without_improvement += 1
            if (
                spec.early_stopping_patience
                and state.evals_without_improvement >= spec.early_stopping_patience
            ):
                best = (
                    "none"
                    if state.best_step is None
                    else f"{state.best_metric:.4f} at step {state.best_step}"
                )
                log.info(
                    "early stopping at step %d: %s has not improved for %d evaluations (best: %s)",
                    state.step,
                    metric_for_best,
                    state.evals_without_improvement,
                    best,
                )
                stop = True
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        log.info("eval at step %d: %s", state.step, shown)
        return metrics

    @excluded
    def save_checkpoint() -> None:
        """Resumable state of every process, staged in a temporary directory, then renamed into place."""
        nonlocal last_save_step
        last_save_step = state.step
        state.train_seconds = trained_seconds()
        state.runtime_seconds = runtime_before + time.perf_counter() - started  # read after: never less
        root = run_dir / io.CHECKPOINTS
        final = root / f"step-{state.step:07d}"
        tmp = io.staging_dir(final) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        # All processes: each writes its own RNG state (and, under FSDP / DeepSpeed, its shards).
        accelerator.save_state(str(root / f".tmp-{final.name}"), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state.window_loss_sum, state.window_loss_count = float(loss_sum.item()), loss_count
            state.window_tokens, state.window_examples = int(tokens.item()), window_examples
            tokenizer.save_pretrained(tmp / "tokenizer")
            _fault("checkpoint", state.step)  # test hook: die with the checkpoint half-written
            (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
            io.commit_dir(tmp, final)
            if spec.save_total_limit:
                for old in sorted(p for p in root.glob("step-*") if p.is_dir())[: -spec.save_total_limit]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()

    # -- the loop ------------------------------------------------------------------------------------
    loss_sum = torch.zeros((), device=accelerator.device)  # summed on device: no sync per step
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    loss_count = window_examples = 0
    if resume_from is not None:
        # Model, optimizer, scheduler, every RNG (python, numpy, torch) and Accelerate's step counter.
        state = TrainState(**json.loads((Path(resume_from) / "trainer_state.json").read_text()))
        if state.processes not in (None, processes):
            raise UsageError(
                f"the run was saved by {state.processes} process(es) and resumes in {processes}: each process "
                "restores its own random state and share of the batches, so resume with --num-processes "
                f"{state.processes}"
            )
        accelerator.load_state(str(resume_from))
        loss_sum += state.window_loss_sum
        tokens += state.window_tokens
        loss_count, window_examples = state.window_loss_count, state.window_examples
        last_eval_step = last_save_step = state.step
        stop = state.stopped
        _truncate_log(metrics_log, state.step)
        log.info(
            "resumed from %s: step %d of %d, epoch %d, batch %d",
            Path(resume_from).name,
            state.step,
            total_steps,
            state.epoch,
            state.batches_in_epoch,
        )
    start_epoch, skip = state.epoch, state.batches_in_epoch
    if not stream and skip >= len(train_dl):  # saved at the very end of an epoch
        start_epoch, skip = start_epoch + 1, 0

    model.train()
    # A live bar on a terminal; in a log file (CI) a plain line about every 10% instead.
    from hfpipe import console

    interactive = console.interactive()
    bar = console.TrainProgress(
        total_steps, state.step, enabled=accelerator.is_local_main_process and interactive
    )
    first_step = state.step
    plain_every = max(spec.log_every, total_steps // 10)
    last_plain = state.step
    started = time.perf_counter()
    window_start = clock["started"] = started
    clock["before"], runtime_before = state.train_seconds, state.runtime_seconds
    # DeepSpeed keeps the gradients inside its engine (no .grad to rescale): its steps average the batches'
    # means, as DeepSpeed does on its own.
    normalize = processes * accumulation > 1 and accelerator.distributed_type != DistributedType.DEEPSPEED
    group_items = torch.zeros((), device=accelerator.device)
    # train.fast_kernels: the same functions, faster (undone by itself if it cannot start)
    kernels = FastKernels(model, spec, accelerator, attention=recipe.model.attn_implementation)
    if kernels.description:
        log.info("fast kernels: %s", kernels.description)
    # listed once: walking the module tree for them every step costs ~0.5 ms (a small model's 1%)
    trained = [p for p in model.parameters() if p.requires_grad]
    stopper = _StopOnSignal(accelerator)

    def stop_on_signal() -> None:
        if last_save_step != state.step:
            save_checkpoint()
        raise TrainingInterrupted(stopper.signal_name, state.step)

    try:
        trackers = start_trackers(
            accelerator, recipe, run_dir, resumed_at=state.step if resume_from else None
        )
        for epoch in range(start_epoch, num_epochs if state.step < total_steps and not stop else start_epoch):
            state.epoch = epoch
            # Accelerate re-seeds the sampler (or stream) with the loader's own epoch counter when a pass
            # starts, so the counter itself is set, before the first read; with several processes the
            # sampler sits inside Accelerate's shard wrapper, out of its reach, so it is set directly too.
            if hasattr(train_dl, "set_epoch"):
                train_dl.set_epoch(epoch)
            (train_ds if stream else sampler).set_epoch(epoch)
            if stream:
                # Accelerate's loader for a stream seeds its iterator from the global torch RNG when first
                # read, which dropout also draws from: that read happens at the start of a pass in an
                # unbroken run but at the resume point in a resumed one. Keep it out of the global RNG, and
                # replay the stream to the resume point through the loader itself.
                rng = torch.get_rng_state()
                iterator = iter(train_dl)
                try:
                    first = next(iterator, None)
                except (ValueError, TypeError) as exc:  # Accelerate's dispatcher on a stream with no batch
                    if "does not contain any data" not in str(exc) and "NoneType" not in str(exc):
                        raise
                    first = None
                torch.set_rng_state(rng)
                loader = itertools.islice(
                    itertools.chain([first] if first is not None else [], iterator), skip, None
                )
            else:
                loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
                if loader is not train_dl and hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)

            state.batches_in_epoch = skip
            for batch_index, batch in enumerate(loader, start=skip):
                state.batches_in_epoch = batch_index + 1
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    loss = outputs.loss
                    if spec.label_smoothing:
                        loss = smoothed_loss(outputs, batch["labels"], spec.label_smoothing, shift)
                    loss = _nan_fault(loss, state.step + 1)
                    # One sync per step: a non-finite loss must stop (or be skipped) before it reaches the
                    # weights, so that no checkpoint ever holds them.
                    bad = ~torch.isfinite(loss.detach())
                    if processes > 1:  # every process must skip (or stop) together: they meet in all-reduces
                        bad = accelerator.reduce(bad.float(), "sum") > 0
                    if bad.item():
                        if spec.on_nonfinite_loss == "stop":
                            raise TrainingError(
                                f"loss is {loss.item()} at step {state.step + 1} (epoch {epoch}, batch {batch_index}); "
                                "lower train.lr or check the data. The last checkpoint is intact; "
                                "train.on_nonfinite_loss: skip drops such batches instead"
                            )
                        state.skipped_nonfinite += 1
                        log.warning("skipped a batch with loss %s at step %d", loss.item(), state.step + 1)
                        optimizer.zero_grad(set_to_none=True)  # drops the step's gradients when it ends here
                        if accelerator.sync_gradients:
                            group_items.zero_()
                        continue
                    if normalize:
                        # The loss summed over this batch's items; once the step's batches are in (on every
                        # process), the gradient becomes the mean over all of the step's items, as one batch
                        # of them would give, however the items fall into batches and processes (an LM's
                        # batches hold different numbers of tokens; the epoch's last group fewer batches).
                        items = loss_items(batch, task.loss_items)
                        group_items += items
                        accelerator.backward(loss * items)
                    else:
                        accelerator.backward(loss)
                    _fault("step", state.step + 1)  # test hook: die in the middle of a step
                    factor = None
                    if accelerator.sync_gradients and normalize:
                        # backward() divided by the accumulation steps and the processes' gradients were
                        # averaged: undo both, then divide by the step's items.
                        total = accelerator.reduce(group_items, "sum") if processes > 1 else group_items
                        factor = processes * accumulation / total.clamp(min=1)
                        group_items.zero_()
                    if accelerator.sync_gradients and kernels.foreach_grads:
                        scale_and_clip_(trained, factor, spec.max_grad_norm, optimizer)
                    elif accelerator.sync_gradients:  # Accelerate clips (DeepSpeed, FSDP, fp16's scaler)
                        scale_and_clip_(trained, factor)  # one multiply (nothing without factor)
                        if spec.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach()
                loss_count += 1
                tokens += (
                    batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
                )
                if seq2seq:  # an encoder-decoder processes the target tokens too
                    tokens += (batch["labels"] != -100).sum()
                window_examples += batch["input_ids"].shape[0]
                if not accelerator.sync_gradients:
                    continue  # still accumulating
                state.step += 1
                state.epoch_float = epoch + (0 if stream else (batch_index + 1) / len(train_dl))
                bar.advance()

                if state.step % spec.log_every == 0 or state.step == total_steps:
                    # Averaged / summed over processes; .item() syncs: only here, every log_every steps.
                    mean_loss = accelerator.reduce(loss_sum / loss_count, "mean").item()
                    window_tokens = int(accelerator.reduce(tokens, "sum").item())
                    now = time.perf_counter()
                    elapsed = max(now - window_start - clock["window"], 1e-9)
                    values = {
                        "loss": mean_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "examples_per_s": window_examples * accelerator.num_processes / elapsed,
                        "tokens_per_s": window_tokens / elapsed,
                        "train_s": round(trained_seconds(), 3),
                    }
                    record("train", values)
                    if not interactive and (
                        state.step - last_plain >= plain_every or state.step == total_steps
                    ):
                        last_plain = state.step
                        # ETA from this session's pace (evaluation and checkpoints left out, as they come
                        # at their own cadence)
                        pace = (trained_seconds() - clock["before"]) / max(state.step - first_step, 1)
                        log.info(
                            "step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s  eta %s",
                            state.step,
                            total_steps,
                            mean_loss,
                            values["lr"],
                            values["tokens_per_s"],
                            _duration(pace * (total_steps - state.step)),
                        )
                    bar.stats(mean_loss, values["lr"], values["tokens_per_s"])
                    state.examples_seen += window_examples
                    state.tokens_seen += window_tokens
                    loss_sum.zero_()
                    tokens.zero_()
                    loss_count, window_examples = 0, 0
                    window_start, clock["window"] = now, 0.0

                if (
                    eval_dl is not None
                    and isinstance(spec.eval_every, int)
                    and state.step % spec.eval_every == 0
                ):
                    last_eval = run_eval()
                if stop or state.step >= total_steps or (not stream and batch_index + 1 == len(train_dl)):
                    break  # an epoch's (or the run's) last step: evaluate first, then save, below
                if isinstance(spec.save_every, int) and state.step % spec.save_every == 0:
                    save_checkpoint()
                if stopper.requested():
                    stop_on_signal()
            if stream and state.batches_in_epoch == 0:
                raise DataError(
                    f"the streamed train files hold no full block of data.max_length={recipe.data.max_length} "
                    "tokens",
                    file=str(recipe.data.train),
                )
            skip = 0
            # End of an epoch (or of training). Evaluation comes before the checkpoint, so that a run resumed
            # from it knows this evaluation. The final model is always evaluated and saved.
            finished = stop or state.step >= total_steps or epoch == num_epochs - 1
            state.stopped = stop
            if (
                eval_dl is not None
                and last_eval_step != state.step
                and (spec.eval_every == "epoch" or finished)
            ):
                last_eval = run_eval()
                state.stopped = stop
            due = spec.save_every == "epoch" or (
                isinstance(spec.save_every, int) and state.step % spec.save_every == 0
            )
            if spec.save_every != "never" and last_save_step != state.step and (due or finished):
                save_checkpoint()
            if finished:
                break
            if stopper.requested():
                stop_on_signal()
    finally:
        stopper.restore()  # also when training stops with an error
        kernels.restore()  # own modules and attention, PyTorch's dropout: the model returned is the one saved
        bar.close()  # the terminal gets its cursor back, whatever happened
        # Flush TensorBoard's writer, end the MLflow run; not accelerator.end_training(), which also
        # destroys the process group that the rest of the run (test scoring, saving) still needs.
        finish_trackers(accelerator)
    state.train_seconds = trained_seconds()
    state.runtime_seconds = runtime_before + time.perf_counter() - started  # read after: never less
    accelerator.wait_for_everyone()

    final = accelerator.unwrap_model(model)
    validation = last_eval or (_best_eval(metrics_log, state.step) if eval_dl is not None else {})
    if eval_dl is not None and state.best_step is not None and state.best_step != state.step:
        log.info(
            "loading the best model: step %d, %s %.4f", state.best_step, metric_for_best, state.best_metric
        )
        from hfpipe.adapters import is_peft_model, load_saved_adapter

        if is_peft_model(final):  # the best adapter goes back into the model in hand (same frozen base)
            load_saved_adapter(final, best_dir)
        else:
            final = type(final).from_pretrained(str(best_dir))
        final.to(accelerator.device)
        validation = _best_eval(metrics_log, state.best_step)
    accelerator.free_memory()
    return FitResult(
        final,
        state,
        validation,
        state.runtime_seconds,
        metric_for_best if eval_dl is not None else None,
        padding,
    )


class TrainingInterrupted(HfpipeError):
    """SIGTERM / Ctrl-C: a checkpoint was saved at a step boundary; the run can be resumed."""

    exit_code = 130

    def __init__(self, signal_name: str, step: int, command: str | None = None) -> None:
        how = f"`{command}`" if command else "the same command plus --resume"
        super().__init__(f"{signal_name} at step {step}: checkpoint saved; continue with {how}")
        self.signal_name, self.step = signal_name, step


class _StopOnSignal:
    """Turns SIGTERM / SIGINT into a request to stop at the next step boundary (main thread only)."""

    def __init__(self, accelerator) -> None:
        import signal
        import threading

        self.accelerator, self.signal_name, self._previous = accelerator, "", {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        import signal

        if self.signal_name:  # a second Ctrl-C: stop now, as the user insists
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s: saving a checkpoint at the end of this step (again to stop at once)", self.signal_name
        )

    def requested(self) -> bool:
        flag = bool(self.signal_name)
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            import torch

            flag = bool(
                self.accelerator.reduce(torch.tensor(int(flag), device=self.accelerator.device), "sum")
            )
            self.signal_name = self.signal_name or ("SIGTERM" if flag else "")
        return flag

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _fault(point: str, step: int) -> None:
    """Test hook, off unless HFPIPE_FAULT is set: `step:N` / `checkpoint:N` SIGKILL this process in the
    middle of step N / of writing checkpoint N; `sigterm:N` sends it SIGTERM during step N."""
    import os

    fault = os.environ.get("HFPIPE_FAULT")
    if not fault:
        return
    import signal

    if fault == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "step" and fault == f"sigterm:{step}":
        os.kill(os.getpid(), signal.SIGTERM)


_NAN_FIRED: set[str] = set()


def _nan_fault(loss, step: int):
    """Test hook: HFPIPE_FAULT=nan:N makes one loss of step N NaN (once per process)."""
    import os

    fault = os.environ.get("HFPIPE_FAULT")
    if fault == f"nan:{step}" and fault not in _NAN_FIRED:
        _NAN_FIRED.add(fault)
        return loss * float("nan")
    return loss


def _truncate_log(metrics_log: Path, step: int) -> None:
    """Drop log records written after the checkpoint a run resumes from (they will be written again)."""
    if not metrics_log.exists():
        return
    keep = [line for line, record in _log_records(metrics_log) if record.get("step", 0) <= step]
    io.atomic_write_text(metrics_log, "".join(line + "\n" for line in keep))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (renamed into place, with its trainer_state.json), or None."""
    root = Path(run_dir) / io.CHECKPOINTS
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _log_records(metrics_log: Path) -> list[tuple[str, dict]]:
    """(line, record) of metrics.jsonl; a line cut short by a crash is skipped."""
    out = []
    for line in metrics_log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


def _best_eval(metrics_log: Path, step: int) -> dict:
    best = {}
    for _, rec in _log_records(metrics_log):
        if rec.get("type") == "eval" and rec.get("step") == step:
            best = {k.removeprefix("eval_"): v for k, v in rec.items() if k.startswith("eval_")}
    return best

"""The task protocol and registry: a recipe's ``task:`` names one entry here.

A task is one module that registers one ``Task``. It owns what is specific to a head (which Auto class,
how raw rows become model inputs, how to score and predict) and nothing else: no loop, no optimizer,
no checkpoint. Task modules import torch / transformers inside their functions, so listing and
validating task names stays instant. Looking a task up imports every module of this package (a package
scan): a new head is a new module, listed nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    auto_model: str  # transformers class name, e.g. "AutoModelForSequenceClassification"
    peft_task_type: str  # peft.TaskType name, for the PEFT section
    pipeline_tag: str  # transformers.pipeline task for the run directory
    # (raw DatasetDict, recipe) -> config kwargs for the head (num_labels, id2label, ...)
    configure: Callable[..., dict[str, Any]]
    # (raw DatasetDict, recipe) -> iterator of strings to train a tokenizer on
    training_text: Callable[..., Any]
    # (raw split Dataset, split name, tokenizer, model config, recipe) -> model-ready Dataset
    prepare: Callable[..., Any]
    # (tokenizer, recipe, train: bool) -> collate_fn; train=False for evaluation (e.g. fixed masks)
    collator: Callable[..., Any]
    # (model, dataloader, accelerator, recipe, tokenizer=) -> {"loss": ..., metric: ...}
    evaluate: Callable[..., dict[str, float]]
    # (model config) -> name of the metric that picks the best checkpoint by default
    primary_metric: Callable[..., str]
    # (model config) -> names of every metric `evaluate` returns
    metric_names: Callable[..., list[str]]
    # (model, tokenizer, rows: list[dict], recipe, batch_size) -> list[dict] of predictions
    predict: Callable[..., list[dict[str, Any]]]
    # Language modelling scores any text; a classifier needs labels (without them a test split is predicted)
    needs_labels: bool = True
    # (recipe) -> {metric: signature} of the reference implementations, recorded in metrics.json
    metric_signatures: Callable[..., dict[str, str]] | None = None
    # The prepared column that holds the targets (a split without it is predicted, not scored)
    label_column: str = "labels"
    # evaluate(..., outputs=dict) fills {file name: JSON content} (e.g. predictions.json) for the run
    writes_outputs: bool = False
    # What the head's loss averages over: "examples", "tokens" (labels other than -100) or "next_tokens"
    # (the same, shifted: a causal LM's first label is never predicted). Gradient accumulation and several
    # processes average over all of a step's items, as one big batch would.
    loss_items: str = "examples"
    # (recipe, model config) -> every value outside the data section that `prepare` reads: part of the
    # tokenized-data cache key, so changing one of them never reads stale prepared data back
    preparation_settings: Callable[..., dict[str, Any]] = lambda recipe, config: {}
    # (recipe, model config) -> None: checks of the recipe against the model it runs on (RecipeError, or a
    # warning), run once the model is built and before any data is prepared
    check_model: Callable[..., None] = lambda recipe, config: None
    # (recipe) -> None: the task's own checks of a recipe, run when it is validated (no torch; a ValueError
    # "@key: message" names the key), after the checks every task shares (check_recipe below)
    check_recipe: Callable[..., None] = lambda recipe: None
    # The command that runs recipes of this task: train, or fewshot for a few-shot evaluation
    command: str = "train"
    # Trains on data.streaming: a stream of packed blocks from files larger than memory
    streams: bool = False
    # A decoder-only language model: its logits at t score the label at t + 1 (label smoothing shifts them),
    # prefix-tuning prefixes its keys and values, attention maps call its self-attention the decoder's
    is_causal: bool = False
    # Prepares packed blocks of data.max_length tokens: batches hold no padding
    packed: bool = False
    # (raw DatasetDict, split name, tokenizer, recipe, prepared split, model config) -> what `hfpipe plan`
    # reports of the split: examples, features, token lengths before truncation, what is cut or packed
    split_stats: Callable[..., dict[str, Any]] = lambda raw, split, tokenizer, recipe, prepared, config: (
        split_counts(raw, split, prepared)
    )
    # What its inputs are: "text" (an image head would say "image")
    modality: str = "text"
    # The commands that take a run of it (predict, generate, translate, answer), beside evaluate
    run_commands: tuple[str, ...] = ("predict",)
    # What a run of it is given, as a message names it when a command does not take it
    inputs: str = "texts"
    # What evaluation scores against, as a message names it when it is missing; None: the label column
    scored_against: str | None = None
    # Its labels when they are neither classes nor tokens (e.g. "answer spans"): no label smoothing for them
    unsmoothable_labels: str | None = None
    # Its head is a language model (causal, masked or encoder-decoder): few-shot prompts score on its runs
    language_model: bool = False

    def __post_init__(self) -> None:
        # Scoring and predicting never see dropout, whoever calls them, and hand the model back in the mode
        # they found it (training goes on after an evaluation).
        object.__setattr__(self, "evaluate", in_eval_mode(self.evaluate))
        object.__setattr__(self, "predict", in_eval_mode(self.predict))

    @property
    def trained(self) -> bool:
        return self.command == "train"

    @property
    def auto_class(self):
        """The transformers Auto class of the head (`auto_model`), e.g. AutoModelForSequenceClassification."""
        import transformers

        return getattr(transformers, self.auto_model)


def check_recipe(task: Task, recipe) -> None:
    """The checks of a recipe every task shares, then the task's own (ValueError "@key: message")."""
    data = recipe.data
    if task.trained and data is None:
        raise ValueError("@data: required key is missing (the examples to train on)")
    if data is not None and data.streaming:
        if not task.streams:
            streaming = ", ".join(t.name for t in TASKS.values() if t.streams)
            raise ValueError(f"@data.streaming: streams train {streaming} (pretraining), not {task.name}")
        if data.train is None:
            raise ValueError("@data.streaming: streams data.train files (not a built-in or Hub dataset)")
        if data.validation_fraction:
            raise ValueError(
                "@data.validation_fraction: a stream cannot hold rows out; give data.validation files"
            )
        if recipe.train.max_steps is None:
            raise ValueError("@train.max_steps: data.streaming needs max_steps (a stream has no length)")
    task.check_recipe(recipe)


def require_command(task: Task, command: str, recipe_path=None, used: str | None = None) -> None:
    """RecipeError unless `hfpipe COMMAND` runs recipes of `task` (`used`: the command asking, when it only
    serves COMMAND's recipes, as plan serves train's): the one message every command gives."""
    if task.command != command:
        from hfpipe.errors import RecipeError

        shown = str(recipe_path) if recipe_path else "RECIPE"
        raise RecipeError(
            f"a {task.name} recipe runs with `hfpipe {task.command} {shown}`, not `hfpipe {used or command}`",
            file=str(recipe_path) if recipe_path else None,
            key="task",
        )


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode (no dropout) inside the block; each module's own mode restored after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def in_eval_mode(function: Callable) -> Callable:
    """`function(model, ...)` run with `model` in eval mode."""
    if getattr(function, "in_eval_mode", False):
        return function

    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        with eval_mode(model):
            return function(model, *args, **kwargs)

    wrapper.in_eval_mode = True
    return wrapper


TASKS: dict[str, Task] = {}


def pad_rows(rows: list[list[int]], value: int):
    """A long tensor of `rows` right-padded with `value` to the longest row (collators share it)."""
    import itertools

    import numpy as np
    import torch

    # One flat copy of the values and one masked assignment, not a tensor per row (10x faster for a batch)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    out = np.full((len(rows), int(lengths.max())), value, dtype=np.int64)
    out[np.arange(out.shape[1]) < lengths[:, None]] = flat
    return torch.from_numpy(out)


PERCENTILES = (50, 90, 99, 100)


def percentiles(lengths: list[int]) -> dict[str, int]:
    """{"p50", "p90", "p99", "max"} of `lengths` (values that occur: method="higher"); {} for none."""
    import numpy as np

    if not lengths:
        return {}
    values = np.percentile(np.asarray(lengths), PERCENTILES, method="higher")
    return {("max" if p == 100 else f"p{p}"): int(v) for p, v in zip(PERCENTILES, values, strict=True)}


def split_counts(raw, split: str, prepared) -> dict[str, Any]:
    """The start of every task's split statistics: raw examples and prepared features."""
    return {"examples": len(raw.splits[split]), "features": len(prepared)}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


@functools.cache
def _load_builtin() -> None:
    """Import every module of this package: each registers its task (a new head is a new module)."""
    import importlib
    import pkgutil

    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def task_names() -> list[str]:
    _load_builtin()
    return sorted(TASKS)


def tasks_taking(command: str) -> list[str]:
    """Names of the tasks whose runs `command` (predict, generate, translate, answer) takes, sorted."""
    _load_builtin()
    return sorted(name for name, task in TASKS.items() if command in task.run_commands)


def language_models() -> list[str]:
    """Names of the tasks whose runs few-shot prompts can be scored on, sorted."""
    _load_builtin()
    return sorted(name for name, task in TASKS.items() if task.language_model)


def get_task(name: str) -> Task:
    _load_builtin()
    try:
        return TASKS[name]
    except KeyError:
        from hfpipe.errors import RecipeError, did_you_mean

        raise RecipeError(
            f"unknown task {name!r}{did_you_mean(name, TASKS)} (known: {', '.join(sorted(TASKS))})",
            key="task",
        ) from None

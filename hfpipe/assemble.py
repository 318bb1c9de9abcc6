"""The one way a run is assembled: raw data -> tokenizer -> model -> checks -> prepared splits.

`hfpipe train`, `hfpipe plan` and the bench all build their run here, so what plan reports and what the
bench measures is what training trains on. Each phase is a function of its own (evaluate and the tests use
them one by one); `prepare_run` strings them together.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hfpipe.errors import RecipeError

log = logging.getLogger("hfpipe")


@dataclass
class PreparedRun:
    recipe: object
    task: object
    raw: object  # data.RawData: the splits as read, with what locates a row in its file
    tokenizer: object
    model: object  # with weights, random weights, or on the meta device (see prepare_run's `model`)
    head_kwargs: dict  # the config values the task derived from the data (num_labels, id2label, ...)
    splits: dict = field(default_factory=dict)  # split name -> prepared dataset (a stream for data.streaming)
    digests: dict = field(default_factory=dict)  # data file -> sha256


def prepare_run(recipe, *, accelerator=None, resume_from=None, model: str = "weights") -> PreparedRun:
    """The recipe's run, ready for the loop. `model`: "weights" (loaded or built, as training uses it),
    "random" (random weights, a pretrained model's config only) or "meta" (shapes, no memory: counts);
    `resume_from`: a checkpoint, whose tokenizer the run started with; `accelerator`: the main process
    prepares the splits first (it fills the cache, the others read it)."""
    from hfpipe.data import load_raw
    from hfpipe.tasks import get_task

    task = get_task(recipe.task)
    raw = load_raw(recipe)
    head_kwargs = task.configure(raw, recipe)
    tokenizer = recipe_tokenizer(recipe, task, raw, resume_from)
    built = make_model(recipe, task, tokenizer, head_kwargs, model)
    if recipe.tokenizer.train is not None and resume_from is None:
        # A trained tokenizer knows the model's positions (BERT max_position_embeddings, GPT-2 n_positions),
        # so pipeline(...) on the run directory never truncates past them.
        tokenizer.model_max_length = getattr(built.config, "max_position_embeddings", None) or 512
    check_model(recipe, task, built.config)
    run = PreparedRun(recipe, task, raw, tokenizer, built, head_kwargs, digests=data_fingerprint(recipe))
    run.splits = prepare_splits(run, accelerator)
    return run


def recipe_tokenizer(recipe, task, raw, resume_from=None):
    """The recipe's tokenizer: the one a resumed run started with; trained on the training text
    (deterministic: every process trains the same one); or loaded (a missing pad token becomes EOS)."""
    from hfpipe.tokenization import load_tokenizer, pad_with_eos, train_tokenizer

    if resume_from is not None:
        return load_tokenizer(str(Path(resume_from) / "tokenizer"))
    if recipe.tokenizer.train is not None:
        return train_tokenizer(
            task.training_text(raw, recipe),
            recipe.tokenizer.train,
            recipe.model.architecture,
            model_max_length=512,  # set from the model's config once it is built
        )
    tokenizer = load_tokenizer(
        recipe.tokenizer.name_or_path or recipe.model.name_or_path,
        revision=recipe.model.revision if not recipe.tokenizer.name_or_path else None,
        trust_remote_code=recipe.model.trust_remote_code,
        key="tokenizer.name_or_path" if recipe.tokenizer.name_or_path else "model.name_or_path",
    )
    pad_with_eos(tokenizer)  # batches of any task pad; GPT-2's tokenizer has no pad token
    return tokenizer


def make_model(recipe, task, tokenizer, head_kwargs: dict, kind: str = "weights", config=None):
    """The recipe's model with the task's head: "weights" (pretrained weights loaded, or built from config);
    "random" (random weights on the current device: for a pretrained name from its config, weights never
    loaded); "meta" (on PyTorch's meta device: shapes, no memory). With the recipe's adapter."""
    from hfpipe.models import build_model

    if kind == "weights" or (kind == "random" and recipe.model.architecture):
        return build_model(recipe, task, tokenizer, head_kwargs)
    if kind == "meta":
        import torch

        with torch.device("meta"):
            return make_model(recipe, task, tokenizer, head_kwargs, "random", config)
    from hfpipe.models import attention_kwargs, pretrained_config

    config = config or pretrained_config(recipe.model, head_kwargs)
    model = task.auto_class.from_config(
        config, trust_remote_code=recipe.model.trust_remote_code, **attention_kwargs(recipe.model)
    )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if recipe.peft is not None:
        from hfpipe.adapters import wrap

        model = wrap(model, recipe, task, new_modules=[])
    return model


def check_model(recipe, task, config) -> None:
    """What can only be checked once the model is known: the task's own checks, lengths against the
    model's positions, label smoothing against the head, metric_for_best against the task's metrics."""
    from hfpipe.training import resolve_metric_for_best

    task.check_model(recipe, config)
    _check_lengths(recipe, config)
    _check_label_smoothing(recipe, task, config)
    resolve_metric_for_best(recipe, task, config)


def prepare_splits(run: PreparedRun, accelerator=None, names=None) -> dict:
    """Every split (or those `names`) through the task's preparation (read from the tokenized-data cache
    when it is there); data.streaming's train split as a stream of packed blocks."""
    import contextlib

    from hfpipe.cache import prepare_split

    recipe, config = run.recipe, run.model.config
    names = list(run.raw.splits) if names is None else names
    first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    with first:  # the main process fills the cache, the others read it
        splits = {
            name: prepare_split(run.raw, name, run.tokenizer, config, recipe, run.task, run.digests)
            for name in names
            if not (name == "train" and recipe.data.streaming)
        }
    if recipe.data.streaming and "train" in names:
        from hfpipe.streaming import PackedStream

        data = recipe.data
        splits["train"] = PackedStream(
            run.raw.splits["train"],
            run.tokenizer,
            data.columns.text,
            data.max_length,
            recipe.train.seed,
            data.shuffle_buffer,
        )
    return splits


DATA_FINGERPRINT = "data_fingerprint.json"


def data_fingerprint(recipe) -> dict[str, str]:
    """sha256 of every data file the recipe reads (built-in and Hub data are defined by the recipe)."""
    from hfpipe.data import data_files

    return file_digests(data_files(recipe.data))


def file_digests(paths) -> dict[str, str]:
    """sha256 of each file. A file is read once per process while it stays as it was (same inode, size and
    modification time): a resume checks the data's digests and then the run uses them again, and a corpus
    of gigabytes is not read twice for it."""
    import os

    out = {}
    for path in paths:
        stat = os.stat(path)
        out[path] = _digest(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return out


@functools.lru_cache(maxsize=256)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_lengths(recipe, config) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    peft = recipe.peft
    prefix = peft is not None and peft.method == "prefix-tuning"
    if limit is not None and prefix and not config.is_encoder_decoder:
        limit -= peft.num_virtual_tokens  # a decoder's prefix takes positions before the text
    if limit is not None and config.is_encoder_decoder and recipe.generation.max_new_tokens > limit:
        raise RecipeError(
            f"{recipe.generation.max_new_tokens} is more than the decoder's max_position_embeddings ({limit})",
            key="generation.max_new_tokens",
        )
    for key in ("max_length", "max_target_length"):
        value = getattr(recipe.data, key)
        if limit is not None and value is not None and value > limit:
            left = " left after the prefix-tuning virtual tokens" if prefix else ""
            raise RecipeError(
                f"{value} is more than the model's max_position_embeddings ({limit}){left}", key=f"data.{key}"
            )


def _check_label_smoothing(recipe, task, config) -> None:
    if not recipe.train.label_smoothing:
        return
    if task.unsmoothable_labels:  # extractive QA's labels are answer spans
        raise RecipeError(
            f"label smoothing applies to classes and tokens, not {task.unsmoothable_labels}",
            key="train.label_smoothing",
        )
    if getattr(config, "problem_type", None) == "regression":
        raise RecipeError(
            "label smoothing needs classes, and this is a regression head", key="train.label_smoothing"
        )

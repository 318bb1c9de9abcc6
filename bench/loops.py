"""The training loops the benchmarks compare: hfpipe's (hfpipe.training.fit), a plain PyTorch loop and
transformers.Trainer, each on the same model, examples, collator, batch size, optimizer settings and
schedule; and the step clock that times any of them step by step.

The plain loop and the Trainer arms are deliberately not hfpipe's code: they are what people run instead.
Only the schedule's numbers (steps, warmup) come from hfpipe's one definition
(hfpipe.training.schedule.Schedule), so that every arm trains the same schedule.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def hfpipe_loop(recipe, task, tokenizer, model, train, run_dir: Path) -> tuple[float, int, int]:
    """(seconds, examples, tokens) of hfpipe's loop training `model` on `train` into a fresh `run_dir`."""
    from hfpipe.training import fit

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result = fit(recipe, task, model, tokenizer, train, None, run_dir)
    return result.train_runtime, result.state.examples_seen, result.state.tokens_seen


def peer_schedule(recipe, batches_per_epoch: int):
    """The recipe's schedule as hfpipe trains it (total steps, warmup), for a loop of one forward pass per
    optimizer step."""
    from hfpipe.training.schedule import Schedule

    if recipe.train.accumulation(1) != 1:
        raise ValueError("the peer loops take one batch per optimizer step: no gradient accumulation")
    return Schedule.of(recipe.train, batches_per_epoch, accumulation=1)


def batch_tokens(batch, model) -> int:
    """Tokens of a batch as hfpipe counts them: real tokens (every token of packed blocks), and for an
    encoder-decoder the target tokens too."""
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    if getattr(model.config, "is_encoder_decoder", False):
        tokens += int((batch["labels"] != -100).sum())
    return tokens


def plain_loop(recipe, task, tokenizer, model, train) -> tuple[float, int, int]:
    """What people write by hand: same batches, AdamW, the recipe's schedule, clipping; no Accelerate."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from hfpipe.training.batching import BatchSampler, split_lengths

    settings = recipe.train
    torch.manual_seed(settings.seed)
    train, lengths = split_lengths(train)
    sampler = BatchSampler(lengths, settings.batch_size, settings.seed, settings.group_by_length)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=task.collator(tokenizer, recipe))
    schedule = peer_schedule(recipe, len(sampler))
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        betas=tuple(settings.adam_betas),
        eps=settings.adam_epsilon,
    )
    scheduler = get_scheduler(
        settings.scheduler if settings.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=schedule.warmup_steps,
        num_training_steps=schedule.total_steps,
    )
    model.train()
    examples = tokens = step = epoch = 0
    start = time.perf_counter()
    while step < schedule.total_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            examples += batch["input_ids"].shape[0]
            tokens += batch_tokens(batch, model)  # counted as hfpipe counts them
            step += 1
            if step == schedule.total_steps:
                break
        epoch += 1
    loss.item()
    return time.perf_counter() - start, examples, tokens


# transformers.Trainer arms: no checkpoints, no evaluation of its own, no trackers, no bar, this CPU.
TRAINER_BENCH_ARGS = {
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": [],
    "use_cpu": True,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}


class PlannedOrder:
    """A Trainer sampler that yields hfpipe's batches (flattened) epoch by epoch: the same batches, in
    the same order, as hfpipe's loop and the plain loop draw."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return (i for batch in self.sampler.batches() for i in batch)

    def __len__(self) -> int:
        return len(self.sampler.lengths)


def trainer_loop(
    recipe, task, tokenizer, model, train, workdir: Path, order: str = "random"
) -> tuple[float, int, int]:
    """transformers.Trainer on the same model, examples, collator, batch size, optimizer settings and
    schedule. `order`: "random" (Trainer's default sampler), "group_by_length" (its length-grouped
    sampler), or "same-batches" (hfpipe's batches in hfpipe's order)."""
    import torch
    from transformers import Trainer

    from hfpipe.training.batching import BatchSampler, split_lengths

    settings = recipe.train
    train, lengths = split_lengths(train)
    sampler = BatchSampler(lengths, settings.batch_size, settings.seed, settings.group_by_length)
    collate = task.collator(tokenizer, recipe)
    seen = {"examples": 0, "tokens": 0}

    def counting(features):
        batch = collate(features)
        seen["examples"] += batch["input_ids"].shape[0]
        seen["tokens"] += batch_tokens(batch, model)
        return batch

    args = _trainer_arguments(recipe, peer_schedule(recipe, len(sampler)), workdir, order)
    trainer_class = Trainer
    if order == "same-batches":
        planned = PlannedOrder(sampler)

        class PlannedTrainer(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return planned

        trainer_class = PlannedTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=train, data_collator=counting)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, seen["examples"], seen["tokens"]


def _trainer_arguments(recipe, schedule, workdir: Path, order: str):
    """TrainingArguments with the recipe's optimizer settings and hfpipe's schedule."""
    from transformers import TrainingArguments

    settings = recipe.train
    return TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=settings.batch_size,
        max_steps=schedule.total_steps,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.scheduler
        if settings.scheduler in ("linear", "cosine")
        else "constant_with_warmup",
        warmup_steps=schedule.warmup_steps,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_betas[0],
        adam_beta2=settings.adam_betas[1],
        adam_epsilon=settings.adam_epsilon,
        max_grad_norm=settings.max_grad_norm or 0.0,
        seed=settings.seed,
        train_sampling_strategy="group_by_length" if order == "group_by_length" else "random",
        logging_steps=max(schedule.total_steps, 1),
        **TRAINER_BENCH_ARGS,
        remove_unused_columns=False,
    )


class StepClock:
    """Time stamps at the end of every optimizer step of any loop (a global optimizer post-hook), and the
    tokens of every batch the task's collator makes, in order (a loop's i-th step trains its i-th batch,
    even when its loader fetches one batch ahead); and the spans (kind, start, end) of the model's forward
    passes, of backward() and of the optimizer's steps, which split a step into the model's work, the
    optimizer's and the loop's own (the rest: data, clipping, bookkeeping)."""

    def __init__(self, task, model) -> None:
        import dataclasses

        self.model = model
        self.stamps: list[float] = []
        self.tokens: list[int] = []
        self.spans: list[tuple[str, float, float]] = []

        def collator(*args, **kwargs):
            collate = task.collator(*args, **kwargs)

            def counting(features):
                batch = collate(features)
                self.tokens.append(batch_tokens(batch, model))
                return batch

            return counting

        self.task = dataclasses.replace(task, collator=collator)  # the task, its batches counted

    def __enter__(self):
        import torch
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        began: dict[str, float] = {}

        def start(kind):
            return lambda *_: began.__setitem__(kind, time.perf_counter())

        def end(kind):
            return lambda *_: self.spans.append((kind, began[kind], time.perf_counter()))

        def stepped(*_):
            self.stamps.append(time.perf_counter())
            self.spans.append(("optimizer", began["optimizer"], self.stamps[-1]))

        backward = self._backward = torch.autograd.backward

        def timed_backward(*args, **kwargs):  # Tensor.backward goes through torch.autograd.backward
            began = time.perf_counter()
            try:
                return backward(*args, **kwargs)
            finally:
                self.spans.append(("backward", began, time.perf_counter()))

        self.handles = [
            register_optimizer_step_pre_hook(start("optimizer")),
            register_optimizer_step_post_hook(stepped),
            self.model.register_forward_pre_hook(start("forward")),
            self.model.register_forward_hook(end("forward")),
        ]
        torch.autograd.backward = timed_backward  # last: nothing after it can fail
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.autograd.backward = self._backward
        for handle in self.handles:
            handle.remove()

    def phases(self, start: float, end: float) -> dict[str, float]:
        """Seconds of each kind of span between two time stamps, and the rest ("loop"). Not quite like
        for like: hfpipe's fused AdamW scales and clips the gradients inside its step (optimizer time),
        the other loops multiply them before it (loop time); a reentrant checkpointed backward would be
        counted twice (no bench recipe checkpoints)."""
        spent = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for kind, began, ended in self.spans:
            if start <= began and ended <= end:
                spent[kind] += ended - began
        spent["loop"] = (end - start) - sum(spent.values())
        return spent

"""`hfpipe plan RECIPE`: what a run will do, before it runs.

It reads the data and makes (or loads) the tokenizer as training would (prepared splits go to the same
cache, so the training run that follows reuses them), builds the model on PyTorch's meta device (shapes,
no memory, no weights: parameter counts for any size), and reports the data as the model will see it:
examples and features per split, token-length percentiles before truncation, what truncation cuts (for
question answering: answers lost, windows per example), packing efficiency or padding, the global batch
and the step counts. The run-time estimate times a few real training steps of a randomly initialised
copy (weights are never loaded) on batches drawn as training draws them; `--no-timing` skips it. Each
task says what it reports of a split (Task.split_stats).
"""

from __future__ import annotations

import math
import time


def _meta_model(recipe, task, tokenizer, head_kwargs):
    """The recipe's model on the meta device: a config (downloaded or local), never weights."""
    import torch

    with torch.device("meta"):
        return _random_model(recipe, task, tokenizer, head_kwargs)


def _random_model(recipe, task, tokenizer, head_kwargs, config=None):
    """The recipe's model with random weights, on the current default device (meta for the counts; the CPU
    or GPU for timing): built as training builds it for `architecture`; for a pretrained name from its
    config (`config`, or loaded), weights never loaded; with the recipe's adapter."""
    from hfpipe.models import attention_kwargs, build_model, pretrained_config

    if recipe.model.architecture:
        return build_model(recipe, task, tokenizer, head_kwargs)
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


def make_plan(recipe, *, timing_steps: int = 5, processes: int = 1, verbose: bool = False) -> dict:
    """Everything `hfpipe plan` prints, as a dict (its --json)."""
    from hfpipe.api import (
        _check_label_smoothing,
        _check_lengths,
        data_fingerprint,
        quiet_libraries,
        recipe_tokenizer,
    )
    from hfpipe.cache import prepare_split
    from hfpipe.data import load_raw
    from hfpipe.recipe import dump_recipe
    from hfpipe.runner import BatchSampler, resolve_metric_for_best, split_lengths
    from hfpipe.tasks import get_task, require_command

    quiet_libraries(verbose)
    started = time.perf_counter()
    task = get_task(recipe.task)
    require_command(task, "train", recipe.source, used="plan")
    raw = load_raw(recipe)
    head_kwargs = task.configure(raw, recipe)
    tokenizer = recipe_tokenizer(recipe, task, raw)
    model = _meta_model(recipe, task, tokenizer, head_kwargs)
    config = model.config
    if recipe.tokenizer.train is not None:
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", None) or 512
    _check_lengths(recipe, config)
    _check_label_smoothing(recipe, config)
    resolve_metric_for_best(recipe, task, config)

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan: dict = {
        "recipe": dump_recipe(recipe),
        "task": recipe.task,
        "model": {
            "source": recipe.model.name_or_path or f"{recipe.model.architecture} built from config",
            "type": config.model_type,
            "parameters": total,
            "trainable": trainable,
            "adapter": recipe.peft.method if recipe.peft is not None else None,
            "fp32_weights_mb": round(total * 4 / 2**20, 1),
        },
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "source": "trained on the training text"
            if recipe.tokenizer.train is not None
            else (recipe.tokenizer.name_or_path or recipe.model.name_or_path),
        },
        "splits": {},
    }
    digests = data_fingerprint(recipe)
    streaming = recipe.data.streaming
    prepared = {
        name: prepare_split(raw, name, tokenizer, config, recipe, task, digests)
        for name in raw.splits
        if not (name == "train" and streaming)
    }
    for name, split in prepared.items():
        plan["splits"][name] = task.split_stats(raw, name, tokenizer, recipe, split, config)

    spec = recipe.train
    accumulation = spec.accumulation(processes)
    global_batch = spec.batch_size * processes * accumulation
    batching: dict = {
        "batch_size_per_process": spec.batch_size,
        "processes": processes,
        "accumulation": accumulation,
        "global_batch": global_batch,
    }
    train = prepared.get("train")
    if train is not None:
        _, lengths = split_lengths(train)
        sampler = BatchSampler(
            lengths, spec.batch_size * processes, spec.seed, spec.group_by_length, accumulation
        )
        steps_per_epoch = math.ceil(len(lengths) / global_batch)
        total_steps = spec.max_steps or math.ceil(spec.epochs * steps_per_epoch)
        padded = not task.packed
        batching |= {
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "epochs": round(total_steps / steps_per_epoch, 3),
            "warmup_steps": spec.warmup_steps
            if spec.warmup_steps is not None
            else math.ceil(spec.warmup_ratio * total_steps),
        }
        if padded:
            batching["padding_fraction"] = round(sampler.padding_fraction(), 4)
            if spec.group_by_length:
                batching["padding_fraction_without_grouping"] = round(
                    BatchSampler(lengths, spec.batch_size * processes, spec.seed, False).padding_fraction(), 4
                )
    else:
        total_steps = spec.max_steps
        batching |= {"total_steps": total_steps, "steps_per_epoch": None}
    plan["batching"] = batching
    validation = prepared.get("validation")
    # As the runner: no evaluation without validation examples or with eval_every: never; otherwise at each
    # epoch's end / every N steps, and always at the end.
    evaluations = 0
    if validation is not None and len(validation) and spec.eval_every != "never" and total_steps:
        per_epoch = batching.get("steps_per_epoch")
        if spec.eval_every == "epoch":
            evaluations = math.ceil(total_steps / per_epoch) if per_epoch else 1
        else:
            evaluations = total_steps // spec.eval_every + (total_steps % spec.eval_every != 0)
    plan["evaluations"] = evaluations
    plan["prepared_in_s"] = round(time.perf_counter() - started, 2)

    skip = _timing_skipped(total)
    if skip:
        plan["timing_skipped"] = skip
    elif timing_steps and train is not None and total_steps:
        plan["timing"] = _time_steps(
            recipe, task, tokenizer, head_kwargs, config, train, validation, sampler, timing_steps
        )
        step_s = plan["timing"]["step_s"]
        eval_size = (spec.eval_batch_size or 2 * spec.batch_size) * processes
        eval_batches = math.ceil(len(validation) / eval_size) if validation else 0
        eval_s = evaluations * eval_batches * plan["timing"].get("eval_batch_s", 0.0)
        plan["estimate_s"] = {
            "training": round(total_steps * step_s, 1),
            "evaluation": round(eval_s, 1),
            "total": round(total_steps * step_s + eval_s, 1),
        }
    return plan


def _timing_skipped(parameters: int) -> str | None:
    """Why timing would not fit here (weights, gradients and AdamW's two moments in fp32: 16 bytes per
    parameter, against half of this machine's memory), or None."""
    import os

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    needed = 16 * parameters
    if needed > memory / 2:
        return (
            f"not timed: training this model needs ~{needed / 2**30:.0f} GiB (fp32 weights, gradients, AdamW "
            f"state) and this machine has {memory / 2**30:.0f} GiB"
        )
    return None


def _time_steps(recipe, task, tokenizer, head_kwargs, config, train, validation, sampler, steps: int) -> dict:
    """Seconds per optimizer step of one process (its share of the global batch: batch_size per pass,
    accumulation passes; forward, backward, clipping, fused AdamW; on the device and precision training
    uses) over `steps` steps spread over the epoch's batches, after a warm-up step; and seconds per
    evaluation batch (forward only)."""
    import copy

    import torch

    from hfpipe.kernels import FastKernels, scale_and_clip_
    from hfpipe.runner import _optimizer, make_accelerator, split_lengths

    accelerator = make_accelerator(recipe)
    model = _random_model(recipe, task, tokenizer, head_kwargs, copy.deepcopy(config)).to(accelerator.device)
    model.train()
    optimizer = _optimizer(model, recipe.train)
    collate = task.collator(tokenizer, recipe)
    train, _ = split_lengths(train)
    step_batches = sampler.step_batches()
    chosen = [step_batches[round(i * (len(step_batches) - 1) / max(steps, 1))] for i in range(steps + 1)]
    size = sampler.batch_size  # a pass of all processes: this process takes the first share of it
    share = recipe.train.batch_size

    def on_device(batch):
        return {k: v.to(accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}

    def synchronize() -> None:
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    trained = [p for p in model.parameters() if p.requires_grad]

    def one_step(indices) -> None:
        for start in range(0, len(indices), size):
            batch = on_device(collate(train.__getitems__(indices[start : start + size][:share])))
            with accelerator.autocast():
                loss = model(**batch).loss
            loss.backward()
        if kernels.foreach_grads:
            scale_and_clip_(trained, None, recipe.train.max_grad_norm, optimizer)
        elif recipe.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # the kernels training (and its evaluations) will run; undone by itself if it cannot start
    kernels = FastKernels(model, recipe.train, accelerator, attention=recipe.model.attn_implementation)
    try:
        one_step(chosen[0])  # warm-up: allocator, kernels
        synchronize()
        began = time.perf_counter()
        for indices in chosen[1:]:
            one_step(indices)
        synchronize()
        step_s = (time.perf_counter() - began) / steps
        out = {
            "steps_timed": steps,
            "step_s": round(step_s, 4),
            "device": str(accelerator.device),
            "precision": recipe.train.precision,
            "threads": torch.get_num_threads(),
        }
        if validation is not None and len(validation):
            eval_collate = task.collator(tokenizer, recipe, train=False)
            validation, _ = split_lengths(validation)
            size = recipe.train.eval_batch_size or 2 * recipe.train.batch_size
            batches = [
                list(range(i, min(i + size, len(validation))))
                for i in range(0, min(len(validation), 2 * size), size)
            ]
            model.eval()
            began = time.perf_counter()
            with torch.no_grad(), accelerator.autocast():
                for indices in batches:
                    model(**on_device(eval_collate(validation.__getitems__(indices))))
            synchronize()
            out["eval_batch_s"] = round((time.perf_counter() - began) / len(batches), 4)
    finally:
        kernels.restore()  # PyTorch's dropout again (bulk masks replace it process-wide)
    return out


def render(plan: dict, full_recipe: bool = False) -> str:
    """The plan as text for a terminal."""
    from hfpipe.formatting import duration, table

    lines = []
    if full_recipe:
        lines += ["Resolved recipe:", "", plan["recipe"].rstrip(), ""]
    m, t = plan["model"], plan["tokenizer"]
    lines += [
        f"task        {plan['task']}",
        f"model       {m['source']} ({m['type']}): {m['parameters']:,} parameters"
        + (f", {m['trainable']:,} trainable ({m['adapter']})" if m["adapter"] else "")
        + f", {m['fp32_weights_mb']} MB of fp32 weights",
        f"tokenizer   {t['class']}, {t['vocab_size']:,} tokens, {t['source']}",
        "",
    ]
    rows = []
    for name, s in plan["splits"].items():
        tokens = s.get("tokens") or {}
        lengths = " / ".join(f"{tokens[k]}" for k in ("p50", "p90", "p99", "max") if k in tokens)
        notes = []
        for key, label in (
            ("truncated", "cut by max_length"),
            ("targets_truncated", "targets cut"),
            ("longer_than_a_window", "longer than a window"),
            ("answers_lost", "answers in no window"),
            ("at_max_length", "at max_length"),
        ):
            if key in s:
                notes.append(f"{s[key]:,} {label}")
        if "windows_per_example" in s:
            notes.append(f"{s['windows_per_example']} windows per example")
        if "packing" in s:
            p = s["packing"]
            notes.append(
                f"{p['tokens']:,} tokens -> {p['blocks']:,} blocks of {p['block_size']} ({p['efficiency']:.1%} used)"
            )
        if "target_tokens" in s:
            tt = s["target_tokens"]
            notes.append("targets " + " / ".join(f"{tt[k]}" for k in ("p50", "p90", "p99", "max") if k in tt))
        rows.append((name, f"{s['examples']:,}", f"{s['features']:,}", lengths, "; ".join(notes)))
    lines += [table(rows, ("split", "examples", "features", "tokens p50 / p90 / p99 / max", "notes")), ""]
    b = plan["batching"]
    lines.append(
        f"batch       {b['batch_size_per_process']} per process x {b['processes']} process(es) x "
        f"{b['accumulation']} accumulation = {b['global_batch']} per step"
    )
    if b.get("steps_per_epoch"):
        lines.append(
            f"steps       {b['total_steps']:,} ({b['steps_per_epoch']:,} per epoch x {b['epochs']} epochs), "
            f"{b['warmup_steps']:,} warmup"
        )
    else:
        lines.append(f"steps       {b['total_steps']:,} (streamed)")
    if "padding_fraction" in b:
        grouped = (
            f" (without length grouping: {b['padding_fraction_without_grouping']:.1%})"
            if "padding_fraction_without_grouping" in b
            else ""
        )
        lines.append(f"padding     {b['padding_fraction']:.1%} of the batch slots{grouped}")
    lines.append(f"evaluations {plan['evaluations']}")
    if "timing_skipped" in plan:
        lines.append(f"time        {plan['timing_skipped']}")
    if "estimate_s" in plan:
        e, timing = plan["estimate_s"], plan["timing"]
        lines.append(
            f"time        ~{duration(e['total'])} on this machine: training {duration(e['training'])} "
            f"({timing['step_s']:.3f} s a step, {timing['steps_timed']} steps timed on random weights, "
            f"{timing['device']}, {timing['precision']}, {timing['threads']} threads) + evaluation {duration(e['evaluation'])} (forward passes; generation "
            "in evaluation is not timed)"
        )
    lines.append(
        f"planned in  {plan['prepared_in_s']:.1f} s (data and tokenizer; prepared splits are cached for training)"
    )
    return "\n".join(lines)

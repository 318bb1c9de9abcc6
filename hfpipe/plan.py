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


def make_plan(recipe, *, timing_steps: int = 5, processes: int = 1, verbose: bool = False) -> dict:
    """Everything `hfpipe plan` prints, as a dict (its --json)."""
    from hfpipe.api import quiet_libraries
    from hfpipe.assemble import prepare_run
    from hfpipe.tasks import get_task, require_command

    quiet_libraries(verbose)
    started = time.perf_counter()
    require_command(get_task(recipe.task), "train", recipe.source, used="plan")
    run = prepare_run(recipe, model="meta")  # the run training would assemble, with a model of no weights
    plan = _described(run)
    schedule, sampler = _batching(run, processes, plan)
    validation = run.splits.get("validation")
    # As the loop: no evaluation without validation examples; else at each epoch's end or every N steps, and
    # always at the end
    evaluations = (
        schedule.evaluations(recipe.train.eval_every) if validation is not None and len(validation) else 0
    )
    plan["evaluations"] = evaluations
    plan["prepared_in_s"] = round(time.perf_counter() - started, 2)

    skip = _timing_skipped(plan["model"]["parameters"])
    if skip:
        plan["timing_skipped"] = skip
    elif timing_steps and sampler is not None and schedule.total_steps:
        plan["timing"] = _time_steps(run, sampler, processes, timing_steps)
        step_s = plan["timing"]["step_s"]
        settings = recipe.train
        eval_size = (settings.eval_batch_size or 2 * settings.batch_size) * processes
        eval_batches = math.ceil(len(validation) / eval_size) if validation else 0
        eval_s = evaluations * eval_batches * plan["timing"].get("eval_batch_s", 0.0)
        plan["estimate_s"] = {
            "training": round(schedule.total_steps * step_s, 1),
            "evaluation": round(eval_s, 1),
            "total": round(schedule.total_steps * step_s + eval_s, 1),
        }
    return plan


def _described(run) -> dict:
    """The recipe, the model (counted on the meta device), the tokenizer, and each split as the task sees it."""
    from hfpipe.recipe import dump_recipe
    from hfpipe.training.batching import is_stream

    recipe, model, tokenizer = run.recipe, run.model, run.tokenizer
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "recipe": dump_recipe(recipe),
        "task": recipe.task,
        "model": {
            "source": recipe.model.name_or_path or f"{recipe.model.architecture} built from config",
            "type": model.config.model_type,
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
        "splits": {
            name: run.task.split_stats(run.raw, name, tokenizer, recipe, split, model.config)
            for name, split in run.splits.items()
            if not is_stream(split)
        },
    }


def _batching(run, processes: int, plan: dict):
    """(the run's Schedule, its training sampler or None for a stream); plan["batching"]: the global batch,
    the steps, and the padding of the batches training draws."""
    from hfpipe.training.batching import BatchSampler, is_stream, split_lengths
    from hfpipe.training.schedule import Schedule

    settings, train = run.recipe.train, run.splits["train"]
    accumulation = settings.accumulation(processes)
    batching: dict = {
        "batch_size_per_process": settings.batch_size,
        "processes": processes,
        "accumulation": accumulation,
        "global_batch": settings.batch_size * processes * accumulation,
    }
    plan["batching"] = batching
    if is_stream(train):
        schedule = Schedule.of(settings, None, accumulation)
        batching |= {"total_steps": schedule.total_steps, "steps_per_epoch": None}
        return schedule, None
    _, lengths = split_lengths(train)
    size = settings.batch_size * processes
    sampler = BatchSampler(lengths, size, settings.seed, settings.group_by_length, accumulation)
    schedule = Schedule.of(settings, len(sampler), accumulation)
    batching |= {
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": schedule.total_steps,
        "epochs": round(schedule.epochs_run, 3),
        "warmup_steps": schedule.warmup_steps,
    }
    if not run.task.packed:
        batching["padding_fraction"] = round(sampler.padding_fraction(), 4)
        if settings.group_by_length:
            ungrouped = BatchSampler(lengths, size, settings.seed, False).padding_fraction()
            batching["padding_fraction_without_grouping"] = round(ungrouped, 4)
    return schedule, sampler


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


def _time_steps(run, sampler, processes: int, steps: int) -> dict:
    """Seconds per optimizer step of one process (its share of the global batch: batch_size per pass,
    accumulation passes), over `steps` steps spread over the epoch's batches after a warm-up step, taken by
    training's own TrainStep on a randomly initialised copy of the model (the device, precision and kernels
    training uses); and seconds per evaluation batch (forward only)."""
    import copy

    import torch

    from hfpipe.assemble import make_model
    from hfpipe.kernels import FastKernels
    from hfpipe.training import make_accelerator
    from hfpipe.training.batching import split_lengths
    from hfpipe.training.state import TrainState
    from hfpipe.training.step import TrainStep, make_optimizer

    recipe, task, settings = run.recipe, run.task, run.recipe.train
    accelerator = make_accelerator(recipe, processes=processes)  # the accumulation of `processes`
    config = copy.deepcopy(run.model.config)
    model = make_model(recipe, task, run.tokenizer, run.head_kwargs, "random", config).to(accelerator.device)
    model.train()
    optimizer = make_optimizer(model, settings)
    model, optimizer = accelerator.prepare(model, optimizer)
    collate = task.collator(run.tokenizer, recipe)
    train, _ = split_lengths(run.splits["train"])
    full = [b for b in sampler.step_batches() if len(b) == sampler.batch_size * sampler.accumulation]
    full = full or sampler.step_batches()  # whole steps keep the accumulation count in step
    chosen = [full[round(i * (len(full) - 1) / max(steps, 1))] for i in range(steps + 1)]
    size = sampler.batch_size  # a pass of all processes: this process takes the first share of it

    def on_device(batch):
        return {k: v.to(accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}

    def synchronize() -> None:
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    # the kernels training (and its evaluations) will run; undone by itself if it cannot start
    kernels = FastKernels(model, settings, accelerator, attention=recipe.model.attn_implementation)
    step, state = TrainStep(model, optimizer, None, accelerator, task, settings, kernels), TrainState()

    def one_step(indices) -> None:
        for start in range(0, len(indices), size):
            step(
                on_device(collate(train.__getitems__(indices[start : start + size][: settings.batch_size]))),
                state,
            )

    try:
        one_step(chosen[0])  # warm-up: allocator, kernels
        synchronize()
        began = time.perf_counter()
        for indices in chosen[1:]:
            one_step(indices)
        synchronize()
        out = {
            "steps_timed": steps,
            "step_s": round((time.perf_counter() - began) / steps, 4),
            "device": str(accelerator.device),
            "precision": settings.precision,
            "threads": torch.get_num_threads(),
        }
        validation = run.splits.get("validation")
        if validation is not None and len(validation):
            out["eval_batch_s"] = _time_evaluation(model, task, run, validation, on_device, synchronize)
    finally:
        kernels.restore()  # PyTorch's dropout again (bulk masks replace it process-wide)
    return out


def _time_evaluation(model, task, run, validation, on_device, synchronize) -> float:
    """Seconds per evaluation batch: a forward pass of two batches of the evaluation size."""
    import torch

    from hfpipe.training.batching import split_lengths

    settings = run.recipe.train
    collate = task.collator(run.tokenizer, run.recipe, train=False)
    validation, _ = split_lengths(validation)
    size = settings.eval_batch_size or 2 * settings.batch_size
    batches = [
        list(range(i, min(i + size, len(validation)))) for i in range(0, min(len(validation), 2 * size), size)
    ]
    model.eval()
    began = time.perf_counter()
    with torch.no_grad():
        for indices in batches:
            model(**on_device(collate(validation.__getitems__(indices))))
    synchronize()
    return round((time.perf_counter() - began) / len(batches), 4)


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

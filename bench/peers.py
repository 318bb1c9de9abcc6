"""hfpipe's loop against a plain PyTorch loop and transformers.Trainer, timed step by step on three tasks."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

from bench.common import benchmark, bundled_run, say
from bench.loops import StepClock, hfpipe_loop, plain_loop, trainer_loop

PEER_TASKS = {  # recipe, overrides (data sizes, steps), what it is
    "classification": ("quickstart.yaml", [], "BERT 2 layers, hidden 128 (the quickstart)"),
    "causal-lm": ("gpt2-clm-pretrain.yaml", [], "GPT-2 of gpt2-clm-pretrain.yaml"),
    "translation": ("marian-translation.yaml", [], "Marian of marian-translation.yaml"),
}
PEER_ARMS = ("hfpipe", "hfpipe-pytorch-ops", "plain", "trainer", "trainer-grouped", "trainer-defaults")
RUN_DIR = Path("/tmp/hfpipe-bench-peers")


def _peer_arm(arm: str, inputs: tuple) -> tuple[float, int, int]:
    """Train with `arm` on `inputs` (recipe, task, tokenizer, model, train split)."""
    if arm == "hfpipe":
        return hfpipe_loop(*inputs, RUN_DIR)
    if arm == "hfpipe-pytorch-ops":  # train.fast_kernels off: the model's own GELU, clip_grad_norm_
        recipe, *rest = inputs
        train = recipe.train.model_copy(update={"fast_kernels": False})
        return hfpipe_loop(recipe.model_copy(update={"train": train}), *rest, RUN_DIR)
    if arm == "plain":
        return plain_loop(*inputs)
    order = {"trainer": "same-batches", "trainer-grouped": "group_by_length"}.get(arm, "random")
    return trainer_loop(*inputs, Path("/tmp/hfpipe-bench-trainer"), order=order)


def _rounds(run, steps: int, rounds: int, warmup_steps: int) -> dict:
    """Every arm `rounds` times (after a round that warms up), each from a fresh copy of the model: per arm,
    the seconds of every step of every round ("times"), the steps' tokens ("tokens"), tokens/s of each
    round ("window") and ms a step by phase of each round ("split")."""
    times: dict[str, list[list[float]]] = {arm: [] for arm in PEER_ARMS}  # per round, per step
    tokens: dict[str, list[int]] = {}
    window: dict[str, list[float]] = {arm: [] for arm in PEER_ARMS}  # per round: tokens/s
    split: dict[str, list[dict]] = {arm: [] for arm in PEER_ARMS}  # per round: ms a step by phase
    for round_index in range(rounds + 1):  # round 0 warms up (allocator, kernels, imports)
        # Each round starts with another arm: no arm always runs after the same one.
        shift = round_index % len(PEER_ARMS)
        for arm in PEER_ARMS[shift:] + PEER_ARMS[:shift]:
            # a fresh copy: the same initial weights, and none of hfpipe's module swaps (fast_kernels)
            model = copy.deepcopy(run.model)
            with StepClock(run.task, model) as clock:
                _peer_arm(arm, (run.recipe, clock.task, run.tokenizer, model, run.splits["train"]))
            if len(clock.stamps) != steps or len(clock.tokens) < steps:
                raise RuntimeError(f"{arm}: {len(clock.stamps)} steps timed, {len(clock.tokens)} batches")
            if not round_index:
                continue
            stamps = clock.stamps[warmup_steps - 1 :]
            times[arm].append([b - a for a, b in zip(stamps, stamps[1:], strict=False)])
            step_tokens = clock.tokens[warmup_steps:steps]
            if tokens.setdefault(arm, step_tokens) != step_tokens:
                raise RuntimeError(f"{arm}: the batches changed between rounds")
            window[arm].append(sum(step_tokens) / (stamps[-1] - stamps[0]))
            spent = clock.phases(stamps[0], stamps[-1])
            split[arm].append({k: 1000 * v / (len(stamps) - 1) for k, v in spent.items()})
    if any(tokens[arm] != tokens["hfpipe"] for arm in ("hfpipe-pytorch-ops", "plain", "trainer")):
        raise RuntimeError("plain / trainer did not train hfpipe's batches")
    return {"times": times, "tokens": tokens, "window": window, "split": split}


def _summary(run, what: str, measured: dict) -> dict:
    times, tokens, window, split = (measured[k] for k in ("times", "tokens", "window", "split"))
    speed = {
        arm: sum(tokens[arm]) / sum(statistics.median(step) for step in zip(*times[arm], strict=True))
        for arm in PEER_ARMS
    }
    # ms a step in the model's forward and backward, the optimizer's step and the rest (the loop's own:
    # data, clipping, bookkeeping), medians over the rounds
    phase_ms = {
        arm: {k: round(statistics.median(r[k] for r in split[arm]), 2) for k in split[arm][0]}
        for arm in PEER_ARMS
    }
    return {
        "model": f"{what}: {run.model.num_parameters():,} parameters",
        "batch_size": run.recipe.train.batch_size,
        "ms_per_step": phase_ms,
        "tokens_per_s": {arm: round(v, 1) for arm, v in speed.items()},
        "tokens_per_s_per_round": {arm: [round(v) for v in values] for arm, values in window.items()},
        "hfpipe_over_plain": round(speed["hfpipe"] / speed["plain"], 3),
        "hfpipe_over_trainer_same_batches": round(speed["hfpipe"] / speed["trainer"], 3),
        "hfpipe_over_trainer_grouped": round(speed["hfpipe"] / speed["trainer-grouped"], 3),
        "hfpipe_over_trainer_defaults": round(speed["hfpipe"] / speed["trainer-defaults"], 3),
        "fast_kernels_speedup": round(speed["hfpipe"] / speed["hfpipe-pytorch-ops"], 3),
        "pytorch_ops_over_trainer_same_batches": round(speed["hfpipe-pytorch-ops"] / speed["trainer"], 3),
    }


@benchmark("peers")
def bench_peers(steps: int = 200, rounds: int = 5, warmup_steps: int = 10) -> dict:
    """hfpipe's loop against a plain PyTorch loop and transformers.Trainer on the same model (the same
    initial weights each round), examples, collator, batch size, optimizer settings and schedule.

    Arms: "plain" (a hand-written loop) and "trainer" train exactly hfpipe's batches in hfpipe's order, so
    step i costs the same compute in the three and what differs is the loop; "trainer-grouped" is Trainer
    with its own length-grouped sampler (train_sampling_strategy="group_by_length", what hfpipe does by
    default) and "trainer-defaults" Trainer as people run it, with its default random sampler, on the same
    examples.

    Runs on this machine drift by up to 30% for seconds at a time, so whole-run times of back-to-back runs
    disagree by more than the loops do. Every step is timed instead (optimizer step to optimizer step,
    after `warmup_steps`); each arm's step i takes the median of its rounds (rounds interleave the arms,
    each round in another order), and tokens/s is the steps' tokens over the sum of those medians.
    """
    import torch

    out: dict = {"steps": steps, "rounds": rounds, "warmup_steps": warmup_steps}
    out["torch_threads"] = torch.get_num_threads()
    for name, (recipe_name, extra, what) in PEER_TASKS.items():
        overrides = [*extra, f"train.max_steps={steps}", "train.eval_every=never", "train.save_every=never"]
        overrides += [
            "train.early_stopping_patience=null",
            f"train.log_every={steps}",
            f"output_dir={RUN_DIR}",
        ]
        run = bundled_run(recipe_name, overrides)
        out[name] = _summary(run, what, _rounds(run, steps, rounds, warmup_steps))
        say(name, json.dumps(out[name]))
    return out

"""Causal LM: a small GPT-2 on tinyshakespeare, tokens/s of hfpipe's loop against a plain PyTorch loop, and
validation perplexity after a fixed token budget."""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

from bench.common import SHARED, benchmark, logged, with_steps
from bench.loops import hfpipe_loop, plain_loop

# The small GPT-2: about 4M parameters with a 3,000-token vocabulary.
CAUSAL_LM_CONFIG = {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 128}


def _recipe(workdir: Path, batch_size: int, vocab_size: int, steps: int):
    """A causal-LM recipe on .txt files: the first 90% of the corpus's lines train, the last 10% validate."""
    from hfpipe.recipe.load import validate_dict

    lines = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = round(len(lines) * 0.9)
    (workdir / "train.txt").write_text("".join(lines[:cut]), encoding="utf-8")
    (workdir / "validation.txt").write_text("".join(lines[cut:]), encoding="utf-8")
    return validate_dict(
        {
            "task": "causal-lm",
            "model": {"architecture": "gpt2", "config": dict(CAUSAL_LM_CONFIG)},
            "tokenizer": {"train": {"vocab_size": vocab_size, "lowercase": False}},
            "data": {
                "train": str(workdir / "train.txt"),
                "validation": str(workdir / "validation.txt"),
                "max_length": CAUSAL_LM_CONFIG["n_positions"],
                # prepare_s measures tokenizing and packing, not a read from the tokenized-data cache
                "cache": False,
            },
            "train": {
                "max_steps": steps,
                "batch_size": batch_size,
                "lr": 1.0e-3,
                "scheduler": "cosine",
                "warmup_ratio": 0.05,
                "eval_every": "never",
                "save_every": "never",
                "log_every": 50,
            },
            "output_dir": str(workdir / "run"),
        }
    )


def _assembled(recipe):
    """(PreparedRun, seconds of its phases): hfpipe.assemble's phases in prepare_run's order, each timed."""
    from hfpipe.api import quiet_libraries
    from hfpipe.assemble import PreparedRun, check_model, make_model, prepare_splits, recipe_tokenizer
    from hfpipe.data import load_raw
    from hfpipe.tasks import get_task

    quiet_libraries(False)
    timings = {}
    start = time.perf_counter()
    task = get_task(recipe.task)
    raw = load_raw(recipe)
    head_kwargs = task.configure(raw, recipe)
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = recipe_tokenizer(recipe, task, raw)
    timings["tokenizer_s"] = time.perf_counter() - start
    model = make_model(recipe, task, tokenizer, head_kwargs)
    tokenizer.model_max_length = model.config.max_position_embeddings  # as prepare_run sets it
    check_model(recipe, task, model.config)
    run = PreparedRun(recipe, task, raw, tokenizer, model, head_kwargs)
    start = time.perf_counter()
    run.splits = prepare_splits(run)
    timings["prepare_s"] = time.perf_counter() - start
    return run, timings


def _ratio_rounds(run, short, initial, rounds: int, run_dir: Path, validation_loss) -> tuple[dict, dict]:
    """Both loops from the same initial weights on the same batches, back to back, `rounds` times:
    (runs per loop, validation loss of each loop after the last round)."""
    task, tokenizer, model, train = run.task, run.tokenizer, run.model, run.splits["train"]
    plain_loop(with_steps(short, 3), task, tokenizer, model, train)  # warm-up: allocator, kernels
    runs: dict[str, list[dict]] = {"hfpipe": [], "plain": []}
    after_round: dict[str, float] = {}
    for index in range(rounds):
        for name in ("hfpipe", "plain"):
            model.load_state_dict(initial)
            if name == "hfpipe":
                seconds, _, tokens = hfpipe_loop(short, task, tokenizer, model, train, run_dir)
            else:
                seconds, _, tokens = plain_loop(short, task, tokenizer, model, train)
            runs[name].append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
            if index == rounds - 1:
                # Same init, batches and schedule: both loops should reach about the same loss.
                after_round[name] = validation_loss()
    return runs, after_round


@benchmark("causal_lm")
def bench_causal_lm(
    steps: int = 200, round_steps: int = 16, rounds: int = 5, batch_size: int = 16, vocab_size: int = 3000
) -> dict:
    """GPT-2 pretraining on tinyshakespeare: tokens/s of hfpipe's loop over a plain loop (median ratio of
    alternating rounds on the same model, batches and optimizer settings), then the validation
    perplexity after a fixed token budget (`steps` x batch_size x block_size) of hfpipe's loop."""
    if not (SHARED / "tinyshakespeare" / "input.txt").exists():
        return {"skipped": "no data"}
    import tempfile

    from hfpipe.api import score

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hfpipe-bench-clm-") as tmp:
        workdir = Path(tmp)
        run, timings = _assembled(_recipe(workdir, batch_size, vocab_size, steps))
        recipe, model, validation = run.recipe, run.model, run.splits["validation"]
        initial = copy.deepcopy(model.state_dict())
        run_dir = workdir / "run"

        def validation_metrics() -> tuple[dict, float]:
            start = time.perf_counter()
            metrics = score(model, run.tokenizer, validation, run.task, recipe)  # the task's evaluate
            return metrics, time.perf_counter() - start

        short = with_steps(recipe, round_steps)
        runs, after_round = _ratio_rounds(
            run, short, initial, rounds, run_dir, lambda: validation_metrics()[0]["loss"]
        )
        # The perplexity run: hfpipe's loop for the whole token budget, then the validation split.
        model.load_state_dict(initial)
        train_s, _, tokens_trained = hfpipe_loop(
            recipe, run.task, run.tokenizer, model, run.splits["train"], run_dir
        )
        final_train_loss = logged(run_dir)[-1]["loss"]
        metrics, eval_s = validation_metrics()
    return {
        **_description(run),
        **_ratios(runs, round_steps),
        "validation_loss_after_one_round": {k: round(v, 4) for k, v in after_round.items()},
        "steps": steps,
        "tokens_trained": tokens_trained,
        "epochs": round(tokens_trained / (len(run.splits["train"]) * recipe.data.max_length), 3),
        "lr": recipe.train.lr,
        "scheduler": f"{recipe.train.scheduler}, warmup_ratio {recipe.train.warmup_ratio}",
        "final_train_loss": round(final_train_loss, 4),
        "validation_loss": round(metrics["loss"], 4),
        "validation_perplexity": round(metrics["perplexity"], 2),
        "train_s": round(train_s, 1),
        "train_tokens_per_s": round(tokens_trained / train_s, 1),
        "eval_s": round(eval_s, 1),
        "rounds_s": round(sum(r["seconds"] for rs in runs.values() for r in rs), 1),
        **{k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - began, 1),
    }


def _description(run) -> dict:
    import torch

    model, config = run.model, run.model.config
    return {
        "data": "tinyshakespeare input.txt: first 90% of lines train, last 10% validation; "
        "one line per document, EOS between documents, packed into full blocks",
        "model": f"gpt2 {config.n_layer} layers, n_embd {config.n_embd}, "
        f"{config.n_head} heads, {model.num_parameters():,} parameters",
        "parameters": model.num_parameters(),
        "vocab_size": len(run.tokenizer),
        "block_size": run.recipe.data.max_length,
        "batch_size": run.recipe.train.batch_size,
        "train_blocks": len(run.splits["train"]),
        "validation_blocks": len(run.splits["validation"]),
        "torch_threads": torch.get_num_threads(),
    }


def _ratios(runs: dict, round_steps: int) -> dict:
    ratios = [
        h["tokens_per_s"] / p["tokens_per_s"] for h, p in zip(runs["hfpipe"], runs["plain"], strict=True)
    ]
    return {
        "round_steps": round_steps,
        "runs": runs,
        "hfpipe_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs["hfpipe"]), 1),
        "plain_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs["plain"]), 1),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_hfpipe_over_plain": round(statistics.median(ratios), 3),
        "target_ratio": 0.95,
    }

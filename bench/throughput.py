"""Loop throughput of hfpipe against a plain PyTorch loop on the quickstart BERT, and the padding that
hfpipe's length-grouped batches leave on SST-2.

Throughput is compared as a ratio measured in one process, alternating the two loops (A B A B) on the
same model, batches and optimizer, because runs of the same command on this machine vary by ~15%.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import SHARED, benchmark, loop_inputs, quickstart_run, with_steps
from bench.loops import hfpipe_loop, plain_loop


@benchmark("throughput")
def bench_throughput(steps: int = 250, batch_size: int = 32, rounds: int = 4) -> dict:
    import copy

    import torch

    run = quickstart_run(steps, batch_size)
    recipe, task, tokenizer, model, train = loop_inputs(run)
    initial = copy.deepcopy(model.state_dict())
    run_dir = Path("/tmp/hfpipe-bench-run")
    runs: dict[str, list[dict]] = {"hfpipe": [], "plain": []}
    # Warm-up (allocator, kernels) so neither side pays first-call costs.
    plain_loop(with_steps(recipe, 10), task, tokenizer, model, train)
    for _ in range(rounds):
        for name in ("hfpipe", "plain"):
            model.load_state_dict(initial)
            if name == "hfpipe":
                seconds, examples, tokens = hfpipe_loop(recipe, task, tokenizer, model, train, run_dir)
            else:
                seconds, examples, tokens = plain_loop(recipe, task, tokenizer, model, train)
            runs[name].append(
                {"seconds": seconds, "examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds}
            )
    # Each round runs both loops back to back; the median of the per-round ratios resists the machine's
    # run-to-run noise better than comparing the best (or mean) of each side.
    ratios = [
        h["examples_per_s"] / p["examples_per_s"] for h, p in zip(runs["hfpipe"], runs["plain"], strict=True)
    ]
    median = {name: statistics.median(r["examples_per_s"] for r in rs) for name, rs in runs.items()}
    return {
        "model": f"bert {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
        f"{model.num_parameters():,} parameters",
        "steps": steps,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "hfpipe_examples_per_s": round(median["hfpipe"], 1),
        "plain_examples_per_s": round(median["plain"], 1),
        "hfpipe_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs["hfpipe"]), 1),
        "plain_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs["plain"]), 1),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_hfpipe_over_plain": round(statistics.median(ratios), 3),
        "target_ratio": 0.95,
    }


@benchmark("padding")
def bench_padding(batch_size: int = 32, max_length: int = 128) -> dict:
    """Padding fraction on SST-2 train: hfpipe's length-grouped batches vs padding to max_length."""
    path = SHARED / "sst2" / "train.tsv"
    if not path.exists():
        return {"skipped": f"{path} not found"}
    from hfpipe.recipe.schema import TokenizerTraining
    from hfpipe.tokenization import train_tokenizer
    from hfpipe.training.batching import BatchSampler

    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.rsplit("\t", 1)[0] for line in lines]
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        iter(sentences), TokenizerTraining(algorithm="wordpiece", vocab_size=8000), "bert", max_length
    )
    tokenizer_s = time.perf_counter() - start
    lengths = [min(len(ids), max_length) for ids in tokenizer(sentences)["input_ids"]]
    real = sum(lengths)

    def fraction(batches) -> float:
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - real / padded

    return {
        "examples": len(lengths),
        "batch_size": batch_size,
        "max_length": max_length,
        "mean_tokens": round(real / len(lengths), 2),
        "padding_fraction_hfpipe_grouped": round(
            fraction(BatchSampler(lengths, batch_size, 42, True).batches()), 4
        ),
        "padding_fraction_dynamic_random": round(
            fraction(BatchSampler(lengths, batch_size, 42, False).batches()), 4
        ),
        "padding_fraction_max_length": round(1 - real / (max_length * len(lengths)), 4),
        "tokenizer_training_s": round(tokenizer_s, 2),
    }

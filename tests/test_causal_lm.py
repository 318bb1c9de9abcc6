"""Causal-LM pretraining: packing invariants, exact perplexity, a tiny GPT-2 that learns and reloads."""

from __future__ import annotations

import json
import math

import pytest
from conftest import RECIPES, TINY_GPT2

from hfpipe.api import train
from hfpipe.recipe import load_recipe
from hfpipe.tasks.causal_lm import pack


def test_packing_keeps_every_token_once_in_order():
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
    blocks, dropped = pack(docs, eos_id=0, block_size=4)
    stream = [t for d in docs for t in (*d, 0)]
    assert all(len(b) == 4 for b in blocks)
    assert [t for b in blocks for t in b] + stream[len(stream) - dropped :] == stream
    assert dropped == len(stream) % 4


def test_tiny_gpt2_learns_and_reports_perplexity(clm_run):
    records = [json.loads(line) for line in (clm_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.8, losses
    metrics = json.loads((clm_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert metrics[split]["perplexity"] == pytest.approx(math.exp(metrics[split]["loss"]), rel=1e-6)
    assert metrics["metric_for_best"] == "perplexity"
    assert metrics["train"]["padding_fraction"] == 0  # packed: every block is full
    assert metrics["validation"]["perplexity"] < 300  # vocabulary size: what a uniform guess scores


def test_perplexity_is_over_all_tokens_not_a_mean_of_batches(clm_run):
    """evaluate() equals a direct computation: total next-token loss / number of predicted tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfpipe.api import open_run, score
    from hfpipe.data import load_raw

    recipe, task, model, tokenizer = open_run(clm_run)
    raw = load_raw(recipe)
    prepared = task.prepare(raw, "validation", tokenizer, model.config, recipe)
    ours = score(model, tokenizer, prepared, task, recipe)
    plain = AutoModelForCausalLM.from_pretrained(clm_run).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for block in prepared["input_ids"]:
            ids = torch.tensor([block])
            total += plain(input_ids=ids, labels=ids).loss.item() * (len(block) - 1)
            count += len(block) - 1
    assert ours["loss"] == pytest.approx(total / count, rel=1e-5)
    assert AutoTokenizer.from_pretrained(clm_run).eos_token == "<|endoftext|>"


def test_run_directory_generates_with_transformers_pipeline(clm_run):
    from transformers import pipeline

    out = pipeline("text-generation", model=str(clm_run), device="cpu")(
        "The film", max_new_tokens=5, do_sample=False
    )
    assert out[0]["generated_text"].startswith("The film")


def test_non_text_in_a_corpus_is_a_located_error(tmp_path):
    from hfpipe.errors import DataError

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "once upon a time"}\n{"text": 7}\n')
    recipe = load_recipe(
        RECIPES / "gpt2-clm-pretrain.yaml",
        [*TINY_GPT2, "~data.builtin", f"data.train={corpus}", f"output_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(DataError) as info:
        train(recipe)
    assert info.value.line == 2 and "expected text, got 7" in info.value.message


def test_continued_pretraining_from_a_run_directory(clm_run, tmp_path):
    """Domain adaptation: a causal-LM run (model and tokenizer) is the starting point of another."""
    corpus = tmp_path / "domain.txt"
    corpus.write_text("the ending was superb and the cast was warm\n" * 40 + "\nthe plot was dull\n" * 10)
    recipe = load_recipe(
        RECIPES / "gpt2-clm-pretrain.yaml",
        [
            *TINY_GPT2,
            "~model.architecture",
            "~model.config",
            "~tokenizer.train",
            f"model.name_or_path={clm_run}",
            "~data.builtin",
            f"data.train={corpus}",
            "data.validation_fraction=0.2",
            "data.max_length=16",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    run = train(recipe)
    before = json.loads((clm_run / "config.json").read_text())
    after = json.loads((run / "config.json").read_text())
    assert after["vocab_size"] == before["vocab_size"]  # the run's own tokenizer, not a new one
    assert json.loads((run / "metrics.json").read_text())["validation"]["perplexity"] > 1


def test_trained_tokenizer_knows_the_models_positions(clm_run):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(clm_run).model_max_length == 32  # n_positions of TINY_GPT2


@pytest.mark.parametrize("architecture", ["gpt2", "bart", "t5", "marian"])
def test_trained_byte_level_tokenizer_reloads_identical(architecture, tmp_path):
    """transformers 5's GPT2Tokenizer / RobertaTokenizer rebuild themselves from vocab and merges and drop
    a trained normalizer (lowercasing): hfpipe saves them as generic fast tokenizers, which keep it."""
    from transformers import AutoTokenizer

    from hfpipe.recipe.schema import TokenizerTraining
    from hfpipe.tokenization import train_tokenizer

    texts = ["Der Müller sieht den Hund.", "The Cat sees the dog."] * 50
    spec = TokenizerTraining(algorithm="byte-level-bpe", vocab_size=300, lowercase=True)
    trained = train_tokenizer(texts, spec, architecture, 64)
    trained.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Der Müller SIEHT the CAT"
    assert reloaded(text)["input_ids"] == trained(text)["input_ids"]

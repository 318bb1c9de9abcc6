"""Masked-LM pretraining: masking statistics, fixed evaluation masks, and the pretrain -> fine-tune chain."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, TINY

from hfpipe.api import train
from hfpipe.recipe import load_recipe

TINY_MLM = [
    *[o for o in TINY if not o.startswith(("data.builtin", "~train.early"))],
    "data.builtin.train_size=600",
    "data.builtin.validation_size=100",
    "data.builtin.test_size=0",
    "data.max_length=32",
    "train.save_every=never",
    "train.epochs=3",
]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm") / "run"
    return train(load_recipe(RECIPES / "bert-mlm-pretrain.yaml", [*TINY_MLM, f"output_dir={out}"]))


def test_masking_statistics_and_special_tokens(mlm_run):
    import torch
    from transformers import AutoTokenizer

    from hfpipe.recipe import load_recipe as load
    from hfpipe.tasks.masked_lm import collator

    tokenizer = AutoTokenizer.from_pretrained(mlm_run)
    recipe = load(mlm_run / "recipe.yaml")
    texts = ["the film was not dull but the plot was weak and the cast felt warm"] * 200
    features = [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]
    torch.manual_seed(0)
    batch = collator(tokenizer, recipe)(features)
    original = torch.tensor([f["input_ids"] for f in features])
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    predicted = batch["labels"] != -100
    assert not (predicted & special).any()  # [CLS] / [SEP] are never masked
    rate = predicted.sum().item() / (~special).sum().item()
    assert 0.12 < rate < 0.18, rate
    masked = (batch["input_ids"] == tokenizer.mask_token_id) & predicted
    assert 0.7 < masked.sum().item() / predicted.sum().item() < 0.9  # ~80% become [MASK]
    assert (batch["labels"][predicted] == original[predicted]).all()


def test_evaluation_masks_are_fixed_and_training_learns(mlm_run):
    from hfpipe.api import open_run, score
    from hfpipe.data import load_raw

    recipe, task, model, tokenizer = open_run(mlm_run)
    prepared = task.prepare(load_raw(recipe), "validation", tokenizer, model.config, recipe)
    assert score(model, tokenizer, prepared, task, recipe) == score(model, tokenizer, prepared, task, recipe)
    records = [json.loads(line) for line in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.9, losses  # tiny model, 57 steps


def test_mlm_run_is_a_model_for_classification(mlm_run, tmp_path):
    """The pretrain -> fine-tune chain: the masked-LM run directory is a valid model.name_or_path, and the
    classifier starts from its encoder (at a learning rate of 1e-9, two steps leave every embedding and
    encoder tensor where the masked-LM run left it) with a new head."""
    from safetensors.torch import load_file

    run = train(
        load_recipe(
            RECIPES / "quickstart.yaml",
            [
                *TINY,
                "~model.architecture",
                "~model.config",
                "~tokenizer.train",
                f"model.name_or_path={mlm_run}",
                "train.max_steps=2",
                "train.lr=1e-9",
                f"output_dir={tmp_path / 'clf'}",
            ],
        )
    )
    config = json.loads((run / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert json.loads((run / "metrics.json").read_text())["validation"]["accuracy"] >= 0
    pretrained, classifier = load_file(mlm_run / "model.safetensors"), load_file(run / "model.safetensors")
    encoder = [k for k in pretrained if k.startswith(("bert.embeddings.", "bert.encoder."))]
    assert len(encoder) > 20 and set(encoder) <= set(classifier)
    assert all((classifier[k] - pretrained[k]).abs().max().item() < 1e-6 for k in encoder)
    assert "classifier.weight" in classifier and "classifier.weight" not in pretrained


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(mlm_run):
    import torch

    from hfpipe.api import open_run
    from hfpipe.data import load_raw
    from hfpipe.recipe import load_recipe as load
    from hfpipe.tasks.masked_lm import collator

    recipe = load(mlm_run / "recipe.yaml", ["train.whole_word_mask=true"])
    _, task, model, tokenizer = open_run(mlm_run)
    prepared = task.prepare(load_raw(recipe), "train", tokenizer, model.config, recipe)
    features = [prepared[i] for i in range(len(prepared))]
    words = torch.tensor([f["word_ids"] for f in features])
    ids = torch.tensor([f["input_ids"] for f in features])
    pieces = torch.tensor(
        [[t.startswith("##") for t in tokenizer.convert_ids_to_tokens(row)] for row in ids.tolist()]
    )
    assert pieces.any()  # the corpus has words of several pieces
    assert (words[pieces] >= 0).all() and (words[ids == tokenizer.cls_token_id] == -1).all()
    torch.manual_seed(0)
    predicted = collator(tokenizer, recipe)(features)["labels"] != -100
    for row in range(len(features)):
        for word in words[row].unique().tolist():
            chosen = predicted[row][words[row] == word]
            assert word == -1 and not chosen.any() or chosen.all() or not chosen.any()
    rate = predicted.sum().item() / (words >= 0).sum().item()
    assert 0.12 < rate < 0.19, rate


def test_evaluation_masks_do_not_depend_on_batching(mlm_run):
    from hfpipe.api import open_run
    from hfpipe.data import load_raw
    from hfpipe.tasks.masked_lm import collator

    recipe, task, model, tokenizer = open_run(mlm_run)
    prepared = task.prepare(load_raw(recipe), "validation", tokenizer, model.config, recipe)
    features = [prepared[i] for i in range(8)]
    collate = collator(tokenizer, recipe, train=False)
    together = collate(features)["labels"]
    apart = [collate([f])["labels"][0] for f in reversed(features)][::-1]
    assert all((together[i] == apart[i]).all() for i in range(8))
    assert (collate(features)["labels"] == together).all()  # and again at the next evaluation


def test_chain_without_its_first_run_says_so(cli, tmp_path):
    result = cli(
        "train",
        RECIPES / "bert-sentiment-from-mlm.yaml",
        f"model.name_or_path={tmp_path / 'not-trained-yet'}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert result.exit_code == 2
    assert "model.name_or_path: no such directory" in result.output

"""The tokenized-data cache: a second run reads instead of tokenizing; any change of input misses."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from conftest import RECIPES, TINY_GPT2, write

from hfpipe.cache import prepare_split
from hfpipe.data import load_raw
from hfpipe.recipe import load_recipe
from hfpipe.tasks import get_task
from hfpipe.tokenization import train_tokenizer

CORPUS = "".join(f"line {i} of a small corpus about films and plots\n" for i in range(60))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HFPIPE_CACHE", str(tmp_path / "cache"))
    corpus = write(tmp_path / "corpus.txt", CORPUS)

    def make(*overrides, vocab=300):
        recipe = load_recipe(
            RECIPES / "gpt2-clm-pretrain.yaml",
            [
                *TINY_GPT2,
                "~data.builtin",
                f"data.train={corpus}",
                *overrides,
                f"output_dir={tmp_path / 'run'}",
            ],
        )
        spec = recipe.tokenizer.train.model_copy(update={"vocab_size": vocab})
        tokenizer = train_tokenizer(CORPUS.splitlines(), spec, "gpt2", model_max_length=32)
        return recipe, tokenizer

    return corpus, make


def _prepare(recipe, tokenizer, task):
    from hfpipe.api import data_fingerprint

    return prepare_split(load_raw(recipe), "train", tokenizer, None, recipe, task, data_fingerprint(recipe))


def _refusing(task):
    def boom(*args, **kwargs):
        raise AssertionError("tokenized again: the cache was not used")

    return dataclasses.replace(task, prepare=boom)


def test_second_prepare_reads_the_cache(setup, caplog):
    _, make = setup
    task = get_task("causal-lm")
    recipe, tokenizer = make()
    first = _prepare(recipe, tokenizer, task)
    with caplog.at_level(logging.INFO, logger="hfpipe"):
        second = _prepare(recipe, tokenizer, _refusing(task))
    assert second["input_ids"] == first["input_ids"]
    assert "read from the tokenized-data cache" in caplog.text


def test_changed_tokenizer_settings_or_data_never_reuse_the_cache(setup):
    corpus, make = setup
    task = get_task("causal-lm")
    recipe, tokenizer = make()
    reference = _prepare(recipe, tokenizer, task)["input_ids"]

    other_recipe, other_tokenizer = make(vocab=280)  # another tokenizer
    with pytest.raises(AssertionError, match="tokenized again"):
        _prepare(other_recipe, other_tokenizer, _refusing(task))
    tokenizer.add_tokens(["plots"])  # the same tokenizer, one token added
    with pytest.raises(AssertionError, match="tokenized again"):
        _prepare(recipe, tokenizer, _refusing(task))
    recipe, tokenizer = make()
    shorter, _ = make("data.max_length=16")  # a preprocessing setting
    with pytest.raises(AssertionError, match="tokenized again"):
        _prepare(shorter, tokenizer, _refusing(task))
    corpus.write_text(CORPUS.replace("films", "books"))  # the data's content, same file name
    with pytest.raises(AssertionError, match="tokenized again"):
        _prepare(recipe, tokenizer, _refusing(task))
    corpus.write_text(CORPUS)  # back as it was: the first entry is still good
    assert _prepare(recipe, tokenizer, _refusing(task))["input_ids"] == reference


def test_cache_off_and_damaged_entries(setup, tmp_path):
    _, make = setup
    task = get_task("causal-lm")
    recipe, tokenizer = make("data.cache=false")
    _prepare(recipe, tokenizer, task)
    assert not (tmp_path / "cache").exists()
    recipe, tokenizer = make()
    reference = _prepare(recipe, tokenizer, task)["input_ids"]
    for arrow in (tmp_path / "cache").rglob("*.arrow"):
        arrow.write_bytes(b"garbage")
    assert _prepare(recipe, tokenizer, task)["input_ids"] == reference  # rebuilt, not trusted


def test_text_files_by_line_paragraph_or_file(tmp_path):
    text = write(tmp_path / "book.txt", "first line\nsecond line\n\nnew paragraph\n")
    counts = {}
    for unit in ("line", "paragraph", "file"):
        recipe = load_recipe(
            RECIPES / "gpt2-clm-pretrain.yaml",
            [*TINY_GPT2, "~data.builtin", f"data.train={text}", f"data.text_unit={unit}", "output_dir=x"],
        )
        raw = load_raw(recipe)
        counts[unit] = len(raw.splits["train"])
        if unit == "line":
            where = raw.where("train", raw.splits["train"][3])
            assert where["line"] == 4 and Path(where["file"]).resolve() == text.resolve()
    assert counts == {"line": 4, "paragraph": 2, "file": 1}

"""The tokenized-data cache: a second run reads instead of tokenizing; any change of input misses."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import pytest
from conftest import RECIPES, TASK_RECIPES, TINY_GPT2, task_inputs, write

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
    from hfpipe.assemble import data_fingerprint

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


# ---------------------------------------------------------------------------------------------------
# Every task: what its preparation reads is in the key


# For each setting a task declares its preparation reads (beyond the data section, which is all in the key):
# a recipe override, or a change of the model config, that changes it.
CHANGES = {
    "classification": {
        "config.label2id": {"label2id": {"positive": 0, "negative": 1}},
        "config.problem_type": {"problem_type": "regression"},
        "config.num_labels": {"num_labels": 3},
    },
    "question-answering": {
        "qa.doc_stride": "qa.doc_stride=24",
        "qa.max_question_length": "qa.max_question_length=48",
        "qa.version_2_with_negative": "qa.version_2_with_negative=true",
    },
    "masked-lm": {"train.whole_word_mask": "train.whole_word_mask=true"},
    "causal-lm": {},
    "generation": {},
    "translation": {},
}


def _flat(settings: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in settings.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) and prefix == "" else {prefix + key}
    return out


@pytest.mark.parametrize("name", sorted(TASK_RECIPES))
def test_every_setting_a_task_prepares_with_misses_the_cache(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HFPIPE_CACHE", str(tmp_path / "cache"))
    task = get_task(name)
    recipe, raw, tokenizer, config = task_inputs(name, tmp_path)
    declared = _flat(task.preparation_settings(recipe, config))
    assert declared == set(CHANGES[name]), "every declared setting needs a change in CHANGES"
    prepare_split(raw, "train", tokenizer, config, recipe, task, {})
    prepare_split(raw, "train", tokenizer, config, recipe, _refusing(task), {})  # unchanged: read back
    for setting, change in CHANGES[name].items():
        if isinstance(change, str):
            changed, changed_config = task_inputs(name, tmp_path, change)[0], config
        else:
            changed, changed_config = recipe, transformers_config_with(config, change)
        with _context(setting), pytest.raises(AssertionError, match="tokenized again"):
            prepare_split(raw, "train", tokenizer, changed_config, changed, _refusing(task), {})


@contextlib.contextmanager
def _context(setting: str):
    """Names the setting in the failure of a `pytest.raises` inside."""
    try:
        yield
    except pytest.fail.Exception as exc:
        raise AssertionError(f"changing {setting} read stale prepared data from the cache") from exc


def transformers_config_with(config, values: dict):
    copy = type(config).from_dict(config.to_dict())
    for key, value in values.items():
        setattr(copy, key, value)
    return copy


class _Reads:
    """A recipe or config that records the dotted path of every attribute read through it."""

    def __init__(self, target, path: str, log: set[str]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        path = f"{self._path}.{name}"
        if hasattr(value, "model_fields"):  # a recipe section: follow it down
            return _Reads(value, path, self._log)
        self._log.add(path)
        return value


@pytest.mark.parametrize("name", sorted(TASK_RECIPES))
def test_a_task_declares_every_setting_its_preparation_reads(name, tmp_path):
    """The cache key is only as good as the task's declaration: reads outside the data section must be in it."""
    task = get_task(name)
    recipe, raw, tokenizer, config = task_inputs(name, tmp_path)
    reads: set[str] = set()
    task.prepare(raw, "train", tokenizer, _Reads(config, "config", reads), _Reads(recipe, "recipe", reads))
    read = {r.removeprefix("recipe.") for r in reads if not r.startswith("recipe.data.")}
    declared = _flat(task.preparation_settings(recipe, config))
    assert read <= declared, f"{name} reads {sorted(read - declared)} without declaring them"

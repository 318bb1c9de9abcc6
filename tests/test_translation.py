"""Translation: data layouts, the three families, labels, BLEU / chrF as sacrebleu computes them."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, write

from hfpipe.api import open_run, train, translate_run
from hfpipe.data import load_raw
from hfpipe.errors import DataError, RecipeError
from hfpipe.recipe import load_recipe

TINY_T5 = [
    "model.config.d_model=32",
    "model.config.d_ff=64",
    "model.config.d_kv=16",
    "model.config.num_heads=2",
    "model.config.num_layers=1",
    "model.config.num_decoder_layers=1",
    "tokenizer.train.vocab_size=500",
    "data.max_length=80",
    "data.max_target_length=64",
    "data.builtin.train_size=800",
    "data.builtin.validation_size=40",
    "data.builtin.test_size=40",
    "generation.num_beams=2",
    "generation.max_new_tokens=24",
    "train.epochs=4",
    "train.batch_size=16",
    "train.lr=5e-3",
    "train.log_every=5",
    "train.save_every=never",
]
TINY_BART_LIKE = [
    "model.config.d_model=32",
    "model.config.encoder_layers=1",
    "model.config.decoder_layers=1",
    "model.config.encoder_attention_heads=2",
    "model.config.decoder_attention_heads=2",
    "model.config.encoder_ffn_dim=64",
    "model.config.decoder_ffn_dim=64",
    "model.config.max_position_embeddings=96",
    *TINY_T5[6:],
]


def t5_recipe(tmp_path, *overrides, out="run"):
    return load_recipe(
        RECIPES / "t5-translation.yaml", [*TINY_T5, *overrides, f"output_dir={tmp_path / out}"]
    )


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    return train(t5_recipe(tmp_path_factory.mktemp("t5")))


def test_t5_learns_and_scores_with_sacrebleu(t5_run):
    import sacrebleu

    records = [json.loads(line) for line in (t5_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.7, losses
    metrics = json.loads((t5_run / "metrics.json").read_text())
    assert metrics["metric_for_best"] == "bleu"
    assert (
        "tok:13a" in metrics["metric_signatures"]["bleu"] and "nc:6" in metrics["metric_signatures"]["chrf"]
    )
    # The test metrics are sacrebleu's corpus scores of what `hfpipe translate` outputs for the test split.
    recipe, *_ = open_run(t5_run)
    test = load_raw(recipe).splits["test"]
    _, out = translate_run(t5_run, list(test["en"]), batch_size=7)
    hypotheses = [o["translation"] for o in out]
    assert metrics["test"]["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [list(test["zt"])]).score
    )
    assert metrics["test"]["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(hypotheses, [list(test["zt"])]).score
    )
    assert metrics["test"]["chrf"] > 8  # learnt something of the target language (untrained: ~2)


def test_labels_and_decoder_start_per_family(t5_run, tmp_path):
    from hfpipe.tasks.translation import collator

    recipe, task, model, tokenizer = open_run(t5_run)
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id  # T5 starts from <pad>
    ids = tokenizer("The cat sees the dog.")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id  # T5 inputs end in </s>
    batch = collator(tokenizer, recipe)(
        [{"input_ids": [5, 6, 1], "labels": [7, 1]}, {"input_ids": [5, 1], "labels": [8, 9, 1]}]
    )
    assert batch["labels"].tolist() == [[7, 1, -100], [8, 9, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    for family, start in (("bart", "eos_token_id"), ("marian", "pad_token_id")):
        run = train(
            load_recipe(
                RECIPES / f"{family}-translation.yaml",
                [
                    *TINY_BART_LIKE,
                    "train.max_steps=3",
                    "generation.eval_samples=4",
                    f"output_dir={tmp_path / family}",
                ],
            )
        )
        _, _, model, tokenizer = open_run(run)
        assert model.config.decoder_start_token_id == getattr(tokenizer, start), family
        assert translate_run(run, ["The cat sees the dog."])[1][0]["translation"] is not None


def test_prepared_pairs_put_the_prefix_on_the_source(t5_run):
    recipe, task, model, tokenizer = open_run(t5_run)
    raw = load_raw(recipe)
    prepared = task.prepare(raw, "validation", tokenizer, model.config, recipe)
    row = raw.splits["validation"][0]
    assert tokenizer.decode(prepared[0]["input_ids"], skip_special_tokens=True) == (
        "translate English to Zeta: " + row["en"]
    )
    assert tokenizer.decode(prepared[0]["labels"], skip_special_tokens=True) == row["zt"]
    # BLEU scores the references as written: cut labels do not cut the reference
    short = recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_target_length": 4})})
    cut = task.prepare(raw, "validation", tokenizer, model.config, short)
    assert len(cut[0]["labels"]) == 4 and cut[0]["reference"] == row["zt"]


def test_batched_translation_equals_one_at_a_time_and_plain_transformers_agrees(t5_run):
    """transformers 5 removed pipeline("translation"); the run directory is a plain seq2seq model whose
    config carries the source prefix, and plain AutoModel + generate gives hfpipe's output."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    sources = ["The cat sees the dog.", "The old kings followed a quiet brave fox yesterday.", "A bird."]
    _, batched = translate_run(t5_run, sources, batch_size=3)
    single = [translate_run(t5_run, [s], batch_size=1)[1][0] for s in sources]
    assert batched == single
    tokenizer = AutoTokenizer.from_pretrained(t5_run)
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_run).eval()
    prefix = model.config.task_specific_params["translation_en_to_zt"]["prefix"]
    assert prefix == "translate English to Zeta: "
    ids = model.generate(
        **tokenizer(prefix + sources[1], return_tensors="pt"), num_beams=2, max_new_tokens=24
    )
    assert tokenizer.decode(ids[0], skip_special_tokens=True).strip() == batched[1]["translation"]


def test_data_layouts_wmt_columns_and_parallel_files(tmp_path):
    pairs = [("a red cat", "na mir"), ("the dog\twith a tab", "lo dor\tta")]
    wmt = write(
        tmp_path / "wmt.jsonl",
        "".join(json.dumps({"translation": {"en": e, "zt": z}}) + "\n" for e, z in pairs),
    )
    cols = write(tmp_path / "cols.csv", "en,zt\n" + "".join(f'"{e}","{z}"\n' for e, z in pairs))
    write(tmp_path / "train.en", "".join(e + "\n" for e, _ in pairs))
    write(tmp_path / "train.zt", "".join(z + "\n" for _, z in pairs))
    from hfpipe.tasks.translation import _pairs

    for overrides in (
        [f"data.train={wmt}"],
        [f"data.train={cols}"],
        [f"data.train={tmp_path / 'train'}", "data.format=parallel"],
    ):
        recipe = t5_recipe(tmp_path, "~data.builtin", *overrides)
        sources, targets = _pairs(load_raw(recipe), "train", recipe)
        assert list(zip(sources, targets, strict=True)) == pairs, overrides


def test_data_errors(tmp_path):
    write(tmp_path / "bad.en", "one\ntwo\nthree\n")
    write(tmp_path / "bad.zt", "un\ndeux\n")
    recipe = t5_recipe(tmp_path, "~data.builtin", f"data.train={tmp_path / 'bad'}", "data.format=parallel")
    with pytest.raises(DataError) as info:
        train(recipe)
    assert (
        "misaligned" in info.value.message
        and "3 lines" in info.value.message
        and "2 in" in info.value.message
    )
    assert "bad.en" in str(info.value) and "bad.zt" in str(info.value)
    write(tmp_path / "gap.en", "one\ntwo\nthree\n")
    write(tmp_path / "gap.zt", "un\n\ntrois\n")
    with pytest.raises(DataError) as info:
        train(t5_recipe(tmp_path, "~data.builtin", f"data.train={tmp_path / 'gap'}", "data.format=parallel"))
    assert info.value.file.endswith("gap.zt") and info.value.line == 2, str(info.value)
    assert "'two'" in info.value.message  # names its pair
    empty = write(
        tmp_path / "e.jsonl",
        json.dumps({"en": "a cat", "zt": "na mir"}) + "\n" + json.dumps({"en": "x", "zt": ""}) + "\n",
    )
    with pytest.raises(DataError) as info:
        train(t5_recipe(tmp_path, "~data.builtin", f"data.train={empty}"))
    assert info.value.line == 2 and "'zt'" in info.value.message
    with pytest.raises(RecipeError, match="source_lang"):
        t5_recipe(tmp_path, "~data.target_lang")


def test_translate_cli(t5_run, tiny_run, cli, tmp_path):
    # test.en-style name, a byte-order mark, a blank line and a tab: one output per line, in order
    sources = tmp_path / "test.en"
    sources.write_bytes("\ufeffThe cat sees the dog.\n\nA bird\twith a tab.\n".encode())
    out = tmp_path / "out.jsonl"
    result = cli("translate", t5_run, "--file", sources, "--output", out, "--num-beams", "1")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["en"] for x in lines] == ["The cat sees the dog.", "", "A bird\twith a tab."]
    assert lines[1]["translation"] == "" and all(lines[i]["translation"].strip() for i in (0, 2))
    assert lines[0] == json.loads(
        cli("translate", t5_run, "--text", "The cat sees the dog.", "--num-beams", "1").output.splitlines()[
            -1
        ]
    )
    assert cli("translate", tiny_run, "--text", "hello").exit_code == 2
    assert cli("translate", t5_run).exit_code == 2


def test_pretrained_t5_without_a_prefix_warns(t5_run, tmp_path, caplog):
    import logging

    recipe = t5_recipe(
        tmp_path,
        "~model.architecture",
        "~model.config",
        "~tokenizer.train",
        f"model.name_or_path={t5_run}",
        "~data.source_prefix",
        "train.max_steps=1",
        "generation.eval_samples=2",
    )
    with caplog.at_level(logging.WARNING, logger="hfpipe"):
        train(recipe)
    assert caplog.text.count("T5 expects one") == 1  # once, not once per split


def test_predict_on_a_translation_run(t5_run, cli):
    result = cli("predict", t5_run, "--text", "The cat sees the dog.")
    assert result.exit_code == 0, result.output
    assert "translation" in json.loads(result.output.strip().splitlines()[-1])


def test_loss_only_evaluation_and_impossible_lengths(tmp_path):
    with pytest.raises(RecipeError, match="eval_samples is 0"):
        train(t5_recipe(tmp_path, "generation.eval_samples=0", "train.metric_for_best=bleu"))
    run = train(t5_recipe(tmp_path, "generation.eval_samples=0", "train.max_steps=2", out="loss-only"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metric_for_best"] == "loss" and "bleu" not in metrics["validation"]
    marian = load_recipe(
        RECIPES / "marian-translation.yaml",
        [*TINY_BART_LIKE, "generation.max_new_tokens=200", f"output_dir={tmp_path / 'm'}"],
    )
    with pytest.raises(RecipeError, match="generation.max_new_tokens"):
        train(marian)

"""Extractive QA: SQuAD layouts, windows and offsets, post-processing across windows, official metrics."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, write

from hfpipe.api import answer_run, evaluate_run, open_run, train
from hfpipe.data import load_raw
from hfpipe.errors import DataError, RecipeError
from hfpipe.metrics import normalize_answer, squad_f1, squad_metrics
from hfpipe.recipe import load_recipe

TINY_QA = [
    "model.config.hidden_size=32",
    "model.config.num_hidden_layers=1",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "tokenizer.train.vocab_size=400",
    "data.builtin.train_size=300",
    "data.builtin.validation_size=30",
    "data.builtin.test_size=30",
    "data.max_length=64",
    "qa.doc_stride=8",
    "qa.max_question_length=24",
    "train.epochs=1",
    "train.batch_size=16",
    "train.lr=1e-3",
    "train.log_every=5",
]


def qa_recipe(tmp_path, *overrides, out="run"):
    return load_recipe(RECIPES / "bert-qa.yaml", [*TINY_QA, *overrides, f"output_dir={tmp_path / out}"])


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    return train(qa_recipe(tmp_path_factory.mktemp("qa")))


def squad_file(tmp_path, qas, context, name="squad.json"):
    doc = {
        "version": "1.1",
        "data": [{"title": "T", "extra": 1, "paragraphs": [{"context": context, "qas": qas, "note": "x"}]}],
    }
    return write(tmp_path / name, json.dumps(doc))


# ---------------------------------------------------------------------------------------------------
# Metrics: the official definitions


def test_normalization_and_f1_follow_the_official_scripts():
    assert normalize_answer("The  Cat, (an) apple!") == "cat apple"
    assert normalize_answer("A theory") == "theory"  # article as a word, not inside a word
    assert normalize_answer("  Élan  ") == "élan"
    assert squad_f1("the big cat", "a cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # 1 of 2 / 1 of 1 tokens
    assert squad_f1("dog", "cat") == 0.0
    assert squad_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts, not sets
    # v2: an unanswerable question (gold "") scores 1 only for an empty prediction
    assert squad_f1("", "", version_2=True) == 1.0 and squad_f1("cat", "", version_2=True) == 0.0
    golds = {"q1": ["Talvik", "in Talvik"], "q2": ["1874"], "q3": []}
    preds = {"q1": "talvik.", "q2": "in 1874", "q3": ""}
    v2 = squad_metrics(preds, golds, version_2=True)
    # q1 exact (max over golds), q2 F1 2/3 not exact, q3 right to abstain
    assert v2["exact_match"] == pytest.approx(100 * 2 / 3)
    assert v2["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert v2["has_answer_exact_match"] == 50.0 and v2["no_answer_exact_match"] == 100.0
    assert v2["has_answer_total"] == 2 and v2["no_answer_total"] == 1
    v1 = squad_metrics({"q1": "Talvik", "q2": "1874"}, {"q1": ["Talvik"], "q2": ["1875"]})
    assert v1 == {"exact_match": 50.0, "f1": 50.0}


# ---------------------------------------------------------------------------------------------------
# Data and windows


def test_squad_json_and_flat_layouts_load_alike(tmp_path):
    context = "Mira was born in Talvik. She worked as a baker."
    qas = [
        {
            "id": "a",
            "question": "Where was Mira born?",
            "answers": [{"text": "Talvik", "answer_start": 17}],
            "x": 2,
        },
        {"id": "b", "question": "What was Mira?", "answers": [{"text": "baker", "answer_start": 41}]},
    ]
    path = squad_file(tmp_path, qas, context)
    flat = write(
        tmp_path / "flat.jsonl",
        "".join(
            json.dumps(
                {
                    "id": q["id"],
                    "question": q["question"],
                    "context": context,
                    "answers": {
                        "text": [a["text"] for a in q["answers"]],
                        "answer_start": [a["answer_start"] for a in q["answers"]],
                    },
                }
            )
            + "\n"
            for q in qas
        ),
    )
    renamed = write(
        tmp_path / "renamed.jsonl",
        "".join(
            json.dumps({"qid": r["id"], "q": r["question"], "passage": r["context"], "ans": r["answers"]})
            + "\n"
            for r in map(json.loads, flat.read_text().splitlines())
        ),
    )
    from hfpipe.tasks.question_answering import examples

    seen = []
    mapping = [
        "data.columns.question=q",
        "data.columns.context=passage",
        "data.columns.answers=ans",
        "data.columns.id=qid",
    ]
    for data, extra in ((path, []), (flat, []), (renamed, mapping)):
        recipe = qa_recipe(tmp_path, "~data.builtin", f"data.train={data}", *extra)
        seen.append(examples(load_raw(recipe), "train", recipe))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][0]["answers"] == [("Talvik", 17)]


def test_bad_answer_start_and_unanswerable_without_v2_are_data_errors(tmp_path):
    context = "Mira was born in Talvik."
    bad = squad_file(
        tmp_path,
        [{"id": "q-7", "question": "Where?", "answers": [{"text": "Talvik", "answer_start": 3}]}],
        context,
    )
    with pytest.raises(DataError) as info:
        train(qa_recipe(tmp_path, "~data.builtin", f"data.train={bad}"))
    assert "'q-7'" in info.value.message and "answer_start 3" in info.value.message
    assert "squad.json" in info.value.file
    none = squad_file(tmp_path, [{"id": "q-8", "question": "Who?", "answers": []}], context, "none.json")
    with pytest.raises(DataError, match="'q-8'.*version_2_with_negative"):
        train(qa_recipe(tmp_path, "~data.builtin", f"data.train={none}", out="none"))
    twice = [{"id": "q-9", "question": "Where?", "answers": [{"text": "Talvik", "answer_start": 17}]}] * 2
    with pytest.raises(DataError, match="'q-9' appears twice"):
        train(
            qa_recipe(
                tmp_path,
                "~data.builtin",
                f"data.train={squad_file(tmp_path, twice, context, 'twice.json')}",
                out="twice",
            )
        )
    with pytest.raises(RecipeError) as info:
        qa_recipe(tmp_path, "qa.doc_stride=40")
    assert info.value.key == "qa.doc_stride" and "64" in info.value.message


def _prepared(tmp_path, context, question, answer, *overrides):
    start = context.index(answer)
    rows = write(
        tmp_path / "one.jsonl",
        json.dumps(
            {
                "id": "x",
                "question": question,
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
        + "\n",
    )
    recipe = qa_recipe(tmp_path, "~data.builtin", f"data.train={rows}", *overrides)
    raw = load_raw(recipe)
    from hfpipe.tasks.question_answering import prepare
    from hfpipe.tokenization import train_tokenizer

    tokenizer = train_tokenizer([context, question] * 3, recipe.tokenizer.train, "bert", 128)
    return prepare(raw, "train", tokenizer, None, recipe), tokenizer


def test_answer_only_in_the_second_window_is_found_through_the_stride(tmp_path):
    filler = " ".join(f"word{i}" for i in range(60))
    context = f"{filler} The treasure lies under Oakhill bridge. {filler}"
    prepared, tokenizer = _prepared(tmp_path, context, "Where is the treasure?", "Oakhill bridge")
    assert len(prepared) > 2  # the context needs several windows
    found = [i for i in range(len(prepared)) if prepared[i]["start_positions"] != 0]
    assert found and found[0] > 0, "the first window does not hold the answer"
    for i in range(len(prepared)):
        f = prepared[i]
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0  # windows without the answer point at [CLS]
            continue
        s, e = f["start_positions"], f["end_positions"]
        assert context[f["offset_start"][s] : f["offset_end"][e]] == "Oakhill bridge"
    # windows overlap by doc_stride tokens: the end of one is the start of the next
    first, second = prepared[0]["offset_start"], prepared[1]["offset_start"]
    shared = [x for x in first if x >= 0][-8:]
    assert shared == [x for x in second if x >= 0][:8]


def test_answer_at_the_very_end_of_the_context(tmp_path):
    context = "Many families moved there. The harbour was busy. Its keeper was Tobble"
    prepared, _ = _prepared(tmp_path, context, "Who kept the harbour?", "Tobble")
    last = prepared[len(prepared) - 1]
    s, e = last["start_positions"], last["end_positions"]
    assert s != 0 and context[last["offset_start"][s] : last["offset_end"][e]] == "Tobble"


def test_unanswerable_windows_point_at_cls(tmp_path):
    recipe = qa_recipe(tmp_path, "data.builtin.name=qa_v2", "qa.version_2_with_negative=true")
    raw = load_raw(recipe)
    from hfpipe.tasks.question_answering import prepare
    from hfpipe.tokenization import train_tokenizer

    tokenizer = train_tokenizer(
        list(raw.splits["train"]["context"][:50]) + list(raw.splits["train"]["question"][:50]),
        recipe.tokenizer.train,
        "bert",
        128,
    )
    prepared = prepare(raw, "validation", tokenizer, None, recipe)
    ids = {e: [] for e in prepared["id"]}
    for qid, s, e in zip(prepared["id"], prepared["start_positions"], prepared["end_positions"], strict=True):
        ids[qid].append((s, e))
    unanswerable = [r["id"] for r in raw.splits["validation"] if not r["answers"]["text"]]
    assert unanswerable
    for qid in unanswerable:
        assert set(ids[qid]) == {(0, 0)}


# ---------------------------------------------------------------------------------------------------
# Post-processing


def test_best_span_is_picked_across_windows_and_v2_null_threshold():
    from hfpipe.tasks.question_answering import best_answers

    recipe = load_recipe(RECIPES / "bert-qa.yaml", ["output_dir=x"])
    context = "alpha beta gamma delta"
    # two windows: [CLS] alpha beta | [CLS] beta gamma delta ; offsets -1 on [CLS]
    w1 = ([0.0, 1.0, 2.0], [0.0, 0.5, 2.5], [-1, 0, 6], [-1, 5, 10])
    w2 = ([0.0, 0.1, 3.0, 0.2], [0.0, 0.1, 0.2, 3.5], [-1, 6, 11, 17], [-1, 10, 16, 22])
    preds, nbest = best_answers({"q": [w1, w2]}, {"q": context}, recipe)
    assert preds["q"] == "gamma delta"  # 3.0 + 3.5 in the second window beats 2.0 + 2.5 in the first
    assert nbest["q"][0]["text"] == "gamma delta" and nbest["q"][0]["start"] == 11
    assert sum(c["probability"] for c in nbest["q"]) == pytest.approx(1.0)
    # end before start and spans longer than max_answer_length are never candidates
    assert all(c["end"] > c["start"] for c in nbest["q"])
    short = recipe.model_copy(update={"qa": recipe.qa.model_copy(update={"max_answer_length": 1})})
    assert best_answers({"q": [w1, w2]}, {"q": context}, short)[0]["q"] in ("gamma", "delta", "beta")
    # v2: the null score is the lowest [CLS] score over windows; answer nothing if it wins by > threshold
    v2 = recipe.model_copy(update={"qa": recipe.qa.model_copy(update={"version_2_with_negative": True})})
    loud = ([9.0, 1.0, 2.0], [9.0, 0.5, 2.5], [-1, 0, 6], [-1, 5, 10])
    loud2 = ([8.0, 0.1, 3.0, 0.2], [8.0, 0.1, 0.2, 3.5], [-1, 6, 11, 17], [-1, 10, 16, 22])
    assert best_answers({"q": [loud, loud2]}, {"q": context}, v2)[0]["q"] == ""  # null 16 vs span 6.5
    lenient = v2.model_copy(update={"qa": v2.qa.model_copy(update={"null_score_diff_threshold": 10.0})})
    assert best_answers({"q": [loud, loud2]}, {"q": context}, lenient)[0]["q"] == "gamma delta"


# ---------------------------------------------------------------------------------------------------
# Training, saving, answering


def test_trains_scores_and_writes_predictions(qa_run, tmp_path):
    metrics = json.loads((qa_run / "metrics.json").read_text())
    assert metrics["metric_for_best"] == "f1"
    for split in ("validation", "test"):
        assert {"loss", "exact_match", "f1"} <= set(metrics[split])
    preds = json.loads((qa_run / "test_predictions.json").read_text())
    nbest = json.loads((qa_run / "test_nbest_predictions.json").read_text())
    recipe, *_ = open_run(qa_run)
    test = load_raw(recipe).splits["test"]
    assert set(preds) == set(test["id"]) == set(nbest)
    golds = {r["id"]: r["answers"]["text"] for r in test}
    # the recorded metrics are the official ones of the written predictions
    assert squad_metrics(preds, golds)["f1"] == pytest.approx(metrics["test"]["f1"])
    again = evaluate_run(qa_run, split="test", predictions_dir=tmp_path / "p")
    assert again["f1"] == pytest.approx(metrics["test"]["f1"])
    assert json.loads((tmp_path / "p" / "predictions.json").read_text()) == preds


def test_answer_cli_and_plain_transformers_agree(qa_run, cli, tmp_path):
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    context = "Ada Holm was born in Talvik. Ada Holm worked as a baker for many years."
    question = "Where was Ada Holm born?"
    result = cli("answer", qa_run, "--question", question, "--context", context)
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    assert got["answer"] == context[got["start"] : got["end"]]
    # Without hfpipe: the run directory loads with the Auto classes; the best valid span of one window
    # (start <= end, both in the context, at most max_answer_length tokens) is the same answer.
    tokenizer = AutoTokenizer.from_pretrained(qa_run)
    model = AutoModelForQuestionAnswering.from_pretrained(qa_run).eval()
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    seq = enc.sequence_ids(0)
    with torch.no_grad():
        out = model(**enc)
    s_logits, e_logits = out.start_logits[0].tolist(), out.end_logits[0].tolist()
    best = max(
        (s_logits[s] + e_logits[e], s, e)
        for s in range(len(seq))
        for e in range(s, min(len(seq), s + 12))
        if seq[s] == 1 and seq[e] == 1
    )
    assert got["answer"] == context[offsets[best[1]][0] : offsets[best[2]][1]]
    rows = write(tmp_path / "q.jsonl", json.dumps({"question": question, "context": context}) + "\n")
    _, batch = answer_run(qa_run, file=rows)
    assert batch[0]["answer"] == got["answer"]
    assert (
        cli(
            "answer",
            qa_run,
            "--question",
            "a",
            "--question",
            "b",
            "--context",
            "x",
            "--context",
            "y",
            "--context",
            "z",
        ).exit_code
        == 3
    )
    assert cli("predict", qa_run, "--text", "hello").exit_code == 2

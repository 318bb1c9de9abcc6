"""Evaluation and prediction run in eval mode (no dropout) whoever calls them, and hand the model back in the
mode each of its modules was in: training goes on after an evaluation, a frozen part stays frozen."""

from __future__ import annotations

import json

import pytest
from conftest import TASK_RECIPES, task_inputs, write

# A row of each task's predict input
ROWS = {
    "classification": {"text": "The cast was not dull."},
    "question-answering": {"question": "Where was Ada born?", "context": "Ada Corvin was born in Quillon."},
    "masked-lm": {"text": "The cast was [MASK] dull."},
    "causal-lm": {"text": "The cast was not dull."},
    "generation": {"_prompt": "Review: The cast was not dull.\nVerdict:"},
    "translation": {"_source": "The old kings followed a quiet fox."},
}


def _model(name, tmp_path):
    import torch

    from hfpipe.models import build_model
    from hfpipe.tasks import get_task

    recipe, raw, tokenizer, _ = task_inputs(name, tmp_path)
    task = get_task(name)
    model = build_model(recipe, task, tokenizer, task.configure(raw, recipe))
    for module in model.modules():  # dropout strong enough that a prediction in train mode would show it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    return recipe, task, tokenizer, model


@pytest.mark.parametrize("name", sorted(TASK_RECIPES))
def test_predict_runs_in_eval_mode_and_restores_every_module_s_mode(name, tmp_path):
    recipe, task, tokenizer, model = _model(name, tmp_path)
    model.eval()
    expected = task.predict(model, tokenizer, [ROWS[name]] * 3, recipe)
    model.train()
    import torch

    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
    frozen.eval()  # one part in eval mode, the rest (dropout included) training
    for _ in range(2):
        assert task.predict(model, tokenizer, [ROWS[name]] * 3, recipe) == expected
    assert not frozen.training and all(m.training for m in model.modules() if m is not frozen)


def test_an_unlabelled_test_split_is_predicted_without_dropout(tmp_path):
    """The predictions written after training equal `hfpipe predict` on the finished run."""
    from conftest import tiny_recipe

    from hfpipe.api import predict_run, train

    train_file = write(tmp_path / "train.tsv", "text\tlabel\n" + "a good film\t1\na dull film\t0\n" * 8)
    test_file = write(
        tmp_path / "test.tsv", "text\tlabel\n" + "".join(f"a good film {i}\t-1\n" for i in range(6))
    )
    run = train(
        tiny_recipe(
            tmp_path,
            "~data.builtin",
            f"data.train={train_file}",
            f"data.test={test_file}",
            "train.max_steps=2",
            "model.config.hidden_dropout_prob=0.5",
        )
    )
    written = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    _, again = predict_run(run, texts=[r["text"] for r in written])
    assert [r["score"] for r in written] == pytest.approx([r["score"] for r in again], abs=1e-6)

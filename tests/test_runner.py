"""The shared loop: batching, determinism, accumulation, best model, early stopping, checkpoints."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, TINY

from hfpipe.api import train
from hfpipe.errors import RecipeError
from hfpipe.recipe import load_recipe
from hfpipe.training.batching import BatchSampler, eval_batches


def _run(tmp_path, *overrides, name="run", **train_options):
    recipe = load_recipe(
        RECIPES / "quickstart.yaml",
        [
            *TINY,
            "data.builtin.train_size=256",
            "data.builtin.validation_size=64",
            "data.builtin.test_size=0",
            *overrides,
            f"output_dir={tmp_path / name}",
        ],
    )
    run = train(recipe, **train_options)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return run, json.loads((run / "metrics.json").read_text()), records


def test_sampler_covers_every_example_once_per_epoch_and_is_deterministic():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    sampler = BatchSampler(lengths, 16, seed=3, group_by_length=True)
    first = sampler.batches()
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert len(first) == len(sampler) == 63
    assert BatchSampler(lengths, 16, seed=3, group_by_length=True).batches() == first
    sampler.set_epoch(1)
    assert sampler.batches() != first


def test_length_grouping_cuts_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(4000)]

    def padding(batches):
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / padded

    grouped = padding(BatchSampler(lengths, 32, 0, True).batches())
    shuffled = padding(BatchSampler(lengths, 32, 0, False).batches())
    assert grouped < 0.05 < 0.3 < shuffled
    assert padding(eval_batches(lengths, 64)) < 0.02


def test_same_seed_same_metrics(tmp_path):
    _, a, _ = _run(tmp_path, "train.max_steps=12", name="a")
    _, b, _ = _run(tmp_path, "train.max_steps=12", name="b")
    assert a["validation"] == b["validation"]
    _, c, _ = _run(tmp_path, "train.max_steps=12", "train.seed=7", name="c")
    assert c["validation"] != a["validation"]


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    _, metrics, records = _run(
        tmp_path,
        "train.batch_size=8",
        "train.gradient_accumulation_steps=4",
        "train.epochs=1",
        "train.log_every=1",
        "train.scheduler=linear",
    )
    assert metrics["train"]["steps"] == 8  # 256 examples / (8 x 4)
    lrs = [r["lr"] for r in records if r["type"] == "train"]
    assert len(lrs) == 8 and lrs[-1] == 0.0  # linear decay reaches 0 exactly at the last step


def test_constant_schedule_with_warmup(tmp_path):
    _, _, records = _run(
        tmp_path,
        "train.max_steps=8",
        "train.scheduler=constant",
        "train.warmup_steps=4",
        "train.log_every=1",
        "train.lr=1e-3",
    )
    lrs = [r["lr"] for r in records if r["type"] == "train"]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3]) and lrs[4:] == pytest.approx([1e-3] * 4)


def test_eval_every_n_steps_and_early_stopping(tmp_path):
    _, metrics, records = _run(
        tmp_path,
        "train.max_steps=40",
        "train.eval_every=2",
        "train.lr=1e-9",
        "train.metric_for_best=loss",
        "train.early_stopping_patience=2",
        "train.early_stopping_threshold=1.0",
    )
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]  # best at 2, then two evaluations without improvement
    assert metrics["train"]["steps"] == 6 and metrics["best_step"] == 2
    assert metrics["metric_for_best"] == "loss"


def test_checkpoints_are_complete_and_pruned(tmp_path):
    run, _, _ = _run(tmp_path, "train.max_steps=10", "train.save_every=3", "train.save_total_limit=2")
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert steps == ["step-0000009", "step-0000010"]  # every 3 steps, plus the final one; newest 2 kept
    for name in steps:
        state = json.loads((run / "checkpoints" / name / "trainer_state.json").read_text())
        assert state["step"] == int(name.split("-")[1])
        assert (run / "checkpoints" / name / "model.safetensors").exists()
        assert (run / "checkpoints" / name / "optimizer.bin").exists()
    assert not list(run.rglob(".tmp-*")) and not list(run.rglob(".old-*"))


def test_unknown_metric_for_best(tmp_path):
    with pytest.raises(RecipeError, match="does not compute 'bleu'") as info:
        _run(tmp_path, "train.max_steps=2", "train.metric_for_best=bleu")
    assert info.value.key == "train.metric_for_best"
    assert not (tmp_path / "run").exists()  # rejected before the output directory is made
    _, metrics, _ = _run(tmp_path, "train.max_steps=2", "train.metric_for_best=eval_mcc", name="hf_style")
    assert metrics["metric_for_best"] == "mcc"


def test_no_validation_keeps_the_last_model(tmp_path):
    _, metrics, records = _run(tmp_path, "train.max_steps=4", "data.builtin.validation_size=0")
    assert metrics["best_step"] is None and not [r for r in records if r["type"] == "eval"]


def test_tokenizer_training_is_deterministic_and_wordpiece():
    from hfpipe.builtin_data import sentiment
    from hfpipe.recipe.schema import TokenizerTraining
    from hfpipe.tokenization import train_tokenizer

    texts = [r["text"] for r in sentiment(300, 0, 0, 0)["train"]]
    spec = TokenizerTraining(algorithm="wordpiece", vocab_size=300)
    first = train_tokenizer(iter(texts), spec, "bert", 64)
    assert all(
        train_tokenizer(iter(texts), spec, "bert", 64).get_vocab() == first.get_vocab() for _ in range(3)
    )
    assert first.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    enc = first("The film was dull.", "Zebra!")
    tokens = first.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and "[UNK]" not in tokens
    assert any(t.startswith("##") for t in tokens)  # continuation pieces exist
    assert first.decode(enc["input_ids"], skip_special_tokens=True) == "the film was dull. zebra!"


def test_prepared_loader_follows_the_epoch_it_is_given():
    """Accelerate re-seeds samplers per iteration; setting the epoch on the prepared loader must win."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    lengths = list(range(1, 41))
    data = [{"i": torch.tensor(i)} for i in range(40)]
    sampler = BatchSampler(lengths, 4, seed=0, group_by_length=True)
    loader = Accelerator().prepare(DataLoader(data, batch_sampler=sampler))
    loader.set_epoch(3)
    seen = [batch["i"].tolist() for batch in loader]
    sampler.set_epoch(3)
    assert seen == sampler.batches()


def test_accumulation_equals_a_bigger_batch_even_for_the_last_partial_group(tmp_path):
    """4 x 8 accumulated == 32 at once (no dropout, same example order); 40 examples leave a last group
    of one batch of 8, which must count as a mean, not a quarter of one."""
    from safetensors.torch import load_file

    common = [
        "data.builtin.train_size=40",
        "data.builtin.validation_size=0",
        "data.builtin.test_size=0",
        "train.group_by_length=false",
        "train.epochs=1",
        "train.warmup_ratio=0",
        "train.max_grad_norm=null",
        "model.config.hidden_dropout_prob=0",
        "model.config.attention_probs_dropout_prob=0",
        "model.config.classifier_dropout=0",
        "train.save_every=never",
    ]
    big, _, _ = _run(tmp_path, *common, "train.batch_size=32", name="big")
    small, _, _ = _run(
        tmp_path, *common, "train.batch_size=8", "train.gradient_accumulation_steps=4", name="small"
    )
    a, b = load_file(big / "model.safetensors"), load_file(small / "model.safetensors")
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-5, name


@pytest.mark.parametrize("recipe", ["gpt2-generation.yaml", "t5-translation.yaml"])
def test_lm_accumulation_averages_over_the_step_s_tokens(tmp_path, recipe):
    """A causal LM (shifted labels) and an encoder-decoder whose batches hold different numbers of target
    tokens: 6 accumulated batches of 4 give the weights of one batch of 24 (100 examples: a last step of
    4) only if the loss is averaged over all of the step's tokens, not per batch. Measured: 8e-7 (GPT-2)
    and 1e-7 (T5) apart; averaging per batch instead: 4e-3 and 2e-5."""
    from conftest import TINY_GPT2
    from safetensors.torch import load_file
    from test_translation import TINY_T5

    from hfpipe.api import train

    shrink = TINY_GPT2 if recipe.startswith("gpt2") else TINY_T5
    common = [
        *shrink,
        "data.builtin.train_size=100",
        "data.builtin.validation_size=0",
        "data.builtin.test_size=0",
        "train.epochs=1",
        "train.warmup_ratio=0",
        "train.max_grad_norm=null",
        "train.group_by_length=false",
        "train.lr=1e-3",  # Adam's steps are ~lr whatever the gradient: small, so float noise stays small
        "model.config.dropout_rate=0" if "t5" in recipe else "model.config.resid_pdrop=0",
        "train.save_every=never",
    ]
    if "gpt2" in recipe:
        common += ["model.config.embd_pdrop=0", "model.config.attn_pdrop=0"]
    runs = []
    for name, batch in (
        ("big", ["train.batch_size=24"]),
        ("small", ["train.batch_size=4", "train.gradient_accumulation_steps=6"]),
    ):
        recipe_obj = load_recipe(RECIPES / recipe, [*common, *batch, f"output_dir={tmp_path / name}"])
        runs.append(load_file(train(recipe_obj) / "model.safetensors"))
    big, small = runs
    worst = max((big[k] - small[k]).abs().max().item() for k in big)
    assert worst < 1e-5


def test_inverse_sqrt_schedule_decays_from_the_end_of_warmup(tmp_path):
    _, _, records = _run(
        tmp_path,
        "train.max_steps=16",
        "train.scheduler=inverse_sqrt",
        "train.warmup_steps=4",
        "train.log_every=1",
        "train.lr=1e-3",
    )
    lrs = [r["lr"] for r in records if r["type"] == "train"]
    # logged after each step: step s has lr x s/4 in warmup, then lr x sqrt(4 / s)
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:] == pytest.approx([1e-3 * (4 / s) ** 0.5 for s in range(5, 17)])


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
    """smoothed_loss at 0 equals each head's own loss (so the shift and the -100s are right); at eps it is
    (1 - eps) x NLL + eps x the mean of -log p over the classes, per labelled token."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    from hfpipe.training.step import smoothed_loss

    torch.manual_seed(0)
    ids = torch.randint(3, 50, (3, 7))
    token_labels = ids.clone()
    token_labels[0, 4:] = -100
    cases = [
        (GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)), token_labels, True),
        (
            T5ForConditionalGeneration(
                T5Config(
                    vocab_size=50,
                    d_model=16,
                    d_ff=32,
                    d_kv=8,
                    num_heads=2,
                    num_layers=1,
                    decoder_start_token_id=0,
                )
            ),
            token_labels,
            False,
        ),
        (
            BertForSequenceClassification(
                BertConfig(
                    vocab_size=50,
                    hidden_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=32,
                    num_labels=3,
                )
            ),
            torch.tensor([0, 2, 1]),
            False,
        ),
    ]
    eps = 0.1
    for model, labels, shift in cases:
        model.eval()
        out = model(input_ids=ids, labels=labels)
        assert smoothed_loss(out, labels, 0.0, shift).item() == pytest.approx(out.loss.item(), abs=1e-5)
        logits, target = (out.logits[:, :-1], labels[:, 1:]) if shift else (out.logits, labels)
        logp = torch.log_softmax(logits.reshape(-1, logits.size(-1)), -1)
        target = target.reshape(-1)
        keep = target != -100
        nll = -logp[keep].gather(1, target[keep, None]).mean()
        uniform = -logp[keep].mean()
        expected = (1 - eps) * nll + eps * uniform
        assert smoothed_loss(out, labels, eps, shift).item() == pytest.approx(expected.item(), abs=1e-5)


def test_label_smoothing_trains_and_is_refused_for_regression(tmp_path):
    run, metrics, records = _run(
        tmp_path, "train.max_steps=6", "train.label_smoothing=0.1", "train.log_every=1"
    )
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert len(losses) == 6 and all(loss > 0 for loss in losses)
    scores = tmp_path / "scores.csv"
    scores.write_text("text,score\n" + "".join(f"row {i},{i / 10}\n" for i in range(20)))
    with pytest.raises(RecipeError, match="regression") as err:
        _run(
            tmp_path,
            "~data.builtin",
            f"data.train={scores}",
            "data.columns.label=score",
            "train.label_smoothing=0.1",
            name="reg",
        )
    assert err.value.key == "train.label_smoothing"
    assert not (tmp_path / "reg").exists()  # refused before anything was written


def test_training_time_leaves_out_evaluation_and_checkpoints(tmp_path, monkeypatch):
    """train_s in the log and metrics.json counts training only: an evaluation that takes (simulated) 100 s
    shows in runtime_s, not in train_s."""
    import time

    from hfpipe.tasks import get_task
    from hfpipe.training.state import Clock

    offset = {"s": 0.0}
    clock = Clock(now=lambda: time.perf_counter() + offset["s"])  # the run's clock, injected

    task = get_task("classification")
    evaluate = task.evaluate

    def slow(*args, **kwargs):
        offset["s"] += 100.0  # the clock jumps while evaluating
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(type(task), "evaluate", property(lambda self: slow), raising=False)
    _, metrics, records = _run(
        tmp_path, "train.max_steps=8", "train.eval_every=4", "train.log_every=2", clock=clock
    )
    train_s = [r["train_s"] for r in records if r["type"] == "train"]
    assert train_s == sorted(train_s) and train_s[-1] < 50  # two evaluations: +200 s of clock
    assert metrics["train"]["runtime_s"] >= 200 > metrics["train"]["train_s"] >= train_s[-1] - 0.01


def test_optimizer_is_fused_adamw_without_decay_on_biases_and_norms():
    """PyTorch's fused AdamW (one kernel for every tensor) on CPU; the usual weight-decay split."""
    import torch

    from hfpipe.training.step import make_optimizer as _optimizer

    recipe = load_recipe(RECIPES / "quickstart.yaml", ["train.weight_decay=0.01"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = _optimizer(model, recipe.train)
    assert optimizer.defaults["fused"] is True
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [(4, 4)] and decay["weight_decay"] == 0.01
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    before = model[0].weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)


def test_a_tie_in_metric_for_best_goes_to_the_lower_validation_loss(tmp_path, monkeypatch):
    """Accuracy equal at every evaluation (as BLEU 0.0 early in a run): the best model is the evaluation
    with the lowest loss, not the first; a tie with a higher loss does not move it."""
    from hfpipe.tasks import get_task

    task = get_task("classification")
    losses = iter([0.9, 0.5, 0.7, 0.5])  # steps 4, 8, 12, 16

    def flat(*args, **kwargs):
        return {"loss": next(losses), "accuracy": 0.5, "f1": 0.5, "mcc": 0.0}

    monkeypatch.setattr(type(task), "evaluate", property(lambda self: flat), raising=False)
    _, metrics, records = _run(tmp_path, "train.max_steps=16", "train.eval_every=4", "~train.epochs")
    assert [r["step"] for r in records if r["type"] == "eval"] == [4, 8, 12, 16]
    assert metrics["best_step"] == 8 and metrics["validation"]["loss"] == 0.5

"""GPT-style fine-tuning (task: generation) and `hfpipe generate`: label masking, learning, batching, seeds."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, write

from hfpipe.api import generate_run, train
from hfpipe.errors import DataError, RecipeError
from hfpipe.recipe import load_recipe

TINY_GEN = [
    "model.config.n_embd=32",
    "model.config.n_layer=2",
    "model.config.n_head=2",
    "model.config.n_positions=48",
    "tokenizer.train.vocab_size=300",
    "data.max_length=48",
    "data.builtin.train_size=800",
    "data.builtin.validation_size=48",
    "data.builtin.test_size=32",
    "generation.max_new_tokens=8",
    "generation.eval_samples=32",
    "train.epochs=3",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.log_every=5",
    "train.save_every=never",
]


def gen_recipe(tmp_path, *overrides, out="run"):
    return load_recipe(
        RECIPES / "gpt2-generation.yaml", [*TINY_GEN, *overrides, f"output_dir={tmp_path / out}"]
    )


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory):
    return train(gen_recipe(tmp_path_factory.mktemp("gen")))


def test_prompt_tokens_are_masked_and_eos_ends_the_completion(gen_run):
    from hfpipe.api import open_run
    from hfpipe.data import load_raw

    recipe, task, model, tokenizer = open_run(gen_run)
    raw = load_raw(recipe)
    prepared = task.prepare(raw, "validation", tokenizer, model.config, recipe)
    row = raw.splits["validation"][0]
    prompt = f"Review: {row['text']}\nVerdict:"
    completion = f" {row['label']} ({row['aspect']})"
    ids, labels = prepared[0]["input_ids"], prepared[0]["labels"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt  # no loss on the prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # every completion token is a label
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[n_prompt:-1]) == completion
    assert tokenizer.pad_token_id is not None  # GPT-2 has no pad of its own: EOS pads


def test_long_prompts_lose_their_start_not_the_completion(tmp_path):
    from hfpipe.data import load_raw
    from hfpipe.tasks import get_task
    from hfpipe.tokenization import train_tokenizer

    data = write(
        tmp_path / "sft.jsonl",
        json.dumps({"prompt": "word " * 200 + "Answer:", "completion": " yes"})
        + "\n"
        + json.dumps({"prompt": "Q:", "completion": " no"})
        + "\n",
    )
    recipe = gen_recipe(
        tmp_path, "~data.builtin", "~data.template", f"data.train={data}", "data.max_length=16"
    )
    raw = load_raw(recipe)
    tokenizer = train_tokenizer(
        ["word answer yes no q"] * 10, recipe.tokenizer.train, "gpt2", model_max_length=48
    )
    task = get_task("generation")
    prepared = task.prepare(raw, "train", tokenizer, None, recipe)
    long, short = prepared[0], prepared[1]
    assert len(long["input_ids"]) == 16
    assert tokenizer.decode(long["input_ids"]).endswith("Answer: yes<|endoftext|>")
    assert long["labels"].count(-100) == 16 - len(tokenizer(" yes")["input_ids"]) - 1
    n = len(tokenizer("Q:")["input_ids"])
    assert short["labels"][:n] == [-100] * n and -100 not in short["labels"][n:]


def test_collator_pads_right_with_masked_labels(gen_run):
    from hfpipe.api import open_run
    from hfpipe.tasks.generation import collator

    recipe, _, _, tokenizer = open_run(gen_run)
    batch = collator(tokenizer, recipe)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, tokenizer.pad_token_id, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_generation_run_learns_and_scores_generated_completions(gen_run):
    import math

    records = [json.loads(line) for line in (gen_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5, losses
    metrics = json.loads((gen_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        m = metrics[split]
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-6)
        assert 0 <= m["exact_match"] <= 1 and 0 <= m["chrf"] <= 100
    assert metrics["validation"]["generated"] == 32  # generation.eval_samples
    assert metrics["test"]["generated"] == 32
    assert metrics["validation"]["chrf"] > 30  # the completions' format is learnt


def test_batched_left_padded_generation_equals_one_at_a_time(gen_run):
    prompts = [
        "Review: The cast was not dull.\nVerdict:",
        "Review: What a stale comedy!\nVerdict:",
        "Review: Although the plot was weak, the score felt truly wonderful.\nVerdict:",
    ]
    _, batched = generate_run(gen_run, prompts, batch_size=3)
    single = [generate_run(gen_run, [p], batch_size=1)[1][0] for p in prompts]
    assert batched == single
    assert len(batched) == 3 and all("completion" in c for c in batched)


def test_sampling_is_deterministic_with_a_seed(gen_run):
    prompts = ["Review: The film was", "Review:"] * 2
    settings = {"do_sample": True, "temperature": 1.5, "max_new_tokens": 8}
    a = generate_run(gen_run, prompts, settings=settings, seed=1)[1]
    b = generate_run(gen_run, prompts, settings=settings, seed=1)[1]
    c = generate_run(gen_run, prompts, settings=settings, seed=2)[1]
    assert a == b
    assert a != c


def test_pipeline_loads_the_run_and_agrees_with_hfpipe(gen_run):
    from transformers import pipeline

    prompt = "Review: The ending was superb.\nVerdict:"
    ours = generate_run(gen_run, [prompt])[1][0]["completion"]
    theirs = pipeline("text-generation", model=str(gen_run), device="cpu")(
        prompt, max_new_tokens=8, do_sample=False, return_full_text=False
    )
    assert theirs[0]["generated_text"] == ours


def test_generate_cli(gen_run, cli, tmp_path):
    prompts = write(
        tmp_path / "prompts.txt", "Review: The cast was superb.\nVerdict:\n\nReview: What a bore\n"
    )
    out = tmp_path / "out.jsonl"
    result = cli("generate", gen_run, "--file", prompts, "--output", out, "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    # one output line per input line: the blank line stays blank
    assert [x["prompt"] for x in lines] == [
        "Review: The cast was superb.",
        "Verdict:",
        "",
        "Review: What a bore",
    ]
    assert lines[2]["completion"] == "" and all(isinstance(x["completion"], str) for x in lines)
    rows = write(tmp_path / "rows.jsonl", json.dumps({"text": "The plot was dull."}) + "\n")
    result = cli("generate", gen_run, "--file", rows)  # rendered with the run's template
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["text"] == "The plot was dull."
    assert cli("generate", gen_run).exit_code == 2  # neither --prompt nor --file
    assert cli("generate", gen_run, "-p", "x", "--top-p", "0").exit_code == 2  # not in (0, 1]


def test_generate_refuses_a_classifier(tiny_run, cli):
    result = cli("generate", tiny_run, "-p", "hello")
    assert result.exit_code == 2
    assert "does not generate text" in result.output


def test_clm_run_is_a_model_for_generation(clm_run, tmp_path):
    """Pretrain -> fine-tune: a causal-LM run directory (model and tokenizer) starts a generation run."""
    run = train(
        gen_recipe(
            tmp_path,
            "~model.architecture",
            "~model.config",
            "~tokenizer.train",
            f"model.name_or_path={clm_run}",
            "data.max_length=32",
            "train.max_steps=6",
        )
    )
    assert json.loads((run / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert "exact_match" in json.loads((run / "metrics.json").read_text())["validation"]


def test_generation_data_errors(tmp_path):
    bad_template = gen_recipe(tmp_path, "data.template.prompt='Review: {txt}'")
    with pytest.raises(DataError) as info:
        train(bad_template)
    assert "'txt' not found" in info.value.message and "data.template" in info.value.message
    data = write(
        tmp_path / "sft.jsonl",
        json.dumps({"prompt": "a", "completion": " b"})
        + "\n"
        + json.dumps({"prompt": "c", "completion": " "})
        + "\n",
    )
    recipe = gen_recipe(tmp_path, "~data.builtin", "~data.template", f"data.train={data}")
    with pytest.raises(DataError) as info:
        train(recipe)
    assert info.value.line == 2 and "empty completion" in info.value.message
    with pytest.raises(RecipeError) as info:
        gen_recipe(tmp_path, "data.template.completion=' {label'")
    assert "data.template.completion" in str(info.value)


def test_evaluate_a_generation_run_on_a_file(gen_run, tmp_path):
    from hfpipe.api import evaluate_run

    rows = [
        {"text": "The cast was superb.", "label": "positive", "aspect": "the cast"},
        {"text": "What a dull film!", "label": "negative", "aspect": "the film"},
    ]
    data = write(tmp_path / "eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    metrics = evaluate_run(gen_run, str(data))
    assert metrics["generated"] == 2 and {"loss", "exact_match", "chrf"} <= set(metrics)
    prompts_only = write(tmp_path / "prompts.jsonl", json.dumps({"text": "The cast was superb."}) + "\n")
    with pytest.raises(DataError, match="no completions to score against"):
        evaluate_run(gen_run, str(prompts_only))

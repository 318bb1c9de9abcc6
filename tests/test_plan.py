"""`hfpipe plan`: the numbers it prints are the ones training would meet, and it writes nothing."""

from __future__ import annotations

import json
import math

import numpy as np
from conftest import RECIPES, TINY, TINY_GPT2

from hfpipe.recipe import load_recipe
from hfpipe.training.batching import BatchSampler

SMALL = [*TINY, "data.builtin.train_size=500", "data.builtin.validation_size=64", "data.builtin.test_size=64"]


def plan_json(cli, recipe, *overrides):
    result = cli("plan", RECIPES / recipe, *overrides, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_classification_plan_matches_the_data_the_batches_and_the_run(cli, tmp_path, tiny_run):
    out = tmp_path / "never-written"
    plan = plan_json(cli, "quickstart.yaml", *SMALL, "data.max_length=12", f"output_dir={out}")
    assert not out.exists()  # plan touches no output directory

    from hfpipe.assemble import recipe_tokenizer
    from hfpipe.data import load_raw
    from hfpipe.tasks import get_task

    recipe = load_recipe(RECIPES / "quickstart.yaml", [*SMALL, "data.max_length=12", f"output_dir={out}"])
    task = get_task("classification")
    raw = load_raw(recipe)
    tokenizer = recipe_tokenizer(recipe, task, raw)
    lengths = [len(x) for x in tokenizer(list(raw.splits["train"]["text"]))["input_ids"]]
    train = plan["splits"]["train"]
    assert train["examples"] == 500 and train["features"] == 500
    assert train["truncated"] == sum(n > 12 for n in lengths) > 0
    assert train["tokens"]["max"] == max(lengths)
    assert train["tokens"]["p50"] == int(np.percentile(lengths, 50, method="higher"))

    batching = plan["batching"]
    assert batching["global_batch"] == 16 and batching["steps_per_epoch"] == math.ceil(500 / 16)
    assert batching["total_steps"] == 3 * math.ceil(500 / 16)
    capped = [min(n, 12) for n in lengths]
    assert batching["padding_fraction"] == round(BatchSampler(capped, 16, 42, True).padding_fraction(), 4)
    assert batching["padding_fraction"] < batching["padding_fraction_without_grouping"]

    trained = json.loads((tiny_run / "metrics.json").read_text())["parameters"]["total"]
    assert plan["model"]["parameters"] == trained  # counted on the meta device, same model as TINY's run
    assert plan["timing"]["steps_timed"] == 5 and plan["timing"]["step_s"] > 0
    assert plan["estimate_s"]["total"] >= plan["estimate_s"]["training"] > 0


def test_global_batch_for_several_processes_and_no_timing(cli):
    plan = plan_json(
        cli, "quickstart.yaml", *SMALL, "train.global_batch_size=64", "--num-processes", "2", "--no-timing"
    )
    assert plan["batching"]["accumulation"] == 2 and plan["batching"]["global_batch"] == 64
    assert plan["batching"]["steps_per_epoch"] == math.ceil(500 / 64)
    assert "timing" not in plan and "estimate_s" not in plan
    assert plan["evaluations"] == 3  # at each epoch's end, as the runner evaluates
    assert (
        plan_json(cli, "quickstart.yaml", *SMALL, "train.eval_every=never", "--no-timing")["evaluations"] == 0
    )
    assert (
        plan_json(cli, "quickstart.yaml", *SMALL, "train.eval_every=10", "--no-timing")["evaluations"] == 10
    )


def test_packing_and_qa_windows(cli):
    plan = plan_json(cli, "gpt2-clm-pretrain.yaml", *TINY_GPT2, "--no-timing")
    packing = plan["splits"]["train"]["packing"]
    assert packing["blocks"] == plan["splits"]["train"]["features"] == packing["tokens"] // 32
    assert 0.95 < packing["efficiency"] <= 1

    from test_question_answering import TINY_QA

    plan = plan_json(cli, "bert-qa.yaml", *TINY_QA, "data.max_length=40", "--no-timing")
    train = plan["splits"]["train"]
    assert train["windows"] == train["features"] > train["examples"] == 300
    assert train["longer_than_a_window"] > 0 and train["answers_lost"] >= 0


def test_text_output_and_refusals(cli):
    result = cli("plan", RECIPES / "quickstart.yaml", *SMALL, "--no-timing", "--recipe")
    assert result.exit_code == 0
    for fragment in ("Resolved recipe:", "parameters", "tokens p50 / p90 / p99 / max", "padding", "steps"):
        assert fragment in result.stdout
    assert cli("plan", RECIPES / "fewshot-gpt2-sentiment.yaml").exit_code == 2
    assert cli("plan", RECIPES / "quickstart.yaml", "train.lrr=1").exit_code == 2

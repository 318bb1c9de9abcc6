"""The run directory's README.md is a Hugging Face model card the Hub reads: metadata (license,
languages, datasets, base model, tags, model-index with every metric), the recipe, the command, the
package versions; and `hfpipe push --dry-run` lists what an upload would send."""

from __future__ import annotations

import json

import torch
import yaml
from conftest import RECIPES
from huggingface_hub import ModelCard

from hfpipe import io
from hfpipe.recipe import load_recipe
from hfpipe.tasks import get_task


def test_the_trained_run_s_card_reads_back_with_its_metrics(tiny_run):
    card = ModelCard.load(tiny_run / "README.md")
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert {"hfpipe", "classification"} <= set(card.data.tags)
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for split in ("validation", "test"):
        for name, value in metrics[split].items():
            assert results[(split, name)] == value
    assert {r.dataset_type for r in card.data.eval_results} == {"hfpipe/sentiment"}
    body = card.text
    recipe_block = body.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe_block) == yaml.safe_load((tiny_run / "recipe.yaml").read_text())
    assert "```bash\nhfpipe train" in body or "```bash\n" in body
    assert f"| torch | {torch.__version__.split('+')[0]}" in body.replace("+cpu", "")
    assert metrics["versions"]["transformers"] in body


def test_card_metadata_from_the_recipe():
    recipe = load_recipe(
        RECIPES / "quickstart.yaml",
        [
            "name=my-sentiment",
            "tags=[demo, reviews]",
            "card.license=apache-2.0",
            "card.language=[en]",
            "card.datasets=[stanfordnlp/sst2]",
        ],
    )
    metrics = {"validation": {"accuracy": 0.9, "loss": 0.3}, "test": {"accuracy": 0.8}, "train": {"steps": 3}}
    text = io.model_card(recipe, get_task("classification"), metrics, "hfpipe train x.yaml")
    data = yaml.safe_load(text.split("---\n")[1])
    assert data["license"] == "apache-2.0" and data["language"] == ["en"]
    assert data["datasets"] == ["stanfordnlp/sst2"]
    assert data["tags"] == ["hfpipe", "classification", "demo", "reviews"]
    index = data["model-index"][0]
    assert index["name"] == "my-sentiment"
    test = next(r for r in index["results"] if r["dataset"]["split"] == "test")
    assert test["metrics"] == [{"type": "accuracy", "value": 0.8, "name": "test accuracy"}]
    assert "# my-sentiment" in text and "hfpipe train x.yaml" in text

    hub = load_recipe(RECIPES / "minilm-sentiment-lora.yaml", ["model.name_or_path=org/some-bert"])
    data = yaml.safe_load(io.model_card(hub, get_task("classification"), metrics, "c").split("---\n")[1])
    assert data["base_model"] == "org/some-bert" and data["library_name"] == "peft" and "lora" in data["tags"]


def test_push_dry_run_lists_the_model_not_the_checkpoints(cli, tiny_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for extra in ("checkpoints/step-000010/optimizer.bin", "mlruns/0/meta.yaml", "tensorboard/events.out"):
        (run / extra).parent.mkdir(parents=True, exist_ok=True)
        (run / extra).write_text("x")
    result = cli("push", run, "me/model", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "README.md" in result.output and "model.safetensors" in result.output
    assert "checkpoints/" not in result.output and ".hfpipe-run" not in result.output
    assert "mlruns" not in result.output and "tensorboard/events.out" in result.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("push", tiny_run, "me/model")
    assert result.exit_code == 2 and "needs the network" in result.output
    assert cli("push", tmp_path, "me/model", "--dry-run").exit_code == 2

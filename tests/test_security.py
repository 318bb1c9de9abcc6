"""Recipes are data; weights are safetensors; secrets stay out of the run directory; risky paths are refused."""

from __future__ import annotations

import os

import pytest
from conftest import RECIPES, TINY

SECRET = "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123"


def test_yaml_tags_cannot_build_python_objects(cli, tmp_path):
    recipe = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    recipe.write_text(f'task: !!python/object/apply:os.system ["touch {marker}"]\n')
    result = cli("validate", recipe)
    assert result.exit_code == 2 and "invalid YAML" in result.output
    assert not marker.exists()


def test_pickle_weights_need_an_explicit_opt_in(tiny_run, tmp_path, cli):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pickled = tmp_path / "pickled"  # what older tools wrote: config + pytorch_model.bin
    model = AutoModelForSequenceClassification.from_pretrained(tiny_run)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(tiny_run).save_pretrained(pickled)
    assert list(pickled.glob("*.bin")) and not list(pickled.glob("*.safetensors"))
    common = [
        *TINY,
        "~model.architecture",
        "~model.config",
        "~tokenizer.train",
        f"model.name_or_path={pickled}",
        "train.max_steps=1",
    ]
    result = cli("train", RECIPES / "quickstart.yaml", *common, f"output_dir={tmp_path / 'a'}")
    assert (
        result.exit_code == 2
        and "only pickle weights" in result.output
        and "allow_pickle_weights" in result.output
    )
    result = cli(
        "train",
        RECIPES / "quickstart.yaml",
        *common,
        "model.allow_pickle_weights=true",
        f"output_dir={tmp_path / 'b'}",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "model.safetensors").exists() and not list((tmp_path / "b").glob("*.bin"))


def test_secrets_never_reach_the_run_directory(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", SECRET + "2")
    out = tmp_path / "run"
    result = cli(
        "train",
        RECIPES / "quickstart.yaml",
        *TINY,
        "train.max_steps=2",
        "train.save_every=1",
        f"output_dir={out}",
    )
    assert result.exit_code == 0
    assert SECRET not in result.output
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("target", ["/", "~", "."])
def test_dangerous_output_dirs_are_refused(cli, target, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    value = os.path.expanduser(target) if target == "~" else (str(ROOT) if target == "." else target)
    result = cli("train", RECIPES / "quickstart.yaml", *TINY, f"output_dir={value}", "--overwrite")
    assert result.exit_code == 2 and "refusing to use" in result.output

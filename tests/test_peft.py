"""PEFT on every head: adapters train, leave the base alone, reload, merge, and every command reads them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES, TINY, TINY_GPT2
from test_generation import TINY_GEN
from test_masked_lm import TINY_MLM
from test_question_answering import TINY_QA
from test_translation import TINY_T5

from hfpipe.adapters import max_output_difference, probe_inputs
from hfpipe.api import (
    answer_run,
    evaluate_run,
    generate_run,
    merge_run,
    open_run,
    predict_run,
    train,
    translate_run,
)
from hfpipe.errors import RecipeError, RunError
from hfpipe.recipe import load_recipe
from hfpipe.training import Callback

# A bundled recipe turned into an adapter recipe: the base model (and its tokenizer) replace the
# architecture built from config.
ON_BASE = ["~model.architecture", "~model.config", "~tokenizer"]


def adapter_recipe(recipe_file, tiny, base, tmp_path, *overrides, out="lora"):
    return load_recipe(
        RECIPES / recipe_file,
        [
            *tiny,
            *ON_BASE,
            f"model.name_or_path={base}",
            "peft.r=4",
            "train.save_every=never",
            *overrides,
            f"output_dir={tmp_path / out}",
        ],
    )


def prefix_recipe(base, tmp_path, virtual_tokens: int, *overrides, out="lora"):
    """The GPT-2 generation recipe as a prefix-tuning adapter on `base`."""
    return adapter_recipe(
        "gpt2-generation.yaml",
        TINY_GEN,
        base,
        tmp_path,
        "~peft.r",
        "peft.method=prefix-tuning",
        f"peft.num_virtual_tokens={virtual_tokens}",
        *overrides,
        out=out,
    )


def train_keeping_model(recipe):
    """(run directory, the trained model as training returned it)."""
    kept = {}

    class Keep(Callback):
        def on_train_end(self, loop):
            kept["model"] = loop.final_model

    return train(recipe, callbacks=[Keep()]), kept["model"]


def train_losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"]


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    """A tiny BERT pretrained by masked-LM on review text: the base of the BERT adapters."""
    out = tmp_path_factory.mktemp("bertbase") / "run"
    return train(load_recipe(RECIPES / "bert-mlm-pretrain.yaml", [*TINY_MLM, f"output_dir={out}"]))


@pytest.fixture(scope="module")
def seq2seq_base(tmp_path_factory):
    """A tiny T5 translation run (English -> Zeta), the base of the translation adapter."""
    out = tmp_path_factory.mktemp("t5base") / "run"
    return train(
        load_recipe(RECIPES / "t5-translation.yaml", [*TINY_T5, "train.epochs=2", f"output_dir={out}"])
    )


# Language modelling adapters learn a new domain: the English side of the translation data.
NEW_DOMAIN = ["~data.builtin", "data.builtin.name=translation", "data.columns.text=en"]
CASES = {
    # task: (bundled recipe, shrinking overrides, base fixture, extra overrides)
    # A new task on the text the base classifier knows: the aspect of a review (a new, larger head).
    "classification": (
        "quickstart.yaml",
        TINY,
        "tiny_run",
        ["data.columns.label=aspect", "train.epochs=2", "train.lr=1e-2"],
    ),
    "question-answering": (
        "bert-qa.yaml",
        TINY_QA,
        "bert_base",
        ["qa.max_question_length=40", "data.max_length=96", "train.epochs=3", "train.lr=1e-2"],
    ),
    "masked-lm": (
        "bert-mlm-pretrain.yaml",
        TINY_MLM,
        "bert_base",
        [*NEW_DOMAIN, "data.builtin.train_size=400", "data.builtin.validation_size=40", "train.lr=1e-2"],
    ),
    "causal-lm": (
        "gpt2-clm-pretrain.yaml",
        TINY_GPT2,
        "clm_run",
        [*NEW_DOMAIN, "data.builtin.train_size=400", "data.builtin.validation_size=40", "train.epochs=4"]
        + ["train.lr=2e-2"],
    ),
    "generation": (
        "gpt2-generation.yaml",
        TINY_GEN,
        "clm_run",
        ["data.max_length=32", "generation.max_new_tokens=6", "train.epochs=2", "train.lr=1e-2"],
    ),
    "translation": (
        "t5-translation.yaml",
        TINY_T5,
        "seq2seq_base",
        ["data.builtin.train_size=300", "train.epochs=3", "train.lr=1e-2"],
    ),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_lora_on_every_head(task, request, tmp_path, monkeypatch):
    from hfpipe.tasks import get_task

    recipe_file, tiny, base_fixture, extra = CASES[task]
    base = request.getfixturevalue(base_fixture)
    run, trained = train_keeping_model(adapter_recipe(recipe_file, tiny, base, tmp_path, *extra))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == task

    # It learns: the training loss falls (means of the first and last three logged windows).
    losses = train_losses(run)
    assert sum(losses[-3:]) < sum(losses[:3]), losses

    # Only the adapter (and the head) changed: every base weight equals the checkpoint's.
    inner = trained.get_base_model()
    fresh = get_task(task).auto_class.from_pretrained(base, config=inner.config, ignore_mismatched_sizes=True)
    reference = fresh.state_dict()
    adapted = compared = 0
    for name, param in inner.named_parameters():
        if any(part in name for part in ("lora_", "modules_to_save", "original_module")):
            adapted += "lora_B" in name and bool(param.abs().sum() > 0)  # B starts at 0: it moved
            continue
        plain = name.replace(".base_layer", "")
        if plain in reference:
            compared += 1
            assert torch.equal(param.detach().cpu(), reference[plain]), name
    assert adapted > 0 and compared > 10
    params = metrics["parameters"]
    assert 0 < params["trainable"] < params["total"] / 5

    # The run directory holds the adapter only, names its base, and is much smaller than the model.
    names = {p.name for p in run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "base_model.json"} <= names
    assert not names & {"config.json", "model.safetensors"}
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert json.loads((run / "base_model.json").read_text())["name_or_path"] == str(base)
    adapter_size = (run / "adapter_model.safetensors").stat().st_size
    assert adapter_size < (base / "model.safetensors").stat().st_size / 4

    # The saved adapter reloads to the same outputs as the model that trained.
    _, _, reloaded, tokenizer = open_run(run)
    probe = probe_inputs(reloaded, tokenizer)
    trained.eval()
    with torch.no_grad():
        assert max_output_difference(trained(**probe), reloaded(**probe)) < 1e-6
        before = reloaded(**probe)

    # It loads without hfpipe, as the model card says: the base with the recorded config, then the adapter.
    import transformers
    from peft import PeftModel

    record = json.loads((run / "base_model.json").read_text())
    config = transformers.CONFIG_MAPPING[record["model_type"]].from_dict(record["config"])
    head = getattr(transformers, get_task(task).auto_model)
    card = PeftModel.from_pretrained(
        head.from_pretrained(record["name_or_path"], config=config, ignore_mismatched_sizes=True), run
    ).eval()
    if task == "question-answering":  # PEFT's QA class drops token_type_ids (see hfpipe.adapters)
        card.forward = card.base_model.forward
    with torch.no_grad():
        assert max_output_difference(before, card(**probe)) < 1e-6

    # Merged: a standalone model directory with the same outputs (to 1e-5), loadable by plain transformers.
    merged, difference = merge_run(run, tmp_path / "merged")
    assert difference <= 1e-5
    plain = get_task(task).auto_class.from_pretrained(merged).eval()
    with torch.no_grad():
        assert max_output_difference(before, plain(**probe)) <= 1e-5

    # The task's own command reads the adapter run as it reads the merged model, and so does evaluate.
    command, inputs = COMMANDS[task]
    assert same(command(run, **inputs), command(merged, **inputs))
    scores, merged_scores = evaluate_run(run, split="validation"), evaluate_run(merged, split="validation")
    assert same(scores, merged_scores, 1e-4), (scores, merged_scores)


def same(a, b, tolerance=1e-5) -> bool:
    """Equal structures, floats to `tolerance`."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tolerance
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tolerance) for k in a)
    return a == b


COMMANDS = {
    "classification": (predict_run, {"texts": ["a wonderful film", "the plot was dull"]}),
    "question-answering": (
        answer_run,
        {"questions": ["Where was Ada Holm born?"], "contexts": ["Ada Holm was born in Talvik in 1950."]},
    ),
    "masked-lm": (predict_run, {"texts": ["the cat [MASK] the dog ."]}),
    "causal-lm": (generate_run, {"prompts": ["the old farmer"], "settings": {"max_new_tokens": 5}}),
    "generation": (generate_run, {"prompts": ["the film was"], "settings": {"max_new_tokens": 5}}),
    "translation": (translate_run, {"texts": ["The old farmer sees the red fox."]}),
}


def test_cli_commands_take_adapter_runs(tiny_run, clm_run, cli, tmp_path, monkeypatch):
    """predict / evaluate / generate / merge on adapter runs give what the merged model gives."""
    run = train(adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, "train.epochs=1"))
    merged = tmp_path / "merged"
    result = cli("merge", run, merged)
    assert result.exit_code == 0 and "merged model" in result.output
    texts = ["--text", "a wonderful, moving film", "--text", "dull and far too long"]
    adapter_rows, merged_rows = (
        [json.loads(line) for line in cli("predict", where, *texts).output.splitlines()]
        for where in (run, merged)
    )
    assert [r["label"] for r in adapter_rows] == [r["label"] for r in merged_rows]
    assert all(
        abs(a["score"] - m["score"]) < 1e-5 for a, m in zip(adapter_rows, merged_rows, strict=True)
    )  # merging moves the weights' rounding, not the predictions
    first, second = cli("evaluate", run), cli("evaluate", merged)
    assert first.exit_code == 0 and first.output == second.output
    again = cli("merge", run, merged)
    assert again.exit_code != 0 and "--overwrite" in again.output

    gen = train(
        adapter_recipe("gpt2-generation.yaml", TINY_GEN, clm_run, tmp_path, "data.max_length=32", out="gen")
    )
    cli("merge", gen, tmp_path / "gen-merged")
    prompt = ["--prompt", "the film was", "--max-new-tokens", "5"]
    out = cli("generate", gen, *prompt)
    assert out.exit_code == 0 and out.output == cli("generate", tmp_path / "gen-merged", *prompt).output


def test_ia3_and_prefix_tuning(tiny_run, clm_run, tmp_path, cli):
    ia3 = train(
        adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, "~peft.r", "peft.method=ia3", out="ia3")
    )
    from safetensors.torch import load_file

    config = json.loads((ia3 / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and set(config["target_modules"]) == {"key", "value", "output.dense"}
    assert config["feedforward_modules"] == ["output.dense"]
    scales = {k: v for k, v in load_file(str(ia3 / "adapter_model.safetensors")).items() if "ia3_l" in k}
    assert scales and any((v - 1).abs().max() > 1e-3 for v in scales.values())  # they moved from 1
    _, difference = merge_run(ia3, tmp_path / "ia3-merged")
    assert difference <= 1e-5

    prefix = train(prefix_recipe(clm_run, tmp_path, 4, "data.max_length=24", out="prefix"))
    assert json.loads((prefix / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    out = cli("generate", prefix, "--prompt", "the film was", "--max-new-tokens", "4")
    assert out.exit_code == 0 and "completion" in out.output
    with pytest.raises(RunError, match="cannot be merged"):
        merge_run(prefix, tmp_path / "prefix-merged")


def test_adapter_checkpoints_hold_only_trained_weights_and_resume_exactly(tiny_run, tmp_path):
    from safetensors.torch import load_file

    common = ["train.scheduler=constant", "data.builtin.train_size=256", "train.save_every=epoch"]
    whole = train(
        adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, *common, "train.epochs=2", out="a")
    )
    half = adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, *common, "train.epochs=1", out="b")
    train(half)
    checkpoint = sorted((tmp_path / "b" / "checkpoints").glob("step-*"))[-1]
    keys = set(load_file(str(checkpoint / "model.safetensors")))
    assert keys and all("lora_" in k or "modules_to_save" in k for k in keys), sorted(keys)[:5]
    resumed = train(
        adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, *common, "train.epochs=2", out="b"),
        resume=True,
    )
    a = load_file(str(whole / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_recipe_errors(tiny_run, clm_run, tmp_path, cli):
    with pytest.raises(RecipeError, match="pretrained model") as err:
        load_recipe(RECIPES / "quickstart.yaml", ["peft.method=lora", f"output_dir={tmp_path / 'x'}"])
    assert err.value.key == "peft"
    with pytest.raises(RecipeError, match="r applies to lora, not ia3"):
        adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, "peft.method=ia3")
    bad = adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, "peft.target_modules=[qkv]")
    with pytest.raises(RecipeError, match="no module of this bert model is called 'qkv'.*query") as err:
        train(bad)
    assert err.value.key == "peft.target_modules"
    assert not (tmp_path / "lora").exists()  # rejected before the run directory was made
    prefix = adapter_recipe(
        "quickstart.yaml", TINY, tiny_run, tmp_path, "~peft.r", "peft.method=prefix-tuning"
    )
    with pytest.raises(RecipeError, match="prefix-tuning needs a decoder"):
        train(prefix)
    with pytest.raises(RecipeError, match="give peft.target_modules too"):
        adapter_recipe(
            "quickstart.yaml",
            TINY,
            tiny_run,
            tmp_path,
            "~peft.r",
            "peft.method=ia3",
            "peft.feedforward_modules=[x]",
        )
    with pytest.raises(RecipeError, match="left after the prefix-tuning virtual tokens"):
        train(prefix_recipe(clm_run, tmp_path, 8, "data.max_length=30"))  # 30 + 8 > the base's 32 positions
    result = cli("merge", tiny_run, tmp_path / "m")
    assert result.exit_code != 0 and "not an adapter run" in result.output


def test_a_missing_base_model_is_named(tiny_run, tmp_path, cli):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    run = train(adapter_recipe("quickstart.yaml", TINY, base, tmp_path, "train.epochs=1"))
    shutil.rmtree(base)
    result = cli("predict", run, "--text", "fine")
    assert result.exit_code == 2 and str(base) in result.output and "base model" in result.output


def test_the_best_adapter_is_the_one_kept(tiny_run, tmp_path):
    from safetensors.torch import load_file

    # "Best" = the highest validation loss: an early evaluation, so the final model must be reloaded.
    best = ["train.eval_every=8", "train.metric_for_best=loss", "train.greater_is_better=true"]
    run = train(adapter_recipe("quickstart.yaml", TINY, tiny_run, tmp_path, *best, "train.epochs=1"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_step"] < metrics["train"]["steps"]
    kept = load_file(str(run / "adapter_model.safetensors"))
    saved = load_file(str(run / "checkpoints" / "best" / "adapter_model.safetensors"))
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in kept)
    again = evaluate_run(run, split="validation")
    assert abs(again["loss"] - metrics["validation"]["loss"]) < 1e-5


def test_adapter_runs_as_bases_merged_recipes_and_changed_bases(tiny_run, tmp_path, cli):
    import os
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    common = ["data.builtin.train_size=128", "train.save_every=epoch", "train.epochs=1"]
    run = train(adapter_recipe("quickstart.yaml", TINY, base, tmp_path, *common))

    # An adapter run is no base model: merge it first.
    with pytest.raises(RecipeError, match="is an adapter run .*hfpipe merge") as err:
        train(adapter_recipe("quickstart.yaml", TINY, run, tmp_path, out="on-adapter"))
    assert err.value.key == "model.name_or_path"

    # The merged directory's recipe points at the merged directory, not at the adapter run.
    merged, _ = merge_run(run, tmp_path / "merged")
    assert load_recipe(merged / "recipe.yaml").output_dir == str(merged.resolve())
    assert json.loads((merged / "metrics.json").read_text())["parameters"]["trainable_fraction"] == 1.0

    # Resuming on a base whose weights changed is refused; loading it warns.
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(0, 0))
    longer = adapter_recipe("quickstart.yaml", TINY, base, tmp_path, *common[:2], "train.epochs=2")
    with pytest.raises(RecipeError, match="base model's weights changed") as err:
        train(longer, resume=True)
    assert err.value.key == "model.name_or_path"
    result = cli("predict", run, "--text", "fine")
    assert result.exit_code == 0 and "has changed since this adapter was trained" in result.output

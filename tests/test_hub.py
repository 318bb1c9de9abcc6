"""Real Hub checkpoint formats, offline: every task x family hfpipe supports, started from `model.name_or_path:
<repo id>` of the simulated Hub (tests/hub.py: tiny random checkpoints in the real repos' files, classes and
quirks). Each trains a few steps, reloads with plain transformers Auto classes (the same outputs as hfpipe's
command) and runs the task's command; LoRA + merge on a decoder and an encoder-decoder; the errors a user of
these repos can meet (a missing package, pickle-only weights, a random head) are one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from hub import BART, BERT, GPT2, MARIAN, MARIAN_PICKLE, T5

pytestmark = pytest.mark.slow

SENTIMENT = {"builtin": {"name": "sentiment", "train_size": 32, "validation_size": 8, "test_size": 8}}
TRANSLATION = {
    "builtin": {"name": "translation", "train_size": 32, "validation_size": 8, "test_size": 8},
    "source_lang": "en",
    "target_lang": "zt",
    "max_length": 32,
}
DATA = {
    "classification": {**SENTIMENT, "max_length": 32},
    "question-answering": {
        "builtin": {"name": "qa", "train_size": 16, "validation_size": 6, "test_size": 4},
        "max_length": 128,
    },
    "masked-lm": {**SENTIMENT, "max_length": 32},
    "causal-lm": {**SENTIMENT, "max_length": 32},
    "generation": {
        **SENTIMENT,
        "template": {"prompt": "Review: {text}\nVerdict:", "completion": " {label}"},
        "max_length": 48,
    },
    "translation": TRANSLATION,
}
# The families each task runs on (the README's table).
MATRIX = [
    ("classification", BERT),
    ("classification", GPT2),
    ("classification", T5),
    ("classification", BART),
    ("question-answering", BERT),
    ("masked-lm", BERT),
    ("causal-lm", GPT2),
    ("generation", GPT2),
    ("translation", T5),
    ("translation", BART),
    ("translation", MARIAN),
]
TRAIN = {"max_steps": 2, "batch_size": 8, "log_every": 1}
GENERATION = {"max_new_tokens": 6, "num_beams": 2, "eval_samples": 4}
REVIEW = "The cast was not dull, but the ending felt cheap."
SOURCE = "The old kings followed a quiet fox."


def recipe_file(tmp_path, task: str, repo: str, name: str = "run", **sections) -> tuple:
    data = dict(DATA[task])
    if repo == T5 and task == "translation":
        data["source_prefix"] = "translate English to Zeta: "
    recipe = {
        "task": task,
        "model": {"name_or_path": repo},
        "data": data,
        "train": TRAIN,
        "generation": GENERATION,
        "output_dir": str(tmp_path / name),
        **sections,
    }
    if task == "question-answering":
        recipe["qa"] = {"doc_stride": 32, "max_question_length": 32}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, tmp_path / name


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def plain(run, task_name: str):
    """The run directory loaded with transformers alone: AutoTokenizer and the task's Auto class."""
    import transformers

    from hfpipe.tasks import get_task

    tokenizer = transformers.AutoTokenizer.from_pretrained(run)
    model = getattr(transformers, get_task(task_name).auto_model).from_pretrained(run)
    return tokenizer, model.eval()


def check_command(cli, task: str, run) -> None:
    """The task's command on the run, and the same output from the run loaded by transformers alone."""
    import torch

    tokenizer, model = plain(run, task)
    if task == "classification":
        result = cli("predict", run, "--text", REVIEW)
        with torch.no_grad():
            logits = model(**tokenizer(REVIEW, return_tensors="pt")).logits
        expected = model.config.id2label[int(logits.argmax(-1))]
        assert lines(result.output)[0]["label"] == expected
    elif task == "masked-lm":
        text = f"The cast was {tokenizer.mask_token}."
        result = cli("predict", run, "--text", text)
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits
        where = int((enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
        expected = tokenizer.convert_ids_to_tokens(int(logits[0, where].argmax()))
        assert lines(result.output)[0]["filled"] == [expected]
    elif task in ("causal-lm", "generation"):
        prompt = f"Review: {REVIEW}\nVerdict:"
        result = cli(
            "generate", run, "--prompt", prompt, "--greedy", "--num-beams", "1", "--max-new-tokens", "5"
        )
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=5, do_sample=False, num_beams=1)
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert lines(result.output)[0]["completion"] == tokenizer.decode(new, skip_special_tokens=True)
    elif task == "translation":
        result = cli("translate", run, "--text", SOURCE)
        data = yaml.safe_load((run / "recipe.yaml").read_text())["data"]
        params = json.loads((run / "config.json").read_text())["task_specific_params"]
        prefix = params[f"translation_{data['source_lang']}_to_{data['target_lang']}"]["prefix"]
        enc = tokenizer(prefix + SOURCE, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=GENERATION["max_new_tokens"], num_beams=2)
        expected = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        assert lines(result.output)[0]["translation"] == expected
    elif task == "question-answering":
        context = "Hugo Jansky was born in Quillon. He worked as a tailor."
        result = cli("answer", run, "--question", "Where was Hugo Jansky born?", "--context", context)
        answer = lines(result.output)[0]
        assert context[answer["start"] : answer["end"]] == answer["answer"]
        with torch.no_grad():
            model(**tokenizer("Where?", context, return_tensors="pt"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("task", "repo"), MATRIX, ids=[f"{t}-{r.split('/')[1]}" for t, r in MATRIX])
def test_every_task_trains_from_the_hub_format_and_reloads_with_auto_classes(task, repo, hub, tmp_path, cli):
    path, run = recipe_file(tmp_path, task, repo)
    result = cli("train", path)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["validation"]
    if task in ("classification", "question-answering"):  # a new head: said, not silent
        assert "new weights, randomly initialised:" in result.output
    check_command(cli, task, run)


def test_a_t5_checkpoint_keeps_its_task_specific_params(hub, tmp_path, cli):
    """The run adds its own translation prefix beside the checkpoint's summarization and translation ones."""
    path, run = recipe_file(tmp_path, "translation", T5, train={**TRAIN, "max_steps": 1})
    assert cli("train", path).exit_code == 0
    params = json.loads((run / "config.json").read_text())["task_specific_params"]
    assert params["translation_en_to_zt"]["prefix"] == "translate English to Zeta: "
    from hub import T5_TASK_PARAMS

    for name, entry in T5_TASK_PARAMS.items():
        assert params[name] == entry


FEWSHOT_TASK = {
    "name": "sentiment",
    "mode": "classification",
    "data": {"builtin": {"name": "sentiment", "train_size": 20, "validation_size": 0, "test_size": 8}},
    "prompt": "Review: {text}\nSentiment:",
    "verbalizer": {"negative": "bad", "positive": "good"},
}


@pytest.mark.parametrize("repo", [BERT, GPT2, T5, BART, MARIAN], ids=lambda r: r.split("/")[1])
def test_fewshot_scores_every_family_from_the_hub(repo, hub, tmp_path, cli):
    task = dict(FEWSHOT_TASK)
    if repo == BERT:  # a masked LM scores by cloze: the verbalizer's word goes where {mask} is
        task["prompt"] = "Review: {text} It was {mask}."
    recipe = {
        "task": "fewshot",
        "model": {"name_or_path": repo},
        "fewshot": {"k": [0, 1], "tasks": [task]},
        "output_dir": str(tmp_path / "fewshot"),
    }
    (tmp_path / "fewshot.yaml").write_text(yaml.safe_dump(recipe))
    result = cli("fewshot", tmp_path / "fewshot.yaml")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "fewshot" / "results.json").read_text())
    assert set(results["tasks"]["sentiment"]["summary"]) == {"0", "1"}


def test_a_checkpoint_without_the_scored_head_is_refused(hub, tmp_path, cli):
    """An encoder without MLM weights (as all-MiniLM-L6-v2) scored by cloze would score a random head: a
    different accuracy on every run. Refused, naming the missing weights."""
    import transformers

    encoder = tmp_path / "encoder-only"
    transformers.BertModel.from_pretrained(BERT).save_pretrained(encoder)
    transformers.AutoTokenizer.from_pretrained(BERT).save_pretrained(encoder)
    task = {**FEWSHOT_TASK, "prompt": "Review: {text} It was {mask}."}
    recipe = {
        "task": "fewshot",
        "model": {"name_or_path": str(encoder)},
        "fewshot": {"tasks": [task]},
        "output_dir": str(tmp_path / "out"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = cli("fewshot", tmp_path / "r.yaml")
    assert result.exit_code == 2
    assert "has no weights for cls" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    ("task", "repo"), [("causal-lm", GPT2), ("translation", MARIAN)], ids=["gpt2", "marian"]
)
def test_lora_on_a_hub_checkpoint_merges_into_a_plain_model(task, repo, hub, tmp_path, cli):
    path, run = recipe_file(tmp_path, task, repo, peft={"method": "lora", "r": 4})
    assert cli("train", path).exit_code == 0
    assert (run / "adapter_config.json").exists() and not (run / "config.json").exists()
    merged = tmp_path / "merged"
    result = cli("merge", run, merged)
    assert result.exit_code == 0, result.output
    check_command(cli, task, merged)  # the merged directory, read by transformers alone and by hfpipe


def test_pickle_only_hub_repos_need_the_opt_in(hub, tmp_path, cli):
    path, run = recipe_file(tmp_path, "translation", MARIAN_PICKLE)
    result = cli("train", path)
    assert result.exit_code == 2
    assert "model.allow_pickle_weights: true" in result.output and "use_safetensors" not in result.output
    assert not run.exists()
    recipe = yaml.safe_load(path.read_text())
    recipe["model"]["allow_pickle_weights"] = True
    path.write_text(yaml.safe_dump(recipe))
    assert cli("train", path).exit_code == 0


def test_a_missing_sentencepiece_is_one_line_naming_the_pip_command(hub, tmp_path):
    """Marian's tokenizer needs the sentencepiece package: without it, validate, train and translate say so in
    one line (exit 2), before loading anything."""
    path, run = recipe_file(tmp_path, "translation", MARIAN)
    blocked = "import sys; sys.modules['sentencepiece'] = None; from hfpipe.cli import main; main()"

    def hfpipe(*args):
        return subprocess.run(
            [sys.executable, "-c", blocked, *map(str, args)],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
        )

    for args in (["validate", path], ["train", path]):
        done = hfpipe(*args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if "needs the sentencepiece package" in line]
        assert len(errors) == 1 and errors[0].endswith(": pip install sentencepiece"), done.stderr
    assert not run.exists()


def _names_a_hub_model(name: str) -> bool:
    from hfpipe.recipe import load_recipe
    from hfpipe.tokenization import looks_like_path

    model = load_recipe(name).model.name_or_path
    return bool(model) and not looks_like_path(model) and not os.path.isabs(model)


def _hub_recipes() -> list[str]:
    from hfpipe.recipe import bundled

    return [name for name in bundled.names() if _names_a_hub_model(name)]


@pytest.mark.parametrize("name", _hub_recipes())
def test_every_bundled_recipe_that_names_a_hub_model_runs_on_it(name, hub, tmp_path, cli, monkeypatch):
    """A few steps of the recipe as shipped, on the simulated Hub's copy of its model; data it reads from
    outside the project (SQuAD, Multi30k) is swapped for the task's generated data."""
    from hfpipe.preflight import problems
    from hfpipe.recipe import load_recipe

    monkeypatch.chdir(tmp_path)  # a bundled recipe's paths resolve here: none of its outside data
    recipe = load_recipe(name)
    overrides = [
        "train.max_steps=2",
        "train.batch_size=4",
        "train.save_every=never",
        "generation.eval_samples=4",
        "generation.num_beams=2",
        "generation.max_new_tokens=6",
        f"output_dir={tmp_path / 'run'}",
    ]
    if problems(recipe):  # its data is not here
        data = dict(DATA[recipe.task])
        if recipe.task == "question-answering":
            data["max_length"] = recipe.data.max_length
        overrides.append(f"data={json.dumps(data)}")
    result = cli("train", name, *overrides)
    assert result.exit_code == 0, result.output
    check_command(cli, recipe.task, tmp_path / "run")

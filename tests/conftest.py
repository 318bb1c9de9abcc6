"""Shared fixtures: offline environment, tiny recipes, one tiny trained run reused by many tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# The simulated Hub (tests/hub.py) lives in a hub cache of the session's own: set before anything imports
# huggingface_hub, which reads HF_HUB_CACHE once. Repo ids resolve there exactly as downloads would.
HUB_CACHE = Path(tempfile.mkdtemp(prefix="hfpipe-test-hub-"))
os.environ["HF_HUB_CACHE"] = str(HUB_CACHE)
atexit.register(shutil.rmtree, HUB_CACHE, ignore_errors=True)

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

# Shrinks a bundled BERT recipe to a model that trains in seconds (2 layers, hidden 32).
TINY = [
    "model.config.hidden_size=32",
    "model.config.num_hidden_layers=2",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "tokenizer.train.vocab_size=400",
    "data.builtin.train_size=1024",
    "data.builtin.validation_size=128",
    "data.builtin.test_size=128",
    "train.epochs=3",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.warmup_ratio=0",
    "train.log_every=4",
    "~train.early_stopping_patience",  # tiny models sit on a plateau before they learn
]

# Shrinks the bundled GPT-2 recipes.
TINY_GPT2 = [
    "model.config.n_embd=32",
    "model.config.n_layer=2",
    "model.config.n_head=2",
    "model.config.n_positions=32",
    "tokenizer.train.vocab_size=300",
    "data.max_length=32",
    "data.builtin.train_size=600",
    "data.builtin.validation_size=100",
    "data.builtin.test_size=100",
    "train.epochs=2",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.log_every=2",
    "train.save_every=never",
]


@pytest.fixture(autouse=True, scope="session")
def _datasets_cache(tmp_path_factory):
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    os.environ["HFPIPE_CACHE"] = str(tmp_path_factory.mktemp("hfpipe_cache"))


@pytest.fixture(scope="session")
def hub() -> dict[str, Path]:
    """Tiny random checkpoints in the Hub's own formats under real repo ids ({repo id: snapshot folder}),
    built once per session (a few seconds)."""
    from hub import build

    return build(HUB_CACHE)


@pytest.fixture
def cli():
    from hfpipe.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The quickstart recipe, shrunk, trained once for the whole session."""
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    out = tmp_path_factory.mktemp("runs") / "tiny"
    recipe = load_recipe(RECIPES / "quickstart.yaml", [*TINY, f"output_dir={out}", "train.save_every=32"])
    return train(recipe, command="pytest tiny_run")


def tiny_recipe(tmp_path: Path, *overrides: str, out: str = "run"):
    """The quickstart recipe shrunk by TINY, with `overrides`, writing to tmp_path / out."""
    from hfpipe.recipe import load_recipe

    return load_recipe(RECIPES / "quickstart.yaml", [*TINY, *overrides, f"output_dir={tmp_path / out}"])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def clm_run(tmp_path_factory) -> Path:
    """recipes/gpt2-clm-pretrain.yaml, shrunk by TINY_GPT2, trained once for the session."""
    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    out = tmp_path_factory.mktemp("clm") / "run"
    return train(load_recipe(RECIPES / "gpt2-clm-pretrain.yaml", [*TINY_GPT2, f"output_dir={out}"]))


# A bundled recipe per task, shrunk to a few rows: the tests of one piece of every task (its preparation,
# its predictions) start from these.
TASK_RECIPES = {
    "classification": ("quickstart.yaml", ["data.builtin.train_size=40"]),
    "question-answering": ("bert-qa.yaml", ["data.builtin.train_size=12", "qa.max_question_length=40"]),
    "masked-lm": ("bert-mlm-pretrain.yaml", ["data.builtin.train_size=60", "data.max_length=16"]),
    "causal-lm": ("gpt2-clm-pretrain.yaml", ["data.builtin.train_size=60", "data.max_length=16"]),
    "generation": ("gpt2-generation.yaml", ["data.builtin.train_size=40"]),
    "translation": ("t5-translation.yaml", ["data.builtin.train_size=40"]),
}


def task_inputs(name: str, tmp_path, *overrides):
    """(recipe, raw data, tokenizer, model config) for the task's bundled recipe, shrunk."""
    import transformers

    from hfpipe.architectures import ARCHITECTURES
    from hfpipe.assemble import recipe_tokenizer
    from hfpipe.data import load_raw
    from hfpipe.recipe import load_recipe
    from hfpipe.tasks import get_task

    file, shrink = TASK_RECIPES[name]
    recipe = load_recipe(
        RECIPES / file,
        [
            *shrink,
            "data.builtin.validation_size=4",
            "data.builtin.test_size=4",
            "tokenizer.train.vocab_size=200",
            *overrides,
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    task = get_task(name)
    raw = load_raw(recipe)
    tokenizer = recipe_tokenizer(recipe, task, raw)
    arch = ARCHITECTURES[recipe.model.architecture]
    config = transformers.AutoConfig.for_model(arch.model_type, **task.configure(raw, recipe))
    return recipe, raw, tokenizer, config

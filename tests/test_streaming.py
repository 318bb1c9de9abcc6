"""data.streaming: a corpus read as a stream, packed on the fly as the in-memory path packs it; training,
resuming and the errors a user meets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import RECIPES, TINY_GPT2
from safetensors.torch import load_file

from hfpipe.builtin_data import sentiment
from hfpipe.recipe import load_recipe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The clm recipe's built-in sentences as text files: train (one document per line), validation."""
    root = tmp_path_factory.mktemp("corpus")
    rows = sentiment(200, 60, 0, 7)
    (root / "train.txt").write_text("".join(r["text"] + "\n" for r in rows["train"]))
    (root / "validation.txt").write_text("".join(r["text"] + "\n" for r in rows["validation"]))
    return root


def settings(corpus, out, *extra):
    return [
        *TINY_GPT2,
        "~data.builtin",
        f"data.train={corpus / 'train.txt'}",
        f"data.validation={corpus / 'validation.txt'}",
        "data.streaming=true",
        "train.max_steps=40",  # the 200 sentences make ~13 batches of blocks: three passes over the stream
        "train.eval_every=20",
        "train.log_every=5",
        f"output_dir={out}",
        *extra,
    ]


def test_stream_packs_the_blocks_the_in_memory_path_packs(corpus, tmp_path):
    from transformers import AutoTokenizer

    from hfpipe.api import train
    from hfpipe.data import load_raw
    from hfpipe.streaming import PackedStream
    from hfpipe.tasks import get_task

    run = train(
        load_recipe(
            RECIPES / "gpt2-clm-pretrain.yaml", settings(corpus, tmp_path / "run", "train.max_steps=2")
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(run)
    in_memory = load_recipe(
        RECIPES / "gpt2-clm-pretrain.yaml", settings(corpus, tmp_path / "x", "data.streaming=false")
    )
    raw = load_raw(in_memory)
    blocks = get_task("causal-lm").prepare(raw, "train", tokenizer, None, in_memory)["input_ids"]
    streamed = load_recipe(RECIPES / "gpt2-clm-pretrain.yaml", settings(corpus, tmp_path / "y"))
    stream = PackedStream(load_raw(streamed).splits["train"], tokenizer, "text", 32, seed=1, buffer=1)
    assert [b["input_ids"] for b in stream] == blocks  # a buffer of one keeps the file's order
    shuffled = PackedStream(load_raw(streamed).splits["train"], tokenizer, "text", 32, seed=1, buffer=100)
    first = [b["input_ids"] for b in shuffled]
    # the same documents in another order: as many full blocks (the dropped tail differs), not the same ones
    assert first != blocks and len(first) == len(blocks) and all(len(b) == 32 for b in first)
    assert first == [b["input_ids"] for b in shuffled]  # the seed decides
    shuffled.set_epoch(1)
    assert first != [b["input_ids"] for b in shuffled]  # each pass its own order


def hfpipe(corpus, out, *extra, fault=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HFPIPE_FAULT", None)
    if fault:
        env["HFPIPE_FAULT"] = fault
    command = [sys.executable, "-m", "hfpipe", "train", str(RECIPES / "gpt2-clm-pretrain.yaml")]
    command += [*settings(corpus, out, "train.save_every=10"), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_streamed_training_learns_and_resumes_where_it_stopped(corpus, tmp_path):
    whole = hfpipe(corpus, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "a stream of blocks, passes as needed, 40 steps" in whole.stderr
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0
    assert [r["step"] for r in records if r["type"] == "eval"] == [20, 40]
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 40 and metrics["validation"]["perplexity"] < 100  # uniform: ~300

    # SIGTERM during step 25: a checkpoint at that step boundary; the resumed run replays the stream to
    # there and ends with the unbroken run's weights.
    stopped = hfpipe(corpus, tmp_path / "broken", fault="sigterm:25")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    newest = sorted((tmp_path / "broken" / "checkpoints").glob("step-*"))[-1] / "trainer_state.json"
    assert json.loads(newest.read_text())["epoch"] >= 1  # stopped in a later pass than the first
    resumed = hfpipe(corpus, tmp_path / "broken", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "broken" / "model.safetensors"),
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_streaming_errors(corpus, tmp_path, cli):
    base = RECIPES / "gpt2-clm-pretrain.yaml"
    cases = [
        (["~train.max_steps"], "train.max_steps: data.streaming needs max_steps"),
        (
            ["data.validation_fraction=0.1", "~data.validation"],
            "data.validation_fraction: a stream cannot hold",
        ),
    ]
    for extra, message in cases:
        result = cli("validate", base, *settings(corpus, tmp_path / "r"), *extra)
        assert result.exit_code == 2 and message in result.output, result.output
    wrong = cli("validate", RECIPES / "quickstart.yaml", "data.streaming=true", "train.max_steps=5")
    assert (
        wrong.exit_code == 2
        and "data.streaming: streams train causal-lm (pretraining), not classification" in wrong.output
    )
    (tmp_path / "tiny.txt").write_text("too short\n")
    short = cli("train", base, *settings(corpus, tmp_path / "s", f"data.train={tmp_path / 'tiny.txt'}"))
    assert short.exit_code == 3 and "hold no full block of data.max_length=32 tokens" in short.output

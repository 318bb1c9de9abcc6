"""Several processes through Accelerate: 2 CPU processes (gloo) give the run of one process with the same
global batch, write one set of outputs, and count every evaluation example once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import RECIPES, TINY
from safetensors.torch import load_file

from hfpipe.recipe import load_recipe

# Dropout off: each process draws its own dropout masks, so only a deterministic model can match.
SETTINGS = [
    *TINY,
    "model.config.hidden_dropout_prob=0",
    "model.config.attention_probs_dropout_prob=0",
    "data.builtin.validation_size=130",  # not a multiple of the eval batch: the last one is padded
    "data.builtin.test_size=129",
    "train.save_every=never",
]


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    from hfpipe.api import train

    one = train(
        load_recipe(
            RECIPES / "quickstart.yaml", [*SETTINGS, "train.batch_size=16", f"output_dir={tmp_path / 'one'}"]
        )
    )
    command = [sys.executable, "-m", "hfpipe", "train", str(RECIPES / "quickstart.yaml"), *SETTINGS]
    command += ["train.batch_size=8", f"output_dir={tmp_path / 'two'}", "--num-processes", "2"]
    command += ["tracking=[jsonl, tensorboard]"]  # trackers end without ending the process group
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    assert "16 examples (batch 8 per process x 2 process(es) x 1 accumulation)" in done.stderr

    first, second = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert first["train"]["steps"] == second["train"]["steps"] == 192  # 1024 / 16 x 3 epochs
    for split, size in (("validation", 130), ("test", 129)):
        for name, value in first[split].items():
            assert abs(value - second[split][name]) < 1e-5, (split, name)
        # every example counted once: the padded last batch's repeats are dropped
        correct = second[split]["accuracy"] * size
        assert abs(correct - round(correct)) < 1e-6
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    # One set of outputs: each step logged once, one summary.
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["type"], r["step"]) for r in records]
    assert len(steps) == len(set(steps)) and steps == [
        (r["type"], r["step"]) for r in map(json.loads, (one / "metrics.jsonl").read_text().splitlines())
    ]
    assert done.stdout.count("run directory:") == 1
    assert len(list((two / "tensorboard").rglob("events.out.tfevents.*"))) >= 1  # the main process's
    # The same loss at every logged step (mean over the processes' halves = the one process's mean), and
    # the weights moved: the runs agree along the way, not only at an untrained start.
    losses = [
        [
            r["loss"]
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "train"
        ]
        for run in (one, two)
    ]
    assert len(losses[0]) > 10 and max(abs(x - y) for x, y in zip(*losses, strict=True)) < 1e-5
    assert max(losses[0]) - min(losses[0]) > 0.01


def test_launch_hands_over_to_accelerate(tmp_path, cli, monkeypatch):
    import subprocess as sp

    calls = []
    monkeypatch.setattr(sp, "call", lambda command, env: calls.append((command, env)) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    recipe = RECIPES / "quickstart.yaml"
    assert (
        cli("train", recipe, f"output_dir={tmp_path}", "--num-processes", "2", "--overwrite").exit_code == 0
    )
    command, env = calls[-1]
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "2"
    tail = ["-m", "hfpipe", "train", str(recipe), f"output_dir={tmp_path}", "--overwrite"]
    assert command[-6:] == tail and env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    config = RECIPES / "accelerate" / "fsdp.yaml"
    assert cli("train", recipe, "--accelerate-config", config).exit_code == 0
    command, _ = calls[-1]
    assert command[command.index("--config_file") + 1] == str(config) and "--multi_gpu" not in command
    uneven = cli("train", recipe, "train.batch_size=8", "train.global_batch_size=48", "--num-processes", "4")
    assert (
        uneven.exit_code == 2 and "48 is not a multiple of batch_size 8 x 4 process(es) = 32" in uneven.output
    )
    missing = cli("train", recipe, "--accelerate-config", tmp_path / "none.yaml")
    assert missing.exit_code == 2 and "no Accelerate config file" in missing.output
    assert len(calls) == 2


@pytest.mark.parametrize("path", sorted((RECIPES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.compute_environment.value == "LOCAL_MACHINE"


def test_global_batch_size_derives_the_accumulation(tmp_path, cli):
    from hfpipe.errors import RecipeError

    recipe = load_recipe(RECIPES / "quickstart.yaml", ["train.batch_size=8", "train.global_batch_size=32"])
    assert [recipe.train.accumulation(p) for p in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(RecipeError, match="32 is not a multiple of batch_size 8 x 3 process"):
        recipe.train.accumulation(3)
    both = cli(
        "validate",
        RECIPES / "quickstart.yaml",
        "train.global_batch_size=64",
        "train.gradient_accumulation_steps=2",
    )
    assert (
        both.exit_code == 2
        and "train.global_batch_size: give it or gradient_accumulation_steps" in both.output
    )
    odd = cli("validate", RECIPES / "quickstart.yaml", "train.global_batch_size=100")
    assert odd.exit_code == 2 and "100 is not a multiple of batch_size (32, per process)" in odd.output


def test_batches_of_a_step_are_one_draw_cut_into_passes():
    from hfpipe.training.batching import BatchSampler

    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    for grouped in (True, False):
        whole = BatchSampler(lengths, 24, seed=5, group_by_length=grouped).batches()
        passes = BatchSampler(lengths, 8, seed=5, group_by_length=grouped, accumulation=3)
        cut = passes.batches()
        assert len(cut) == len(passes) == 8 * 3 + 2  # 203 = 8 x 24 + 11: a last step of 8 + 3
        assert [sum(cut[i : i + 3], []) for i in range(0, len(cut), 3)] == whole
        assert all(len(b) == 8 for b in cut[:-1]) and len(cut[-1]) == 3  # only the very last pass is short


@pytest.mark.slow
@pytest.mark.parametrize(
    "switch",
    [
        "train.precision=bf16",
        "model.attn_implementation=eager",
        # inductor generates C++ for ~2 minutes here (`make bench` runs it); eager goes through the same
        # Accelerate compile and unwrap path
        "train.compile=true train.compile_backend=eager",
    ],
)
def test_precision_attention_and_compile_switches_train_and_save(tmp_path, switch, caplog):
    """Each switch trains (the loss falls), and the run directory loads as a plain fp32 model."""
    from conftest import TINY_GPT2
    from transformers import AutoModelForCausalLM

    from hfpipe.api import train

    settings = [
        *TINY_GPT2,
        "data.builtin.validation_size=0",
        "data.builtin.test_size=0",
        "train.max_steps=30",
    ]
    settings += ["train.log_every=5", *switch.split(), f"output_dir={tmp_path / 'run'}"]
    run = train(load_recipe(RECIPES / "gpt2-clm-pretrain.yaml", settings))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    model = AutoModelForCausalLM.from_pretrained(run)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("built gpt2")]
    assert built and built[0].endswith(
        "eager attention" if "attn_implementation" in switch else "sdpa attention"
    )


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    from hfpipe.api import train
    from hfpipe.errors import UsageError

    settings = [*TINY, "data.builtin.test_size=0", "train.max_steps=6", "train.save_every=3"]
    recipe = load_recipe(RECIPES / "quickstart.yaml", [*settings, f"output_dir={tmp_path / 'run'}"])
    run = train(recipe)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1] / "trainer_state.json"
    saved = json.loads(newest.read_text())
    assert saved["processes"] == 1
    newest.write_text(json.dumps({**saved, "processes": 2}))  # as a 2-process run would have saved it
    with pytest.raises(UsageError, match=r"saved by 2 process\(es\) and resumes in 1.*--num-processes 2"):
        train(recipe, resume=True)
    # from the command line, the launching process refuses before any process starts
    import subprocess as sp

    command = [sys.executable, "-m", "hfpipe", "train", str(RECIPES / "quickstart.yaml"), *settings]
    done = sp.run(
        [*command, f"output_dir={run}", "--resume", "--num-processes", "3"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "saved by 2 process(es) and resumes in 3" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_user_error_inside_launched_processes_keeps_its_exit_code(tmp_path):
    """torchrun reports any failed process as 1; hfpipe's processes leave their error's code for the parent."""
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood film,positive\n,negative\n")
    command = [sys.executable, "-m", "hfpipe", "train", str(RECIPES / "quickstart.yaml"), *TINY]
    command += [
        "~data.builtin",
        f"data.train={data}",
        f"output_dir={tmp_path / 'run'}",
        "--num-processes",
        "2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "d.csv:3: " in done.stderr and "empty text" in done.stderr

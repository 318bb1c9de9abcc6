"""train.fast_kernels (hfpipe/kernels.py): the same functions as the model's and PyTorch's, computed faster."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import RECIPES, TINY_GPT2

from hfpipe.kernels import FastKernels, scale_and_clip_


def test_gelu_new_runs_as_the_fused_tanh_gelu_and_the_config_keeps_gelu_new(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=16, vocab_size=50)).eval()
    ids = torch.randint(0, 50, (2, 16))
    before = model(ids).logits
    spec = SimpleNamespace(fast_kernels=True, compile=False)
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), scaler=None, distributed_type=DistributedType.NO
    )
    kernels = FastKernels(model, spec, accelerator)
    assert (
        kernels.description
        == "gelu_new -> fused tanh GELU in 3 module(s), foreach gradient scaling and clipping"
    )
    assert all(type(block.mlp.act).__name__ == "GELUTanh" for block in model.transformer.h)
    assert (model(ids).logits - before).abs().max().item() < 1e-5
    model.save_pretrained(tmp_path)
    assert '"activation_function": "gelu_new"' in (tmp_path / "config.json").read_text()
    kernels.restore()  # fit's end: the model's own modules, the exact function that reloads
    assert all(type(block.mlp.act).__name__ == "NewGELUActivation" for block in model.transformer.h)
    assert torch.equal(model(ids).logits, before)
    off = FastKernels(model, SimpleNamespace(fast_kernels=False, compile=False), accelerator)
    assert off.description is None and not off.foreach_grads
    assert type(model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"


@pytest.mark.parametrize("max_norm", [None, 0.5, 1e6])
@pytest.mark.parametrize("factor", [None, 0.25])
def test_foreach_scaling_and_clipping_equal_the_loop_and_clip_grad_norm(factor, max_norm):
    torch.manual_seed(0)
    grads = [torch.randn(16, 8) * 3, torch.randn(8), torch.randn(3, 3, 3)]
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for a, b, g in zip(ours, theirs, grads, strict=True):
        a.grad, b.grad = g.clone(), g.clone()
    frozen = torch.nn.Parameter(torch.zeros(2))  # no gradient: skipped
    norm = scale_and_clip_([*ours, frozen], None if factor is None else torch.tensor(factor), max_norm)
    if factor is not None:
        for b in theirs:
            b.grad.mul_(factor)
    if max_norm:
        expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    else:
        assert norm is None
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grad - b.grad).abs().max().item() < 1e-6


def test_a_run_with_fast_kernels_trains_the_weights_pytorch_s_ops_train(tmp_path, caplog):
    """GPT-2 (gelu_new), dropout on, accumulation (gradient scaling) and a clip at 0.5: the GELU swap and
    the foreach pass give the weights the model's own modules and clip_grad_norm_ give, and the model
    that comes back has its own modules."""
    from safetensors.torch import load_file

    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    common = [
        *TINY_GPT2,
        "data.builtin.train_size=200",
        "data.builtin.validation_size=50",
        "data.builtin.test_size=0",
        "train.epochs=1",
        "train.batch_size=4",
        "train.gradient_accumulation_steps=2",
        "train.max_grad_norm=0.5",
        "train.lr=1e-3",
    ]
    weights, losses = {}, {}
    for name, extra in {"fast": [], "pytorch": ["train.fast_kernels=false"]}.items():
        caplog.clear()
        with caplog.at_level("INFO", logger="hfpipe"):
            run = train(
                load_recipe(
                    RECIPES / "gpt2-clm-pretrain.yaml", [*common, *extra, f"output_dir={tmp_path / name}"]
                )
            )
        logged = (
            "fast kernels: gelu_new -> fused tanh GELU in 2 module(s), foreach gradient scaling and clipping"
        )
        assert (logged in caplog.text) == (name == "fast")
        weights[name] = load_file(run / "model.safetensors")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if r["type"] == "train"]
    worst = max((weights["fast"][k] - weights["pytorch"][k]).abs().max().item() for k in weights["fast"])
    assert worst < 1e-5
    assert sum(losses["fast"][-3:]) / 3 < sum(losses["fast"][:3]) / 3 - 0.25, losses["fast"]

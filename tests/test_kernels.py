"""train.fast_kernels (hfpipe/kernels.py): the same functions as PyTorch's ops, computed faster."""

from __future__ import annotations

import contextlib
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from conftest import RECIPES, TINY_GPT2

from hfpipe.kernels import CpuDropout, FastKernels, _keep_mask, scale_and_clip_


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_keeps_1_minus_p_scaled_and_is_seeded_by_torch(p):
    x = torch.randn(1000, 1000)
    torch.manual_seed(0)
    with CpuDropout():
        y = F.dropout(x, p, training=True)
        again = torch.nn.Dropout(p)(x)  # nn.Dropout goes through F.dropout
    kept = y != 0
    # 1e6 Bernoulli draws: the standard deviation of the kept fraction is < 5e-4
    assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    assert not torch.equal(kept, again != 0)  # a new mask per call
    torch.manual_seed(0)
    with CpuDropout():
        assert torch.equal(F.dropout(x, p, training=True), y)  # torch's seed decides the mask
    state = torch.get_rng_state()
    with CpuDropout():
        first = F.dropout(x, p)
    torch.set_rng_state(state)  # as a checkpoint restores it
    with CpuDropout():
        assert torch.equal(F.dropout(x, p), first)


def test_cpu_dropout_backward_passes_the_kept_gradient_and_leaves_other_calls_alone():
    x = torch.randn(64, 32, requires_grad=True)
    with CpuDropout():
        y = F.dropout(x, 0.25, training=True)
        assert torch.equal(F.dropout(x, 0.25, training=False), x)  # evaluation: identity
        assert torch.equal(F.dropout(x, 0.0, training=True), x)
        half = F.dropout(x.detach().to(torch.bfloat16), 0.25)
    assert half.dtype == torch.bfloat16
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (y != 0).float() / 0.75)


@pytest.mark.parametrize(
    "case", ["plain", "causal", "bool mask", "bool mask and causal", "grouped query", "explicit scale"]
)
def test_attention_dropout_is_the_reference_math_with_the_bulk_mask(case):
    """scaled_dot_product_attention with dropout: softmax(q k^T x scale + mask), dropped, times v, where the
    dropped weights use the mask _keep_mask draws at that point of torch's RNG."""
    torch.manual_seed(1)
    q = torch.randn(2, 4, 6, 8)
    kv_heads = 2 if case == "grouped query" else 4
    k, v = torch.randn(2, kv_heads, 7, 8), torch.randn(2, kv_heads, 7, 8)
    mask = torch.rand(2, 1, 6, 7) > 0.3
    mask[0, 0, 2] = False  # a query that sees no key (padding): finite, not NaN
    kwargs = {
        "plain": {},
        "causal": {"is_causal": True},
        "bool mask": {"attn_mask": mask},
        "bool mask and causal": {"attn_mask": mask, "is_causal": True},
        "grouped query": {"enable_gqa": True},
        "explicit scale": {"scale": 0.3},
    }[case]
    torch.manual_seed(7)
    with CpuDropout():
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2, **kwargs)
    assert torch.isfinite(out).all()

    if case == "grouped query":
        k, v = k.repeat_interleave(2, dim=-3), v.repeat_interleave(2, dim=-3)
    scores = q @ k.transpose(-2, -1) * kwargs.get("scale", 1 / math.sqrt(8))
    keep = torch.ones(6, 7, dtype=torch.bool)
    if kwargs.get("is_causal"):
        keep = keep.tril()
    if "attn_mask" in kwargs:
        keep = keep & mask
    weights = torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1)
    torch.manual_seed(7)
    expected = (weights * _keep_mask(weights, 0.2)) @ v
    rows = keep.expand(2, 4, 6, 7).any(-1)  # queries that see at least one key
    assert (out - expected)[rows].abs().max().item() < 1e-5
    # without dropout the call is PyTorch's own
    with CpuDropout():
        same = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(same, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


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
    assert kernels.description == (
        "CPU dropout masks in bulk, gelu_new -> fused tanh GELU in 3 module(s), "
        "foreach gradient scaling and clipping"
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
    assert isinstance(off.dropout, contextlib.nullcontext)
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
    """Dropout off, accumulation (gradient scaling) and a binding clip: the GELU swap and the foreach pass
    give the weights PyTorch's ops give. With dropout on, the masks differ (and both runs learn)."""
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
    no_dropout = ["model.config.resid_pdrop=0", "model.config.embd_pdrop=0", "model.config.attn_pdrop=0"]
    weights, losses = {}, {}
    for name, extra in {
        "fast": no_dropout,
        "pytorch": [*no_dropout, "train.fast_kernels=false"],
        "fast-dropout": [],
        "pytorch-dropout": ["train.fast_kernels=false"],
    }.items():
        caplog.clear()
        with caplog.at_level("INFO", logger="hfpipe"):
            run = train(
                load_recipe(
                    RECIPES / "gpt2-clm-pretrain.yaml", [*common, *extra, f"output_dir={tmp_path / name}"]
                )
            )
        logged = "fast kernels: CPU dropout masks in bulk, gelu_new -> fused tanh GELU in 2 module(s)"
        assert (logged in caplog.text) == (not name.startswith("pytorch"))
        weights[name] = load_file(run / "model.safetensors")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if r["type"] == "train"]
    worst = max((weights["fast"][k] - weights["pytorch"][k]).abs().max().item() for k in weights["fast"])
    assert worst < 1e-5
    assert any(
        (weights["fast-dropout"][k] - weights["pytorch-dropout"][k]).abs().max().item() > 1e-3
        for k in weights["fast"]
    )
    for name in ("fast-dropout", "pytorch-dropout"):  # both learn (measured: 5.70 -> 5.22 for fast)
        assert sum(losses[name][-3:]) / 3 < sum(losses[name][:3]) / 3 - 0.25, losses[name]

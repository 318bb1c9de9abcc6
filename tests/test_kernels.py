"""train.fast_kernels (hfpipe/kernels.py): the same functions as the model's and PyTorch's, computed faster."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import RECIPES, TINY_GPT2

from hfpipe.kernels import FastKernels, scale_and_clip_

CPU = SimpleNamespace(device=torch.device("cpu"), scaler=None, distributed_type=DistributedType.NO)
ON = SimpleNamespace(fast_kernels=True, compile=False)


def test_gelu_new_and_sdpa_run_as_the_same_functions_and_the_model_gets_its_own_back(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=16, vocab_size=50, attn_pdrop=0.1)
    model = GPT2LMHeadModel(config).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # padding: eager and SDPA get their own forms of the mask
    before = model(ids, attention_mask=mask).logits
    kernels = FastKernels(model, ON, CPU)
    assert kernels.description == (
        "CPU dropout masks in bulk, eager attention (SDPA falls back to it with dropout on CPU), "
        "gelu_new -> fused tanh GELU in 3 module(s), foreach gradient scaling and clipping"
    )
    assert all(type(block.mlp.act).__name__ == "GELUTanh" for block in model.transformer.h)
    assert model.config._attn_implementation == "eager"
    assert (model(ids, attention_mask=mask).logits - before)[:, :11].abs().max().item() < 1e-5
    model.save_pretrained(tmp_path)
    assert '"activation_function": "gelu_new"' in (tmp_path / "config.json").read_text()
    kernels.restore()  # fit's end: the model's own modules and attention, the exact function that reloads
    assert all(type(block.mlp.act).__name__ == "NewGELUActivation" for block in model.transformer.h)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(model(ids, attention_mask=mask).logits, before)
    assert torch.nn.functional.dropout.__module__ == "torch.nn.functional"  # PyTorch's again
    off = FastKernels(model, SimpleNamespace(fast_kernels=False, compile=False), CPU)
    assert off.description is None and not off.foreach_grads
    assert type(model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    # attention a recipe names (model.attn_implementation) is kept; no attention dropout, nothing to gain
    for named, model_config in (
        ("sdpa", config),
        (None, GPT2Config(**{**config.to_dict(), "attn_pdrop": 0.0})),
    ):
        kept = FastKernels(GPT2LMHeadModel(model_config), ON, CPU, attention=named)
        assert "eager" not in kept.description
        kept.restore()


def test_bulk_dropout_is_bernoulli_scaled_seeded_by_torch_and_differentiable():
    import torch.nn.functional as F

    from hfpipe.kernels import bulk_dropout

    pytorch_dropout = F.dropout
    restore = bulk_dropout()
    try:
        x = torch.ones(400, 500, requires_grad=True)
        torch.manual_seed(0)
        first, second = F.dropout(x, 0.1), F.dropout(x, 0.1)
        torch.manual_seed(0)
        assert torch.equal(F.dropout(x, 0.1), first)  # torch's seed (and a checkpoint's RNG state) decides
        assert not torch.equal(first, second)
        torch.manual_seed(0)
        assert not torch.equal(pytorch_dropout(x, 0.1), first)  # the bulk path ran, not PyTorch's
        torch.manual_seed(0)
        F.dropout(x, 0.1)
        one_draw = torch.get_rng_state()  # ... and took exactly one draw from torch's generator
        torch.manual_seed(0)
        torch.randint(0, 2**62, ())
        assert torch.equal(torch.get_rng_state(), one_draw)
        kept = first.detach() > 0
        assert kept.float().mean().item() == pytest.approx(0.9, abs=0.005)  # 200,000 draws: 3.7 sigma
        assert torch.equal(first.detach()[kept], torch.full((int(kept.sum()),), 1 / 0.9))
        first.sum().backward()
        assert torch.equal(x.grad, first.detach())  # d(x * mask)/dx is the mask
        masks = torch.stack([F.dropout(torch.ones(20_000), 0.5) > 0 for _ in range(20)]).float()
        off_diagonal = torch.corrcoef(masks) - torch.eye(20)
        assert off_diagonal.abs().max().item() < 0.04  # successive masks independent (5.7 sigma)
        module = torch.nn.Dropout(0.3).train()  # nn.Dropout goes through F.dropout
        assert (module(torch.ones(20_000)) > 0).float().mean().item() == pytest.approx(0.7, abs=0.015)
        y = torch.ones(20_000)
        assert F.dropout(y, 0.2, inplace=True) is y and (y > 0).float().mean().item() == pytest.approx(
            0.8, abs=0.015
        )
        # PyTorch's own: evaluation, p = 0 or 1, other dtypes
        assert torch.equal(F.dropout(x, 0.1, training=False), x)
        assert torch.equal(F.dropout(x, 0.0), x) and not F.dropout(x, 1.0).any()
        half = torch.ones(1000, dtype=torch.float64)
        torch.manual_seed(1)
        theirs = F.dropout(half, 0.5)
        torch.manual_seed(1)
        assert torch.equal(theirs, pytorch_dropout(half, 0.5))
    finally:
        restore()
    assert F.dropout is pytorch_dropout


def test_dropout_is_put_back_after_overlapping_users_and_a_failed_start(monkeypatch):
    import torch.nn.functional as F

    import hfpipe.kernels as kernels
    from hfpipe.kernels import bulk_dropout

    pytorch_dropout = F.dropout
    first, second = bulk_dropout(), bulk_dropout()
    first()
    first()  # a second call of the same restore changes nothing
    assert F.dropout is not pytorch_dropout  # the other user still trains
    second()
    assert F.dropout is pytorch_dropout

    def broken(model):
        raise RuntimeError("cannot swap")

    monkeypatch.setattr(kernels, "fast_activations", broken)
    with pytest.raises(RuntimeError, match="cannot swap"):
        FastKernels(torch.nn.Linear(2, 2), ON, CPU)
    assert F.dropout is pytorch_dropout


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


@pytest.mark.parametrize(("fused", "wrapped"), [(True, False), (True, True), (False, False)])
def test_a_fused_adamw_step_takes_the_scaling_and_clipping_in_its_kernel(fused, wrapped):
    """With the optimizer given (bare, or under a wrapper's .optimizer as Accelerate's), a fused AdamW
    divides by the coefficient as it reads the gradients (no multiply first): the same weights as
    multiplying first; the scale is gone once its step is done."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    shapes = [(16, 8), (8,), (3, 3, 3)]
    grads = [torch.randn(s) * 3 for s in shapes]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours = torch.optim.AdamW(ours, lr=0.1, weight_decay=0.1, fused=fused or None)
    opt_theirs = torch.optim.AdamW(theirs, lr=0.1, weight_decay=0.1, fused=fused or None)
    for step in range(3):
        for a, b, g in zip(ours, theirs, grads, strict=True):
            a.grad, b.grad = (g * (step + 1)).clone(), (g * (step + 1)).clone()
        max_norm = 0.5 if step < 2 else None  # the last step has nothing to multiply
        factor = torch.tensor(0.25) if step < 2 else None
        scale_and_clip_(ours, factor, max_norm, SimpleNamespace(optimizer=opt_ours) if wrapped else opt_ours)
        assert hasattr(opt_ours, "grad_scale") == (fused and step < 2)
        # fused: the gradients are left for the kernel to scale; the default loop gets them multiplied
        untouched = torch.equal(ours[0].grad, grads[0] * (step + 1))
        assert untouched == (fused or step == 2)
        if factor is not None:
            for b in theirs:
                b.grad.mul_(factor)
            torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        opt_ours.step()
        opt_theirs.step()
        assert not hasattr(opt_ours, "grad_scale")  # for that one step only
        for a, b in zip(ours, theirs, strict=True):
            assert (a - b).abs().max().item() < 1e-6


def test_a_run_with_fast_kernels_trains_the_weights_pytorch_s_ops_train(tmp_path, caplog):
    """GPT-2 (gelu_new), accumulation (gradient scaling) and a clip at 0.5, dropout off (with dropout on
    the masks differ by design): the GELU swap and the foreach pass give the weights the model's own
    modules and clip_grad_norm_ give, and the model that comes back has its own modules."""
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
        *(f"model.config.{key}=0.0" for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
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
            "fast kernels: CPU dropout masks in bulk, gelu_new -> fused tanh GELU in 2 module(s), "
            "foreach gradient scaling and clipping"
        )
        assert (logged in caplog.text) == (name == "fast")
        weights[name] = load_file(run / "model.safetensors")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if r["type"] == "train"]
    worst = max((weights["fast"][k] - weights["pytorch"][k]).abs().max().item() for k in weights["fast"])
    assert worst < 1e-5
    assert sum(losses["fast"][-3:]) / 3 < sum(losses["fast"][:3]) / 3 - 0.25, losses["fast"]


def test_a_run_with_dropout_trains_with_bulk_masks_and_eager_attention_and_learns(tmp_path, caplog):
    """Dropout on (GPT-2's defaults, attention dropout too): the log names the kernels, the run learns, and
    torch's dropout is PyTorch's again afterwards."""
    import torch.nn.functional as F

    from hfpipe.api import train
    from hfpipe.recipe import load_recipe

    pytorch_dropout = F.dropout
    overrides = [*TINY_GPT2, "data.builtin.train_size=200", "data.builtin.test_size=0", "train.epochs=1"]
    with caplog.at_level("INFO", logger="hfpipe"):
        run = train(load_recipe(RECIPES / "gpt2-clm-pretrain.yaml", [*overrides, f"output_dir={tmp_path}"]))
    assert "fast kernels: CPU dropout masks in bulk, eager attention" in caplog.text
    assert "sdpa attention" in caplog.text  # what the model was built with
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25, losses
    assert F.dropout is pytorch_dropout

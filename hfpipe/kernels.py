"""Faster kernels for hfpipe's training step, each computing the function PyTorch's own code computes
(`train.fast_kernels`, on by default; measured in `make bench`, entry peers).

- Dropout on CPU. On this CPU (no MKL fast path: it is not an Intel one) PyTorch draws a CPU dropout
  mask element by element from its Mersenne Twister (bernoulli_, ~10 ns an element here: 10-13% of a
  small model's step). During training, `torch.nn.functional.dropout` (which nn.Dropout and the models'
  functional calls go through) draws the mask of a float32 CPU tensor in bulk from numpy's PCG64
  instead: 32 random bits per element, dropped iff below p x 2^32 (p resolved to 2^-32), kept elements
  scaled by 1 / (1 - p). Each mask's generator is seeded by one draw from torch's CPU generator, so
  train.seed reproduces a run and a checkpoint's RNG state resumes it; the masks are not the ones
  torch's generator would have drawn. Other devices and dtypes, and in-place calls on tensors that
  require grad, keep PyTorch's dropout.
- Attention dropout. PyTorch's scaled_dot_product_attention falls back to its reference math on CPU
  when dropout is on (and draws that mask with bernoulli_). A model that transformers gave SDPA
  attention (the recipe names no model.attn_implementation) and that trains with attention dropout
  runs transformers' eager attention during training: the same math, its dropout through the bulk
  masks above.
- gelu_new (GPT-2, T5 v1.1, GPT-Neo, ...) runs during training as PyTorch's fused tanh-approximation
  GELU (transformers' GELUTanh, "equivalent to NewGELU ... but much faster"): one kernel instead of
  eight elementwise ones forward and more backward, 13% of a small GPT-2's step here. Only the modules
  are swapped, and swapped back when training ends: the model's config, the saved model and the model
  fit returns keep gelu_new.
- The step's gradient scaling (to a mean over its items: a Python loop of one multiply per parameter)
  and norm clipping (clip_grad_norm_: the norms, then a second multiply of every gradient) are one
  foreach pass: the norms of all gradients in one call, then one multiply of all of them by
  factor x clip coefficient; with PyTorch's fused AdamW (hfpipe's optimizer on CPU and CUDA) not even
  that: its kernel divides each gradient by the optimizer's grad_scale as it reads it for the update
  (the hook torch's GradScaler uses), so the coefficient goes there for the next step only, and no
  separate multiply pass over the gradients runs.

Everything is undone when training ends (restore(), in fit's finally): the model that is scored, saved
and returned has its own modules and attention, and torch's dropout is PyTorch's again.
`train.fast_kernels: false` runs the model's own modules, PyTorch's dropout and clip_grad_norm_.

An earlier version drew the bulk masks through a torch function mode, which intercepts every torch call
of the step: its cost on all the other ops ate most of the gain (0.93x-1.08x in the loop). Replacing the
one function costs nothing elsewhere.
"""

from __future__ import annotations

import threading

__all__ = ["FastKernels", "bulk_dropout", "fast_activations", "scale_and_clip_"]

# config keys of attention-probability dropout (BERT, GPT-2, BART / Marian / Whisper, DistilBERT; T5's
# dropout_rate is its attention dropout too)
_ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "dropout_rate")


class FastKernels:
    """What train.fast_kernels turns on for a model about to train with an Accelerator (the training loop and
    plan's step timing use the same): `foreach_grads`, whether the step's gradient scaling and clipping
    go through scale_and_clip_; `description` for the log (None when off). Swaps the model's gelu_new
    modules, its attention implementation and torch's dropout until restore(), which fit calls when
    training ends (evaluations during training run the swapped modules, in eval mode without dropout;
    the model returned, scored on the test split and saved has its own). `attention` is the recipe's
    model.attn_implementation: a model whose attention the recipe names keeps it."""

    def __init__(self, model, spec, accelerator, attention: str | None = None) -> None:
        from accelerate.utils import DistributedType

        # Compiled graphs make their own kernels (train.compile, or a dynamo backend from an Accelerate
        # config). The foreach pass needs the gradients in plain tensors: not under DeepSpeed / FSDP
        # (their engines clip) nor fp16's grad scaler (Accelerate unscales before it clips).
        plugin = getattr(accelerator.state, "dynamo_plugin", None) if hasattr(accelerator, "state") else None
        compiled = spec.compile or getattr(getattr(plugin, "backend", None), "value", "NO") != "NO"
        on = spec.fast_kernels and not compiled
        self.foreach_grads = bool(
            on
            and accelerator.scaler is None
            and accelerator.distributed_type
            in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        )
        self.description = None
        self._swapped: list = []
        self._attention: tuple | None = None  # (model, its own implementation)
        self._dropout = None
        if not on:
            return
        try:
            parts = []
            if accelerator.device.type == "cpu":
                self._dropout = bulk_dropout()
                parts.append("CPU dropout masks in bulk")
                if attention is None:
                    self._attention = _eager_for_dropout(accelerator, model)
                    if self._attention:
                        parts.append("eager attention (SDPA falls back to it with dropout on CPU)")
            self._swapped = fast_activations(model)
            if self._swapped:
                parts.append(f"gelu_new -> fused tanh GELU in {len(self._swapped)} module(s)")
            if self.foreach_grads:
                parts.append("foreach gradient scaling and clipping")
            self.description = ", ".join(parts) or None
        except BaseException:
            self.restore()  # nothing swapped may outlive a failed start
            raise

    def restore(self) -> None:
        """Put PyTorch's dropout back, and the model's own activation modules and attention (each undone
        even when another cannot be)."""
        try:
            if self._dropout is not None:
                self._dropout, undo = None, self._dropout
                undo()
        finally:
            for module, name, original in self._swapped:
                setattr(module, name, original)
            self._swapped = []
            if self._attention is not None:
                (model, implementation), self._attention = self._attention, None
                model.set_attn_implementation(implementation)


def _eager_for_dropout(accelerator, model) -> tuple | None:
    """Switch a model with SDPA attention and attention dropout to eager attention; (model, "sdpa"), or
    None when it stays as it is."""
    inner = accelerator.unwrap_model(model) if hasattr(accelerator, "unwrap_model") else model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # under an adapter
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    if getattr(config, "sub_configs", None):  # composite models: one string would set every part
        return None
    if not any(isinstance(p := getattr(config, k, None), float) and p > 0 for k in _ATTENTION_DROPOUT_KEYS):
        return None
    can = getattr(inner, "_can_set_attn_implementation", None)
    if can is None or not can():
        return None
    inner.set_attn_implementation("eager")
    return inner, "sdpa"


_BULK = {"users": 0, "own": None}  # torch.nn.functional.dropout is replaced once, however many fits
_BULK_LOCK = threading.Lock()
_BITS = threading.local()  # each thread re-seeds a generator of its own


def bulk_dropout():
    """Route torch.nn.functional.dropout of float32 CPU tensors in training through bulk masks (the module
    docstring); returns the function that puts PyTorch's dropout back (once the last user is done)."""
    import torch.nn.functional as F

    with _BULK_LOCK:
        if _BULK["users"] == 0:
            _BULK["own"] = F.dropout
            F.dropout = _dropout
        _BULK["users"] += 1
    done = False

    def restore() -> None:
        nonlocal done
        with _BULK_LOCK:
            if done:
                return
            done = True
            _BULK["users"] -= 1
            if _BULK["users"] == 0 and F.dropout is _dropout:
                F.dropout = _BULK["own"]

    return restore


def _dropout(input, p=0.5, training=True, inplace=False):
    import numpy as np
    import torch

    threshold = round(p * 2**32) if 0.0 < p < 1.0 else 0
    if (
        not training
        or not 0 < threshold < 2**32
        or input.device.type != "cpu"
        or input.dtype != torch.float32
        or (inplace and input.requires_grad)
        or torch.overrides.has_torch_function_unary(input)
    ):
        return _BULK["own"](input, p, training, inplace)
    bits = getattr(_BITS, "generator", None)
    if bits is None:
        bits = _BITS.generator = np.random.PCG64(0)
    # One draw from torch's CPU generator (train.seed, a checkpoint's RNG state) picks the state and the
    # stream (PCG's increment, odd) of this mask's generator.
    seed = int(torch.randint(0, 2**62, (), device="cpu"))
    bits.state = {
        "bit_generator": "PCG64",
        "state": {"state": (seed * 0x9E3779B97F4A7C15F39CC0605CEDC835) % 2**128, "inc": (seed << 1) | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    n = input.numel()
    uniform = bits.random_raw((n + 1) // 2).view(np.uint32)[:n]
    keep = np.multiply(uniform >= threshold, np.float32(1.0 / (1.0 - p)), dtype=np.float32)
    mask = torch.from_numpy(keep).view(input.shape)
    return input.mul_(mask) if inplace else input * mask


def fast_activations(model) -> list:
    """Swap gelu_new modules for PyTorch's fused tanh GELU (the same function); (parent, name, original)
    of each swap."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped.append((module, name, child))
    return swapped


def scale_and_clip_(parameters, factor=None, max_norm: float | None = None, optimizer=None):
    """Multiply the gradients by `factor` (a scalar tensor) and clip their global L2 norm to `max_norm`,
    in one foreach pass: what `grad.mul_(factor)` for each parameter and then
    `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` compute. Returns the norm before clipping (after
    scaling), or None without max_norm.

    With `optimizer` (the step's next optimizer, under Accelerate's wrapper or not) a fused torch Adam /
    AdamW and float32 / bf16 / fp16 gradients, the multiply is left to its next step, which then needs no
    separate pass over the gradients: its `grad_scale` (the attribute torch's GradScaler sets; the fused
    kernel divides each gradient by it as it reads it, in the same pass as the update) is set to
    1 / (factor x clip coefficient) and removed again when that step is done. The step must come next,
    before the gradients are read again."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # under Accelerate's AcceleratedOptimizer
    deferred = (
        isinstance(inner, torch.optim.Adam)  # AdamW too
        and getattr(inner, "_step_supports_amp_scaling", False)
        and all(group.get("fused") for group in inner.param_groups)
    )
    if deferred and hasattr(inner, "grad_scale"):
        del inner.grad_scale  # a step that never ran

    groups: dict = {}  # foreach kernels take tensors of one device and dtype
    for parameter in parameters:
        if parameter.grad is not None:
            groups.setdefault((parameter.grad.device, parameter.grad.dtype), []).append(parameter.grad)
    if not groups:
        return None
    coefficient, total = factor, None
    device = next(iter(groups))[0]  # of the norm and of a scale for the optimizer
    double = any(dtype == torch.float64 for _, dtype in groups)
    if max_norm:
        wide = torch.float64 if double else torch.float32
        norms = [torch.stack(torch._foreach_norm(g)).to(device, wide) for g in groups.values()]
        total = torch.linalg.vector_norm(torch.cat(norms))
        if factor is not None:
            total = total * factor
        clip = (max_norm / (total + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s coefficient
        coefficient = clip if factor is None else factor * clip
    # the kernel reads a float32 scale: float64 gradients keep the multiply, exact in their precision
    if coefficient is not None and deferred and not double:
        inner.grad_scale = (1.0 / coefficient).to(device=device, dtype=torch.float32)

        def done(optimizer, args, kwargs) -> None:  # this step only
            handle.remove()
            optimizer.__dict__.pop("grad_scale", None)

        handle = inner.register_step_post_hook(done)
    elif coefficient is not None:
        for (device, dtype), grads in groups.items():
            torch._foreach_mul_(grads, coefficient.to(device, dtype))
    return total

"""Faster kernels for hfpipe's training step, each computing the function PyTorch's own op computes
(`train.fast_kernels`, on by default; measured in `make bench`, entry peers).

- CPU dropout. PyTorch draws a CPU dropout mask one Mersenne-Twister number at a time (~12 ns an
  element: 10-13% of a small model's training step on this machine, more than its optimizer). Inside the
  training forward, dropout masks on CPU come from numpy's PCG64 in bulk instead (~3 ns an element),
  seeded by one draw from torch's CPU generator: the same Bernoulli(1 - p) mask scaled by 1 / (1 - p),
  reproducible from train.seed and restored with the RNG state of a checkpoint, but not the mask
  torch's generator would have drawn. Attention dropout inside `scaled_dot_product_attention` (BERT,
  GPT-2) is done the same way, around the reference math of that function.
- gelu_new (GPT-2, T5 v1.1, GPT-Neo, ...) runs as PyTorch's fused tanh-approximation GELU
  (transformers' GELUTanh, "equivalent to NewGELU ... but much faster"): one kernel instead of eight.
  Only the module is swapped; the model's config, and so the saved model, keep gelu_new.
- The step's gradient scaling (to a mean over its items) and norm clipping are one foreach pass over
  the gradients (norms of all tensors in one call, one multiply of all of them) instead of a Python loop
  over the parameters and then clip_grad_norm_, whose foreach path PyTorch leaves to GPUs.

`train.fast_kernels: false` runs PyTorch's own ops: the masks a plain PyTorch loop would draw.
"""

from __future__ import annotations

import math

__all__ = ["CpuDropout", "FastKernels", "fast_activations", "scale_and_clip_"]


class FastKernels:
    """What train.fast_kernels turns on for a model about to train with an Accelerator (the runner and
    plan's step timing use the same): `dropout`, the context for the training forward; `foreach_grads`,
    whether the step's gradient scaling and clipping go through scale_and_clip_; `description` for the
    log (None when off). Swaps the model's gelu_new modules in place until restore(), which fit calls
    before its final evaluation: the model evaluated, returned and saved is the one that reloads."""

    def restore(self) -> None:
        """Put the model's own activation modules back."""
        for module, name, original in self._swapped:
            setattr(module, name, original)
        self._swapped = []

    def __init__(self, model, spec, accelerator) -> None:
        import contextlib

        from accelerate.utils import DistributedType

        # Compiled graphs make their own kernels. The foreach pass needs the gradients in plain tensors:
        # not under DeepSpeed / FSDP (their engines clip) nor fp16's grad scaler (Accelerate unscales
        # before it clips).
        on = spec.fast_kernels and not spec.compile
        cpu = accelerator.device.type == "cpu"
        self.dropout = CpuDropout() if on and cpu else contextlib.nullcontext()
        self.foreach_grads = bool(
            on
            and accelerator.scaler is None
            and accelerator.distributed_type
            in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        )
        self.description = None
        self._swapped: list = []
        if on:
            self._swapped = fast_activations(model)
            swapped = len(self._swapped)
            self.description = (
                ("CPU dropout masks in bulk, " if cpu else "")
                + f"gelu_new -> fused tanh GELU in {swapped} module(s)"
                + (", foreach gradient scaling and clipping" if self.foreach_grads else "")
            )


def _keep_mask(like, p: float):
    """A dropout mask for `like`: 1 / (1 - p) with probability 1 - p, else 0, in like's dtype."""
    import numpy as np
    import torch

    seed = int(torch.randint(0, 2**62, (1,)))  # one draw from torch's CPU generator (train.seed, resume)
    uniform = np.random.Generator(np.random.PCG64(seed)).random(like.numel(), dtype=np.float32)
    mask = torch.from_numpy(uniform).view(like.shape)
    return mask.ge_(p).mul_(1.0 / (1.0 - p)).to(like.dtype)  # uniform in [0, 1): kept iff >= p


def _eligible(tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.is_floating_point()


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class CpuDropout:
    """A context (a torch function mode) in which dropout on CPU tensors draws its masks in bulk."""

    def __init__(self) -> None:
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        dropout, sdpa = F.dropout, F.scaled_dot_product_attention

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is dropout:
                    return _dropout(func, args, kwargs)
                if func is sdpa:
                    return _attention(func, args, kwargs)
                return func(*args, **kwargs)

        self._mode = _Mode()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _dropout(func, args, kwargs):
    names = ("input", "p", "training", "inplace")
    bound = {"p": 0.5, "training": True, "inplace": False, **dict(zip(names, args, strict=False)), **kwargs}
    x, p = bound["input"], bound["p"]
    if set(bound) != set(names) or not bound["training"] or not 0 < p < 1 or not _eligible(x):
        return func(*args, **kwargs)
    mask = _keep_mask(x, p)
    return x.mul_(mask) if bound["inplace"] else x * mask


def _attention(func, args, kwargs):
    """scaled_dot_product_attention with dropout, as PyTorch's reference math computes it (its CPU
    kernels fall back to that math whenever dropout is on), the dropout mask drawn in bulk."""
    import torch

    bound = {**dict(zip(_SDPA_ARGS, args, strict=False)), **kwargs}
    q, k, v = bound.get("query"), bound.get("key"), bound.get("value")
    p = bound.get("dropout_p", 0.0)
    mask = bound.get("attn_mask")
    if (
        not set(bound) <= set(_SDPA_ARGS)
        or q is None
        or not 0 < p < 1
        or not all(t is not None and _eligible(t) for t in (q, k, v))
        or (mask is not None and mask.dtype != torch.bool)  # additive float masks: PyTorch's own path
    ):
        return func(*args, **kwargs)
    if bound.get("enable_gqa") and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
        v = v.repeat_interleave(q.size(-3) // v.size(-3), dim=-3)
    scale = bound.get("scale")
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    keep = mask
    if bound.get("is_causal"):
        causal = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        keep = causal if keep is None else keep & causal
    if keep is not None:
        # The lowest finite value, not -inf: a query that may see no key (padding) gets finite weights
        # instead of NaN, and its output is never used.
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights * _keep_mask(weights, p), v)


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


def scale_and_clip_(parameters, factor=None, max_norm: float | None = None):
    """Multiply the gradients by `factor` (a scalar tensor) and clip their global L2 norm to `max_norm`,
    in one foreach pass: what `grad.mul_(factor)` for each parameter and then
    `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` compute. Returns the norm before clipping (after
    scaling), or None without max_norm."""
    import torch

    groups: dict = {}  # foreach kernels take tensors of one device and dtype
    for parameter in parameters:
        if parameter.grad is not None:
            groups.setdefault((parameter.grad.device, parameter.grad.dtype), []).append(parameter.grad)
    if not groups:
        return None
    coefficient, total = factor, None
    if max_norm:
        device = next(iter(groups))[0]
        norms = [n.to(device, torch.float32) for g in groups.values() for n in torch._foreach_norm(g)]
        total = torch.linalg.vector_norm(torch.stack(norms))
        if factor is not None:
            total = total * factor
        clip = (max_norm / (total + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s coefficient
        coefficient = clip if factor is None else factor * clip
    if coefficient is not None:
        for (device, dtype), grads in groups.items():
            torch._foreach_mul_(grads, coefficient.to(device, dtype))
    return total

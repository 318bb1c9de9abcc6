"""Faster kernels for hfpipe's training step, each computing the function PyTorch's own code computes
(`train.fast_kernels`, on by default; measured in `make bench`, entry peers).

- gelu_new (GPT-2, T5 v1.1, GPT-Neo, ...) runs during training as PyTorch's fused tanh-approximation
  GELU (transformers' GELUTanh, "equivalent to NewGELU ... but much faster"): one kernel instead of
  eight elementwise ones forward and more backward, 13% of a small GPT-2's step here. Only the modules
  are swapped, and swapped back when training ends: the model's config, the saved model and the model
  fit returns keep gelu_new.
- The step's gradient scaling (to a mean over its items: a Python loop of one multiply per parameter)
  and norm clipping (clip_grad_norm_: the norms, then a second multiply of every gradient) are one
  foreach pass: the norms of all gradients in one call, then one multiply of all of them by
  factor x clip coefficient.

`train.fast_kernels: false` runs the model's own modules and PyTorch's clip_grad_norm_.

Tried and left out: dropout masks drawn in bulk from numpy's PCG64 instead of PyTorch's CPU bernoulli_
(4x faster on the op, 10-13% of a small model's step), through a torch function mode. In the training
loop it was not a consistent gain on this machine (0.93x-1.08x across the three peer models) and it
changes the dropout masks a seed gives.
"""

from __future__ import annotations

__all__ = ["FastKernels", "fast_activations", "scale_and_clip_"]


class FastKernels:
    """What train.fast_kernels turns on for a model about to train with an Accelerator (the runner and
    plan's step timing use the same): `foreach_grads`, whether the step's gradient scaling and clipping
    go through scale_and_clip_; `description` for the log (None when off). Swaps the model's gelu_new modules in place until restore(), which fit calls
    when training ends (evaluations during training run the swapped modules; the model returned, scored
    on the test split and saved has its own)."""

    def __init__(self, model, spec, accelerator) -> None:
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
        if on:
            self._swapped = fast_activations(model)
            swapped = len(self._swapped)
            self.description = f"gelu_new -> fused tanh GELU in {swapped} module(s)" + (
                ", foreach gradient scaling and clipping" if self.foreach_grads else ""
            )

    def restore(self) -> None:
        """Put the model's own activation modules back."""
        for module, name, original in self._swapped:
            setattr(module, name, original)
        self._swapped = []


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
        wide = torch.float64 if any(dtype == torch.float64 for _, dtype in groups) else torch.float32
        norms = [n.to(device, wide) for g in groups.values() for n in torch._foreach_norm(g)]
        total = torch.linalg.vector_norm(torch.stack(norms))
        if factor is not None:
            total = total * factor
        clip = (max_norm / (total + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s coefficient
        coefficient = clip if factor is None else factor * clip
    if coefficient is not None:
        for (device, dtype), grads in groups.items():
            torch._foreach_mul_(grads, coefficient.to(device, dtype))
    return total

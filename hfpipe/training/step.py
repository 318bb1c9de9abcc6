"""The train step: the one place where a batch goes forward and backward and the optimizer steps. Training
runs it for every batch; `hfpipe plan` times this same step."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from hfpipe.errors import TrainingError

log = logging.getLogger("hfpipe")


def make_optimizer(model, settings):
    """AdamW over the trainable parameters, without weight decay on biases and normalisation weights."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # PyTorch's fused AdamW updates every tensor in one kernel: 4-6x faster than its default per-tensor
    # loop on this CPU (0.5 against 3.2 ms a step for the quickstart model, a tenth of its step time).
    # It needs floating-point parameters on a device it has kernels for; otherwise the default loop.
    params = decay + no_decay
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups,
        lr=settings.lr,
        betas=tuple(settings.adam_betas),
        eps=settings.adam_epsilon,
        fused=fused or None,
    )


def _first_tensor(batch):
    return next(v for v in batch.values() if hasattr(v, "shape"))


def examples_in(batch) -> int:
    """The batch's number of examples (rows of its first tensor: input_ids, pixel_values, ...)."""
    return _first_tensor(batch).shape[0]


def loss_items(batch, kind: str):
    """How many items the batch's mean loss is over (a device tensor): examples, or target tokens."""
    import torch

    if kind == "examples" or "labels" not in batch:
        return torch.tensor(examples_in(batch), device=_first_tensor(batch).device)
    labels = batch["labels"][:, 1:] if kind == "next_tokens" else batch["labels"]
    return (labels != -100).sum()


def smoothed_loss(outputs, labels, smoothing: float, shift: bool):
    """Cross-entropy of the model's logits with label smoothing; -100 labels are ignored.

    Token-level heads (logits batch x length x vocab) average over target tokens, as the models' own loss
    does; `shift` for causal LMs, whose logits at position t predict the label at t + 1.
    """
    import torch.nn.functional as F

    logits = outputs.logits
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1).to(logits.device),
        ignore_index=-100,
        label_smoothing=smoothing,
    )


@dataclass
class StepOutcome:
    """What one forward pass did: its loss (a device tensor, not synced), the tokens it processed, its
    examples; `synced` when it ended an optimizer step; `skipped` when its loss was not finite."""

    loss: object = None
    tokens: object = None
    examples: int = 0
    synced: bool = False
    skipped: bool = False


class TrainStep:
    """One forward pass of a batch, its backward, and on the pass that ends an accumulation group the
    gradients' scaling and clipping and the optimizer and scheduler steps.

    With several passes or processes to a step, the gradient is the mean over all of the step's items
    (examples, or target tokens: Task.loss_items), as one batch of them would give, however the items fall
    into batches and processes. A loss that is not finite stops the run before it reaches the weights, or
    (train.on_nonfinite_loss: skip) drops its batch; every process decides together.
    """

    def __init__(self, model, optimizer, scheduler, accelerator, task, settings, kernels=None) -> None:
        import torch
        from accelerate.utils import DistributedType

        self.model, self.optimizer, self.scheduler, self.accelerator = (
            model,
            optimizer,
            scheduler,
            accelerator,
        )
        self.task, self.settings = task, settings
        self.seq2seq = bool(getattr(accelerator.unwrap_model(model).config, "is_encoder_decoder", False))
        self.processes = accelerator.num_processes
        # DeepSpeed keeps the gradients inside its engine (no .grad to rescale): its steps average the
        # batches' means, as DeepSpeed does on its own.
        self.normalize = (
            self.processes * accelerator.gradient_accumulation_steps > 1
            and accelerator.distributed_type != DistributedType.DEEPSPEED
        )
        self.group_items = torch.zeros((), device=accelerator.device)
        self.foreach_grads = bool(kernels is not None and kernels.foreach_grads)
        # listed once: walking the module tree for them every step costs ~0.5 ms (a small model's 1%)
        self.trained = [p for p in model.parameters() if p.requires_grad]
        # Test hooks (fault injection): (loss, step) -> loss after the forward pass; (step) -> None after the
        # backward pass. Empty in a real run.
        self.loss_hooks: list[Callable] = []
        self.backward_hooks: list[Callable] = []

    def __call__(self, batch, state, batch_index: int = 0) -> StepOutcome:
        accelerator, settings = self.accelerator, self.settings
        with accelerator.accumulate(self.model):
            outputs = self.model(**batch)
            loss = outputs.loss
            if settings.label_smoothing:
                loss = smoothed_loss(outputs, batch["labels"], settings.label_smoothing, self.task.is_causal)
            for hook in self.loss_hooks:
                loss = hook(loss, state.step + 1)
            if not self._finite(loss, state, batch_index):
                self.optimizer.zero_grad(set_to_none=True)  # drops the step's gradients when it ends here
                if accelerator.sync_gradients:
                    self.group_items.zero_()
                return StepOutcome(skipped=True)
            if self.normalize:
                # The loss summed over this batch's items; once the step's batches are in (on every process),
                # the gradient becomes the mean over all of the step's items.
                items = loss_items(batch, self.task.loss_items)
                self.group_items += items
                accelerator.backward(loss * items)
            else:
                accelerator.backward(loss)
            for hook in self.backward_hooks:
                hook(state.step + 1)
            if accelerator.sync_gradients:
                self._update()
        return StepOutcome(loss.detach(), self._tokens(batch), examples_in(batch), accelerator.sync_gradients)

    def _tokens(self, batch):
        """The tokens a text batch holds (not its padding); an encoder-decoder's target tokens too. 0 for
        other inputs (Task.modality)."""
        if "input_ids" not in batch:
            return 0
        tokens = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        if self.seq2seq:
            tokens = tokens + (batch["labels"] != -100).sum()
        return tokens

    def _finite(self, loss, state, batch_index: int) -> bool:
        # One sync per pass: a non-finite loss must stop (or be skipped) before it reaches the weights, so
        # that no checkpoint ever holds them.
        import torch

        bad = ~torch.isfinite(loss.detach())
        if self.processes > 1:  # every process must skip (or stop) together: they meet in all-reduces
            bad = self.accelerator.reduce(bad.float(), "sum") > 0
        if not bad.item():
            return True
        if self.settings.on_nonfinite_loss == "stop":
            raise TrainingError(
                f"loss is {loss.item()} at step {state.step + 1} (epoch {state.epoch}, batch {batch_index}); "
                "lower train.lr or check the data. The last checkpoint is intact; "
                "train.on_nonfinite_loss: skip drops such batches instead"
            )
        state.skipped_nonfinite += 1
        log.warning("skipped a batch with loss %s at step %d", loss.item(), state.step + 1)
        return False

    def _update(self) -> None:
        """The end of an accumulation group: scale and clip the gradients, step the optimizer and schedule."""
        from hfpipe.kernels import scale_and_clip_

        accelerator, factor = self.accelerator, None
        if self.normalize:
            # backward() divided by the accumulation steps and the processes' gradients were averaged: undo
            # both, then divide by the step's items.
            total = accelerator.reduce(self.group_items, "sum") if self.processes > 1 else self.group_items
            factor = self.processes * accelerator.gradient_accumulation_steps / total.clamp(min=1)
            self.group_items.zero_()
        if self.foreach_grads:
            scale_and_clip_(self.trained, factor, self.settings.max_grad_norm, self.optimizer)
        else:  # Accelerate clips (DeepSpeed, FSDP, fp16's scaler)
            scale_and_clip_(self.trained, factor)  # one multiply (nothing without factor)
            if self.settings.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

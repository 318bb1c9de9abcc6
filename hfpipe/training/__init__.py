"""Training: one loop for every task, in named pieces.

batching.py    the length-grouped sampler, evaluation batches, the loaders, an epoch's batches
schedule.py    Schedule: total steps, steps per epoch, warmup, evaluations (training, plan, bench)
step.py        TrainStep: forward, backward, clipping, the optimizer step (plan times the same)
state.py       TrainState (saved in checkpoints), Clock (injectable), LogWindow
checkpoint.py  Checkpoints (save, resume, prune) and BestModel
callbacks.py   Callback and the standard ones: metrics.jsonl, trackers, console progress, early
               stopping, signal stop, fault injection (only when HFPIPE_FAULT is set)
trackers.py    the tracker registry (TensorBoard, MLflow): a new tracker is one class
loop.py        Loop.run(): the loop itself, about a page
fit.py         fit(): the pieces put together; make_accelerator
"""

from hfpipe.training.callbacks import Callback, TrainingInterrupted
from hfpipe.training.checkpoint import latest_checkpoint
from hfpipe.training.fit import FitResult, fit, make_accelerator, resolve_metric_for_best

__all__ = [
    "Callback",
    "FitResult",
    "TrainingInterrupted",
    "fit",
    "latest_checkpoint",
    "make_accelerator",
    "resolve_metric_for_best",
]

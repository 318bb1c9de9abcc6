"""Scaling: one process against two on this 2-core machine, `hfpipe train` in a child process."""

from __future__ import annotations

import os

from bench.common import benchmark, train_in_child


@benchmark("scaling")
def bench_scaling(steps: int = 150) -> dict:
    """One process against two on this 2-core machine: the same recipe and global batch (32), hfpipe train
    in a child (and its launcher); training examples/s (evaluation excluded)."""
    common = ["recipes/quickstart.yaml", "--overwrite", f"train.max_steps={steps}", "train.eval_every=never"]
    common += ["train.save_every=never", "train.early_stopping_patience=null", "data.builtin.test_size=0"]
    out: dict = {"steps": steps, "global_batch": 32, "cpus": os.cpu_count()}
    for processes in (1, 2):
        args = [
            *common,
            f"train.batch_size={32 // processes}",
            f"output_dir=/tmp/hfpipe-bench-scale{processes}",
        ]
        if processes > 1:
            args += ["--num-processes", str(processes)]
        metrics, _ = train_in_child(args)
        out[f"{processes}_process"] = {
            "train_s": metrics["train"]["train_s"],
            "examples_per_s": round(steps * 32 / metrics["train"]["train_s"], 1),
        }
    out["speedup_2_over_1"] = round(
        out["2_process"]["examples_per_s"] / out["1_process"]["examples_per_s"], 3
    )
    return out

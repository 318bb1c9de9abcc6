"""Precision, attention and compile switches: what each costs or saves hfpipe's loop on the quickstart BERT."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import benchmark, logged, loop_inputs, quickstart_run, say
from bench.loops import hfpipe_loop

ARMS = {
    "fp32 + sdpa (default)": (),
    "fp32 + eager attention": ("model.attn_implementation=eager",),
    "bf16 autocast": ("train.precision=bf16",),
    "fp32 + torch.compile": ("train.compile=true",),
}


@benchmark("precision")
def bench_precision(steps: int = 80, batch_size: int = 32) -> dict:
    """The quickstart BERT trained by hfpipe's loop with each precision / attention / compile switch:
    steady tokens/s (median of the logged windows after the first two) and the whole run's time."""
    import torch

    out: dict = {"steps": steps, "batch_size": batch_size, "torch_threads": torch.get_num_threads()}
    run_dir = Path("/tmp/hfpipe-bench-precision")
    for name, extra in ARMS.items():
        run = quickstart_run(steps, batch_size, (*extra, "train.log_every=10"))
        started = time.perf_counter()
        hfpipe_loop(*loop_inputs(run), run_dir)
        wall = time.perf_counter() - started
        windows = [record["tokens_per_s"] for record in logged(run_dir)]
        out[name] = {
            "steady_tokens_per_s": round(statistics.median(windows[2:]), 1),
            "run_s": round(wall, 2),
        }
        say(name, out[name])
    base = out["fp32 + sdpa (default)"]["steady_tokens_per_s"]
    for name in ARMS:
        out[name]["speed_vs_default"] = round(out[name]["steady_tokens_per_s"] / base, 3)
    return out

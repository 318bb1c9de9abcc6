"""Model FLOPs utilization of a training step on this CPU."""

from __future__ import annotations

import time

from bench.common import benchmark, bundled_run, minilm_dir, say


def _matmul_peak(size: int = 2048, repeat: int = 10) -> float:
    """FLOP/s of a large fp32 matrix multiply on this CPU (the best of a few rounds)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        best = max(best, 2 * size**3 * repeat / (time.perf_counter() - start))
    return best


def _batches(run, batch_size: int, count: int) -> list:
    """The first `count` length-grouped training batches of a prepared run."""
    from torch.utils.data import DataLoader

    from hfpipe.training.batching import BatchSampler, split_lengths

    train, lengths = split_lengths(run.splits["train"])
    loader = DataLoader(
        train,
        batch_sampler=BatchSampler(lengths, batch_size, 0, True),
        collate_fn=run.task.collator(run.tokenizer, run.recipe),
    )
    return [b for _, b in zip(range(count), loader, strict=False)]


def _measure(model, batches: list, steps: int, peak: float) -> dict:
    """FLOPs of forward + backward of each batch (counted), then the seconds of `steps` optimizer steps."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    flops = []
    for batch in batches[:steps]:
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
        optimizer.zero_grad(set_to_none=True)
        flops.append(counter.get_total_flops())
    for batch in batches[:2]:  # warm-up
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for batch in batches[:steps]:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    achieved = sum(flops) / seconds
    return {
        "parameters": model.num_parameters(),
        "gflops_per_step": round(sum(flops) / steps / 1e9, 2),
        "step_s": round(seconds / steps, 4),
        "achieved_gflops": round(achieved / 1e9, 1),
        "mfu": round(achieved / peak, 3),
    }


@benchmark("mfu")
def bench_mfu(batch_size: int = 32, steps: int = 12) -> dict:
    """Model FLOPs utilization of a training step: FLOPs of forward + backward (counted by
    torch.utils.flop_counter on a real batch) per second of hfpipe's step, against the measured fp32
    matrix-multiply peak of this CPU."""
    peak = _matmul_peak()
    out: dict = {"matmul_peak_gflops": round(peak / 1e9, 1), "batch_size": batch_size}
    models = {"quickstart BERT (2 x 128)": ("quickstart.yaml", [])}
    minilm = minilm_dir()
    if minilm is not None:
        models["all-MiniLM-L6-v2"] = (
            "quickstart.yaml",
            ["~model.architecture", "~model.config", "~tokenizer", f"model.name_or_path={minilm}"],
        )
    for name, (recipe_name, extra) in models.items():
        overrides = [*extra, f"train.batch_size={batch_size}", "output_dir=/tmp/hfpipe-bench-mfu"]
        run = bundled_run(recipe_name, overrides)
        out[name] = _measure(run.model, _batches(run, batch_size, steps + 2), steps, peak)
        say(name, out[name])
    return out

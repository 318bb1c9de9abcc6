"""Start-up: `hfpipe --help` and `hfpipe validate` of every bundled recipe, each in a fresh process."""

from __future__ import annotations

import statistics
import subprocess
import time

from bench.common import HFPIPE, ROOT, benchmark, say


def _timed(cmd: list[str], repeat: int, ok: tuple[int, ...] = (0,)) -> float:
    """Median wall seconds of `cmd` run `repeat` times from the repository root; an exit code outside `ok`
    raises."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode not in ok:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return statistics.median(times)


@benchmark("startup")
def bench_startup(repeat: int = 7) -> dict:
    recipes = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml"))
    validate = [HFPIPE, "validate", "--quiet", *recipes]
    _timed([HFPIPE, "--help"], 1)  # warm the file cache
    # Exit code 2: some recipes need files this checkout lacks (the runs/ of other recipes, models/, the
    # SQuAD files); validate has checked every recipe all the same, so its time still counts.
    invalid = subprocess.run(validate, cwd=ROOT, capture_output=True, text=True)
    if invalid.returncode == 2:
        say("startup:", (invalid.stdout + invalid.stderr).strip().splitlines()[-1], "on this machine")
    return {
        "help_s": round(_timed([HFPIPE, "--help"], repeat), 3),
        "validate_all_recipes_s": round(_timed(validate, repeat, ok=(0, 2)), 3),
        "recipes_validated": len(recipes),
        "target_help_s": 0.5,
    }

"""One writer per run directory: while a live process holds a directory, a second command that would write
there exits 2 at once naming the holder and writes nothing; a killed holder's lock is taken over with a
warning. The holder is a real second process, which says when it holds the lock (no sleeps)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import RECIPES, TINY, tiny_recipe

from hfpipe import io, runlock

HOLDER = """
import sys
from hfpipe import runlock
with runlock.hold(sys.argv[1], command=sys.argv[2]):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
"""
HOLDER_COMMAND = "hfpipe train recipes/a.yaml"


@pytest.fixture
def holder(tmp_path):
    """(process A, the directory it holds): A holds tmp_path/held until the test ends or kills it."""
    folder = tmp_path / "held"
    a = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), HOLDER_COMMAND],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert a.stdout.readline() == "holding\n"
        yield a, folder
    finally:
        a.kill()
        a.wait()
        a.stdin.close()
        a.stdout.close()


def named(pid: int) -> str:
    """The pattern of how messages name process A."""
    return rf"pid {pid} \({re.escape(HOLDER_COMMAND)}\), started (\d{{4}}-\d\d-\d\d )?\d\d:\d\d:\d\d"


def in_use(folder, pid: int) -> str:
    """The pattern of the one-line refusal."""
    return rf"{re.escape(str(folder))}: in use by {named(pid)}; wait for it to finish or stop it"


def contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags", [["--resume"], ["--num-processes", "2"]], ids=["resume", "launcher"])
def test_a_second_train_exits_2_at_once_naming_the_holder_and_writes_nothing(holder, flags):
    a, folder = holder
    before = contents(folder)
    assert json.loads(before[io.LOCK])["pid"] == a.pid
    command = [sys.executable, "-m", "hfpipe", "train", str(RECIPES / "quickstart.yaml"), *TINY]
    started = time.monotonic()
    done = subprocess.run(
        [*command, f"output_dir={folder}", *flags], capture_output=True, text=True, timeout=300
    )
    # The refusal comes before the data, the model or (with --num-processes) any launched process: its
    # one line is all the command says, and it takes the time of the imports, not of training.
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(in_use(folder, a.pid), lines[0]), done.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert contents(folder) == before and a.poll() is None


def test_a_killed_holders_lock_is_taken_over_with_a_warning(holder, caplog):
    a, folder = holder
    a.kill()  # SIGKILL: A cleans nothing up; the kernel drops its lock, its record stays
    a.wait()
    assert json.loads((folder / io.LOCK).read_text())["pid"] == a.pid
    with caplog.at_level(logging.WARNING, logger="hfpipe"), runlock.hold(folder, command="hfpipe test B"):
        record = json.loads((folder / io.LOCK).read_text())
    assert record["pid"] == os.getpid() and record["command"] == "hfpipe test B"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    taken = rf"{re.escape(str(folder))}: took over the lock of {named(a.pid)}, which is gone"
    assert re.fullmatch(taken, warnings[0]), warnings
    assert not (folder / io.LOCK).exists()  # not a run directory: no lock file once nobody holds it


def test_merge_fewshot_and_evaluate_refuse_a_held_directory(holder, tmp_path, cli):
    a, folder = holder
    before = contents(folder)
    missing = tmp_path / "no-run"  # the lock is checked first: nothing is loaded before it
    outcomes = {
        "merge": cli("merge", missing, folder),
        "fewshot": cli("fewshot", RECIPES / "fewshot-gpt2-sentiment.yaml", f"output_dir={folder}"),
        "evaluate --predictions": cli("evaluate", missing, "--predictions", folder),
        "evaluate -o": cli("evaluate", missing, "-o", folder / "metrics.json"),
    }
    for name, result in outcomes.items():
        assert result.exit_code == 2, (name, result.output)
        assert re.fullmatch(in_use(folder, a.pid), result.output.strip()), (name, result.output)
    assert contents(folder) == before and a.poll() is None


def test_processes_launched_by_the_holder_write_without_locking_again(holder):
    """`hfpipe train --num-processes N` holds output_dir in the launching process; the processes it starts
    find its pid in their environment. Any other process is refused."""
    a, folder = holder
    write = "import sys\nfrom hfpipe import runlock\nwith runlock.hold(sys.argv[1]):\n    print('writing')"
    for launcher, code in ((a.pid, 0), (os.getpid(), 2)):
        env = {**os.environ, runlock.LAUNCHER_PID: str(launcher)}
        done = subprocess.run(
            [sys.executable, "-c", write, str(folder)], env=env, capture_output=True, text=True, timeout=60
        )
        if code == 0:
            assert done.returncode == 0 and done.stdout == "writing\n", done.stderr[-2000:]
        else:
            assert done.returncode != 0 and "in use by pid" in done.stderr


def test_on_several_machines_the_main_machines_launcher_holds_the_run(holder, cli, monkeypatch):
    """Every machine runs `hfpipe train --accelerate-config F`; only machine_rank 0 writes the run directory."""
    import subprocess as sp

    a, folder = holder
    launched = []
    monkeypatch.setattr(sp, "call", lambda command, env: launched.append(command) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    config = (RECIPES / "accelerate" / "multi-node.yaml").read_text()
    for rank, code in ((1, 0), (0, 2)):
        path = folder.parent / f"machine-{rank}.yaml"
        path.write_text(config.replace("machine_rank: 0", f"machine_rank: {rank}"))
        result = cli(
            "train", RECIPES / "quickstart.yaml", f"output_dir={folder}", "--accelerate-config", path
        )
        assert result.exit_code == code, result.output
    assert len(launched) == 1 and re.fullmatch(in_use(folder, a.pid), result.output.strip())


def test_the_lock_file_is_not_one_of_the_run_files(tmp_path):
    from hfpipe.api import push_files

    run = tmp_path / "run"
    with runlock.hold(run, command="hfpipe test"):
        io.prepare_output_dir(run, overwrite=False)  # holding only the lock file, the directory is empty
        (run / "stale.txt").write_text("old")
        io.prepare_output_dir(run, overwrite=True)  # --overwrite empties the run, never the lock
        assert sorted(p.name for p in run.iterdir()) == [io.LOCK, io.MARKER]
        assert json.loads((run / io.LOCK).read_text())["command"] == "hfpipe test"
        for name in (io.RECIPE, "config.json"):
            (run / name).write_text("{}")
        assert [name for name, _ in push_files(run)] == ["config.json", io.RECIPE]
    assert (run / io.LOCK).read_bytes() == b""  # a run directory keeps an empty lock file between commands


def test_a_command_that_fails_leaves_no_directory_behind(tmp_path, cli):
    result = cli("merge", tmp_path / "no-run", tmp_path / "new" / "merged")
    assert result.exit_code == 2 and "not a directory" in result.output
    assert sorted(tmp_path.iterdir()) == []


def test_resume_into_a_new_directory_starts_afresh(tmp_path):
    from hfpipe.api import train

    recipe = tiny_recipe(tmp_path, "train.max_steps=2", "data.builtin.test_size=0")
    run = train(recipe, resume=True)  # the lock file the run starts with is not a run to resume
    assert json.loads((run / io.METRICS).read_text())["train"]["steps"] == 2
    assert (run / io.LOCK).read_bytes() == b""

"""What `hfpipe train` shows: a live bar on a terminal, progress lines in a log, nothing with --quiet,
one JSON line with --json."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import RECIPES, TINY

SMALL = [*TINY, "data.builtin.train_size=256", "train.epochs=1", "train.log_every=2"]


def test_json_is_one_machine_readable_line_and_quiet_prints_nothing(cli, tmp_path):
    result = cli("train", RECIPES / "quickstart.yaml", *SMALL, f"output_dir={tmp_path / 'a'}", "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # no table, no "run directory:" line
    record = json.loads(lines[0])
    assert record["run_dir"] == str(tmp_path / "a") and record["steps"] == 16
    assert 0 <= record["test"]["accuracy"] <= 1 and record["train_s"] > 0
    assert "hfpipe: step " in result.stderr  # the progress lines stay on stderr

    result = cli("train", RECIPES / "quickstart.yaml", *SMALL, f"output_dir={tmp_path / 'b'}", "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and "hfpipe: " not in result.stderr
    assert (tmp_path / "b" / "metrics.json").exists()

    result = cli("train", RECIPES / "quickstart.yaml", *SMALL, f"output_dir={tmp_path / 'c'}")
    assert "trained 16 steps" in result.stdout and "accuracy" in result.stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("hfpipe: step ")]
    assert progress and all(" eta " in line and "tokens/s" in line for line in progress)


def test_a_terminal_gets_a_live_bar_with_eta_loss_lr_and_tokens_per_second(tmp_path):
    leader, follower = pty.openpty()
    command = [str(Path(sys.executable).with_name("hfpipe")), "train", str(RECIPES / "quickstart.yaml")]
    env = {**os.environ, "COLUMNS": "160"}
    done = subprocess.Popen(
        [*command, *SMALL, f"output_dir={tmp_path / 'run'}"],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    stdout = done.communicate(timeout=300)[0].decode()
    text = screen.decode(errors="replace")
    assert done.returncode == 0, text[-2000:]
    assert "eta" in text and "tok/s" in text and "loss " in text and "lr " in text and "/16" in text
    assert "hfpipe: step " not in text  # the bar replaces the progress lines
    assert "trained 16 steps" in stdout

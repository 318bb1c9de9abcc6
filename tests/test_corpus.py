"""The bad-input corpora: one file (recipes) or one folder (data) per case, each stating what the user must
see. Adding a case needs no code: drop a file into tests/corpus/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, TINY

CORPUS = Path(__file__).parent / "corpus"
RECIPE_CASES = sorted(p for p in (CORPUS / "recipes").glob("*.yaml"))
DATA_CASES = sorted(p for p in (CORPUS / "data").iterdir() if p.is_dir())


def header(path: Path) -> dict[str, str]:
    """`# key: value` lines at the top of a case file (read as bytes: some cases are not UTF-8)."""
    out = {}
    for raw in path.read_bytes().splitlines():
        line = raw.decode("utf-8", errors="replace")
        if not line.startswith("# ") or ":" not in line:
            break
        key, _, value = line[2:].partition(":")
        out[key.strip()] = value.strip()
    return out


def assert_one_clean_line(output: str) -> str:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("hfpipe: ")]
    assert lines, output
    return lines[0]


def test_corpora_are_big_enough():
    assert len(RECIPE_CASES) >= 25 and len(DATA_CASES) >= 15


@pytest.mark.parametrize("case", RECIPE_CASES, ids=lambda p: p.stem)
def test_bad_recipe(case, cli):
    expected = header(case)
    result = cli("validate", case)
    assert result.exit_code == 2, result.output
    first = assert_one_clean_line(result.output)
    assert expected["expect"] in first, first
    assert first.startswith(f"{case.name}:") or case.name in first.split(": ")[0], first
    if "line" in expected:
        assert f"{case.name}:{expected['line']}: " in first, first


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda p: p.name)
def test_bad_data(case, cli, tmp_path):
    spec = yaml.safe_load((case / "case.yaml").read_text())
    args = [*TINY, "~data.builtin", "train.max_steps=1"]
    for split in ("train", "validation", "test"):
        found = sorted(p for p in case.iterdir() if p.stem == split)
        if found:
            args.append(f"data.{split}={found[0]}")
    args += [item.replace("{case}", str(case)) for item in spec.get("overrides", [])]
    out = tmp_path / "run"
    result = cli("train", RECIPES / "quickstart.yaml", *args, f"output_dir={out}")
    assert result.exit_code == spec.get("exit", 3), result.output
    first = assert_one_clean_line(result.output)
    assert spec["expect"] in first, first
    assert not out.exists()  # nothing written for rejected input

"""Few-shot evaluation: `hfpipe fewshot` against lm-evaluation-harness on PIQA and HellaSwag, with the same
prompts, shots, examples and model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import HFPIPE, ROOT, SHARED, benchmark, say

LM_EVAL = "lm_eval[hf]==0.4.13"
WORK = Path("/tmp/hfpipe-bench-fewshot")


def _lm_eval_venv() -> Path:
    """A separate venv with lm-evaluation-harness (and the same CPU torch), made once."""
    venv = ROOT / ".bench-venvs" / "lm-eval"
    exe = venv / "bin" / "lm_eval"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, LM_EVAL], check=True)
    return exe


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's HellaSwag clean-up (its tasks/hellaswag/utils.py preprocess)."""
    import re

    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _fewshot_data(work: Path) -> dict:
    """The bench's few-shot tasks as jsonl both tools read: {name: (file, hfpipe prompt, hfpipe choices,
    harness doc_to_text, harness doc_to_choice, examples in the file)}."""
    tasks = {}
    piqa = SHARED / "fewshot" / "piqa"
    if (piqa / "valid.jsonl").exists():
        rows = [json.loads(line) for line in (piqa / "valid.jsonl").read_text().splitlines() if line.strip()]
        labels = (piqa / "valid-labels.lst").read_text().split()
        data = work / "piqa.jsonl"
        data.write_text(
            "".join(json.dumps({**r, "label": int(y)}) + "\n" for r, y in zip(rows, labels, strict=True))
        )
        tasks["piqa"] = (data, "Question: {goal}\nAnswer:", '["{sol1}", "{sol2}"]')
        tasks["piqa"] += ("Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}", len(rows))
    hellaswag = SHARED / "fewshot" / "hellaswag" / "hellaswag_val_full.txt.bz2"
    if hellaswag.exists():
        import bz2

        lines = bz2.decompress(hellaswag.read_bytes()).decode("utf-8").split("\n")
        rows = []
        for at in range(0, len(lines) - 5, 6):  # "activity: context", the gold index, four endings
            rows.append(
                {
                    "query": _hellaswag_text(lines[at]),
                    "choices": [_hellaswag_text(e) for e in lines[at + 2 : at + 6]],
                    "label": int(lines[at + 1]),
                }
            )
        data = work / "hellaswag.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks["hellaswag"] = (data, "{query}", "choices", "{{query}}", "choices", len(rows))
    return tasks


def _gpt2(model_dir: Path) -> None:
    """hfpipe's GPT-2 recipe with room for 5-shot prompts (1,024 positions; the bundled one has 64), made
    once."""
    if (model_dir / "config.json").exists():
        return
    overrides = ["model.config.n_positions=1024", "tokenizer.train.vocab_size=4000", "train.epochs=1"]
    overrides += ["train.save_every=never", f"output_dir={model_dir}"]
    subprocess.run(
        [HFPIPE, "train", "recipes/gpt2-clm-pretrain.yaml", "--overwrite", *overrides], cwd=ROOT, check=True
    )


def _write_configs(name: str, sampler: str, task: tuple, model_dir: Path) -> tuple[Path, str]:
    """(hfpipe recipe, harness task name) of one task and shot sampler, both written to WORK."""
    data, prompt, choices, their_prompt, their_choices, _ = task
    recipe = WORK / f"{name}-{sampler}.yaml"
    recipe.write_text(
        f"task: fewshot\ndescription: {name} against lm-evaluation-harness\n"
        f"model: {{name_or_path: {model_dir}}}\n"
        f"fewshot:\n  sampler: {sampler}\n  seeds: [1234]\n  batch_size: 32\n  tasks:\n"
        f"    - name: {name}\n      mode: multiple_choice\n      data: {{validation: {data}}}\n"
        "      split: validation\n      fewshot_split: validation\n"
        f"      prompt: {json.dumps(prompt)}\n      choices: {choices}\n      label: label\n"
        f"output_dir: {WORK / 'hfpipe-out'}\n"
    )
    their_task = f"{name}_local_{sampler}"
    (WORK / f"{their_task}.yaml").write_text(
        f"task: {their_task}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "validation_split: validation\ntest_split: validation\nfewshot_split: validation\n"
        + ("fewshot_config:\n  sampler: first_n\n" if sampler == "first_n" else "")
        + f'output_type: multiple_choice\ndoc_to_text: "{their_prompt}"\ndoc_to_target: label\n'
        f'doc_to_choice: "{their_choices}"\ntarget_delimiter: " "\nfewshot_delimiter: "\\n\\n"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return recipe, their_task


def _compare(
    name: str, k: int, configs: tuple[Path, str], model_dir: Path, harness: Path, limit: int
) -> dict:
    """Accuracies and wall times of hfpipe and the harness (`configs`: their configurations) on one task
    with k shots, one after the other."""
    recipe, their_task = configs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    subprocess.run(
        [HFPIPE, "fewshot", str(recipe), f"fewshot.k=[{k}]", "--limit", str(limit)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=env,
    )
    ours_s = time.perf_counter() - started
    ours = json.loads((WORK / "hfpipe-out" / "results.json").read_text())["tasks"][name]["runs"][0]
    started = time.perf_counter()
    args = ["--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32"]
    args += ["--tasks", their_task, "--include_path", str(WORK), "--num_fewshot", str(k)]
    args += ["--batch_size", "32", "--device", "cpu", "--limit", str(limit)]
    args += ["--output_path", str(WORK / "harness-out")]
    subprocess.run([str(harness), *args], cwd=WORK, check=True, capture_output=True, env=env)
    theirs_s = time.perf_counter() - started
    result = sorted((WORK / "harness-out").rglob("results_*.json"), key=lambda p: p.stat().st_mtime)[-1]
    theirs = json.loads(result.read_text())["results"][their_task]
    return {
        "hfpipe_acc": ours["acc"],
        "hfpipe_acc_norm": ours["acc_norm"],
        "harness_acc": theirs["acc,none"],
        "harness_acc_norm": theirs["acc_norm,none"],
        "acc_difference": abs(ours["acc"] - theirs["acc,none"]),
        "acc_norm_difference": abs(ours["acc_norm"] - theirs["acc_norm,none"]),
        "hfpipe_wall_s": round(ours_s, 2),
        "harness_wall_s": round(theirs_s, 2),
        "speedup": round(theirs_s / ours_s, 2),
        "hfpipe_requests_per_s": ours["requests_per_s"],
    }


@benchmark("fewshot")
def bench_fewshot(limit: int = 500) -> dict:
    """hfpipe fewshot against lm-evaluation-harness on PIQA and HellaSwag (the same prompts, shots,
    examples and model): k = 0, k = 5 drawn per example (the harness's default sampler and seed) and k = 5
    with the same first five shots for every example (first_n: hfpipe computes the shared prompt once).
    Both accuracies and both wall times, one after the other in one run."""
    WORK.mkdir(parents=True, exist_ok=True)
    tasks = _fewshot_data(WORK)
    if not tasks:
        return {"skipped": "needs ../shared/data/fewshot/piqa or hellaswag"}
    model_dir = WORK / "gpt2"
    _gpt2(model_dir)
    harness = _lm_eval_venv()
    out: dict = {
        "model": "hfpipe's GPT-2 of recipes/gpt2-clm-pretrain.yaml with 1,024 positions, 1 epoch (2 x 128)",
        "harness": LM_EVAL,
        "examples": f"the first {limit} of each validation split; shots from the same split (never the scored one)",
    }
    for name, task in tasks.items():
        out[name] = {"prompt": task[1], "examples_in_split": task[-1]}
        for k, sampler in ((0, "harness"), (5, "harness"), (5, "first_n")):
            configs = _write_configs(name, sampler, task, model_dir)
            key = f"k={k}" + (" first_n" if sampler == "first_n" else "")
            out[name][key] = _compare(name, k, configs, model_dir, harness, limit)
            say(name, k, sampler, json.dumps(out[name]))
    return out

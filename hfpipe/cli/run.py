"""Commands that run models: train, evaluate, predict. Heavy imports happen inside each command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from hfpipe import runlock
from hfpipe.cli.common import (
    JsonOpt,
    OverridesArg,
    QuietOpt,
    RecipeArg,
    RunDirArg,
    VerboseOpt,
    setup_logging,
    user_errors,
)
from hfpipe.formatting import fmt


def train(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run in output_dir.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in output_dir.")
    ] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    fail_under: FailUnderOpt = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            "--num-processes",
            min=1,
            help="Train in N processes through `accelerate launch` (GPUs, or CPU processes); "
            "train.batch_size is per process.",
        ),
    ] = None,
    accelerate_config: Annotated[
        Path | None,
        typer.Option(
            "--accelerate-config",
            help="An Accelerate config file (multi-GPU, multi-node, DeepSpeed, FSDP) for the launcher.",
        ),
    ] = None,
) -> None:
    """Fine-tune or pretrain according to RECIPE; writes a Hugging Face model directory to output_dir."""
    setup_logging(verbose, quiet, as_json)
    with user_errors():
        from hfpipe.recipe import load_recipe

        loaded = load_recipe(recipe, overrides or [])
        from hfpipe.tasks import get_task, require_command

        require_command(get_task(loaded.task), "train", recipe)
        gates = [_split_gate(g) for g in fail_under or []]  # a malformed gate fails before anything runs
        processes = num_processes or loaded.accelerate.num_processes
        config_file = accelerate_config or loaded.accelerate.config_file
        if (processes and processes > 1 or config_file) and "LOCAL_RANK" not in os.environ:
            # Not yet inside a launched process: hand over to Accelerate's launcher, which starts this
            # command again in every process.
            args = [
                *(overrides or []),
                *(["--overwrite"] if overwrite else []),
                *(["--resume"] if resume else []),
                *(["--verbose"] if verbose else []),
                *(["--quiet"] if quiet else []),
                *(["--json"] if as_json else []),
                *(f"--fail-under={g}" for g in fail_under or []),
            ]
            raise typer.Exit(_hand_over(recipe, loaded, args, processes, config_file, resume, overwrite))
        from hfpipe import console
        from hfpipe.api import train as run_train

        interactive = console.interactive()  # a live bar on a terminal, progress lines in a log
        run_dir = run_train(
            loaded, overwrite=overwrite, resume=resume, verbose=verbose, interactive=interactive
        )
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch / torchrun: once, not per process
            _summary(run_dir)
            if gates:  # the run is saved whatever the gate says
                metrics = json.loads((run_dir / "metrics.json").read_text())
                _check_split_gates(gates, {s: metrics.get(s) for s in ("test", "validation")})


def _hand_over(
    recipe: Path, loaded, args: list[str], processes, config_file, resume: bool, overwrite: bool
) -> int:
    """`hfpipe train` again in every process, through Accelerate's launcher; its exit code."""
    # What can be checked here fails as one line, before the processes start (an error inside them comes
    # back through torchrun's report).
    if processes:
        loaded.train.accumulation(processes)
        _check_resume_processes(loaded, processes, resume, overwrite)
    from hfpipe.training.trackers import check_installed

    check_installed(loaded)
    # This process holds output_dir's lock for the ones it starts: a second writer fails here, at once,
    # rather than after its processes have started. Multi-node: the main machine's holds it.
    with runlock.hold_for_launched(loaded.output_dir if _machine_rank(config_file) == 0 else None):
        return _launch(recipe, args, processes, config_file)


def _check_resume_processes(recipe, processes: int, resume: bool, overwrite: bool) -> None:
    """A resume with another process count, refused before any process starts (the processes would)."""
    if overwrite or not (resume or recipe.train.resume == "auto"):
        return
    from hfpipe.errors import UsageError
    from hfpipe.training import latest_checkpoint

    checkpoint = latest_checkpoint(Path(recipe.output_dir).resolve())
    if checkpoint is None or not (checkpoint / "trainer_state.json").exists():
        return
    saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("processes")
    if saved not in (None, processes):
        raise UsageError(
            f"the run was saved by {saved} process(es) and resumes in {processes}: each process restores its "
            f"own random state and share of the batches, so resume with --num-processes {saved}"
        )


def _machine_rank(config_file) -> int:
    """The machine_rank of an Accelerate config file (JSON or YAML); 0 without one."""
    import yaml

    try:
        config = yaml.safe_load(Path(config_file).read_text()) if config_file else {}
    except (OSError, yaml.YAMLError):
        return 0  # _launch reports a missing file; Accelerate, one it cannot read
    rank = config.get("machine_rank", 0) if isinstance(config, dict) else 0
    return rank if isinstance(rank, int) else 0


def _launch(recipe: Path, args: list[str], processes: int | None, config_file) -> int:
    """Run `accelerate launch [--config_file F] [--num_processes N] -m hfpipe train RECIPE ARGS`; its exit
    code: the one-line error's code of a process that failed with one (torchrun itself only says 1)."""
    import subprocess
    import sys
    import tempfile

    from hfpipe.errors import RecipeError

    command = [sys.executable, "-m", "accelerate.commands.launch"]
    env = dict(os.environ)
    if config_file:
        if not Path(config_file).is_file():
            raise RecipeError(f"no Accelerate config file {config_file}", key="accelerate.config_file")
        command += ["--config_file", str(config_file)]
    if processes:
        command += ["--num_processes", str(processes)]
        if not config_file and processes > 1:
            command += [
                "--multi_gpu",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
            ]
            # the torchrun launcher; without GPUs the processes form a gloo CPU group. Each process gets
            # its share of the cores rather than all of them.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    command += ["-m", "hfpipe", "train", str(recipe), *args]
    with tempfile.TemporaryDirectory(prefix="hfpipe-launch-") as folder:
        exit_file = Path(folder) / "exit-code"
        env["HFPIPE_EXIT_FILE"] = str(exit_file)  # cli.common.user_errors writes a user error's code here
        code = subprocess.call(command, env=env)
        if code and exit_file.exists():
            written = exit_file.read_text().strip()
            if written.isdigit():
                return int(written)
        return code


def _summary(run_dir: Path) -> None:
    from hfpipe import console

    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = []
    for split in ("validation", "test"):
        for name, value in (metrics.get(split) or {}).items():
            rows.append((split, name, fmt(value)))
    if rows:
        console.summary_table(rows, ("split", "metric", "value"), title=f"{run_dir.name}: results")
    best = (
        f", best step {metrics['best_step']} by {metrics['metric_for_best']}"
        if metrics.get("best_step")
        else ""
    )
    t = metrics["train"]
    console.say(f"trained {t['steps']} steps in {t['runtime_s']:.1f} s{best}")
    console.say(f"run directory: {run_dir}")
    console.final_json(
        {
            "run_dir": str(run_dir),
            "validation": metrics.get("validation") or {},
            "test": metrics.get("test") or {},
            "best_step": metrics.get("best_step"),
            "metric_for_best": metrics.get("metric_for_best"),
            "steps": t["steps"],
            "runtime_s": t["runtime_s"],
            "train_s": t.get("train_s"),
        }
    )


def evaluate(
    run_dir: RunDirArg,
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled file with the recipe's columns.")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Recipe split to score when --data is not given.")
    ] = "test",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the metrics as JSON here.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="question-answering: write predictions.json and nbest_predictions.json in this directory.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    fail_under: FailUnderOpt = None,
) -> None:
    """Score a trained run on --data FILE or on its recipe's test split."""
    setup_logging(quiet=quiet, json=as_json)
    # -o FILE: its folder is locked only if it has a lock file (a run directory, or a folder a command writes
    # now); a file elsewhere is written where asked, in one atomic rename, and leaves no lock file there.
    with user_errors(), runlock.hold(output and output.parent, create=False):
        from hfpipe import console
        from hfpipe.api import evaluate_run

        gates = [(None, metric, value) for _, metric, value in (_split_gate(g) for g in fail_under or [])]

        metrics = evaluate_run(run_dir, str(data) if data else None, split, predictions_dir=predictions)
        console.summary_table([(k, fmt(v)) for k, v in metrics.items()], ("metric", "value"))
        console.final_json({"run_dir": str(run_dir), "split": None if data else split, "metrics": metrics})
        if output:
            from hfpipe.io import write_json

            write_json(output, metrics)
        _check_split_gates(gates, {"scored": metrics})  # after the metrics are written


def predict(
    run_dir: RunDirArg,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="Text to classify (repeatable).")
    ] = None,
    text_pair: Annotated[
        list[str] | None, typer.Option("--text-pair", help="Second text of a pair (one per --text).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help=".txt (one text per line) or csv / tsv / jsonl with the recipe's columns."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write predictions as JSON lines here.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
) -> None:
    """Predict with a trained run: prints one JSON line per input (or writes them to --output)."""
    setup_logging()
    with user_errors():
        from hfpipe.errors import UsageError

        if (text is None) == (file is None):
            raise UsageError("give --text (repeatable) or --file, not both and not neither")
        from hfpipe.api import predict_run

        rows, preds = predict_run(run_dir, texts=text, text_pairs=text_pair, file=file, batch_size=batch_size)
        _emit([json.dumps({**r, **p}, ensure_ascii=False) for r, p in zip(rows, preds, strict=True)], output)


def generate(
    run_dir: RunDirArg,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="Prompt text (repeatable).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Plain text, one prompt per line (blank lines give blank outputs), or csv / jsonl rows "
            "rendered with the run's prompt template.",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Default: the recipe's.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Sample at this temperature (turns sampling on).")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option("--top-p", help="Nucleus sampling (turns sampling on).")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k sampling (turns sampling on).")] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams", help="Beam search width.")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="No sampling, whatever the recipe says.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling.")] = 0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write completions as JSON lines here.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
) -> None:
    """Generate completions with a causal-lm or generation run: batched, left-padded, stops at EOS."""
    setup_logging()
    with user_errors():
        from hfpipe.errors import UsageError

        if (prompt is None) == (file is None):
            raise UsageError("give --prompt (repeatable) or --file, not both and not neither")
        settings: dict = {
            k: v
            for k, v in {
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "num_beams": num_beams,
            }.items()
            if v is not None
        }
        if greedy:
            settings["do_sample"] = False
        elif temperature is not None or top_p is not None or top_k is not None:
            settings["do_sample"] = True
        from hfpipe.api import generate_run

        rows, preds = generate_run(run_dir, prompt, file, settings=settings, seed=seed, batch_size=batch_size)
        _emit([json.dumps({**r, **p}, ensure_ascii=False) for r, p in zip(rows, preds, strict=True)], output)


def translate(
    run_dir: RunDirArg,
    text: Annotated[list[str] | None, typer.Option("--text", "-t", help="Source text (repeatable).")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Plain text, one source per line (e.g. test.en; blank lines stay blank), or csv / jsonl with "
            "the source language's column.",
        ),
    ] = None,
    num_beams: Annotated[int | None, typer.Option("--num-beams", help="Default: the recipe's.")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Default: the recipe's.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write translations as JSON lines here.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
) -> None:
    """Translate with a translation run: batched by length, beam search, one JSON line per source."""
    setup_logging()
    with user_errors():
        from hfpipe.errors import UsageError

        if (text is None) == (file is None):
            raise UsageError("give --text (repeatable) or --file, not both and not neither")
        settings = {
            k: v
            for k, v in {"num_beams": num_beams, "max_new_tokens": max_new_tokens}.items()
            if v is not None
        }
        from hfpipe.api import translate_run

        rows, preds = translate_run(run_dir, text, file, settings=settings, batch_size=batch_size)
        _emit([json.dumps({**r, **p}, ensure_ascii=False) for r, p in zip(rows, preds, strict=True)], output)


def answer(
    run_dir: RunDirArg,
    question: Annotated[
        list[str] | None, typer.Option("--question", "-q", help="Question (repeatable).")
    ] = None,
    context: Annotated[
        list[str] | None,
        typer.Option("--context", "-c", help="Context passage: one per --question, or one for all of them."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="csv / jsonl / SQuAD JSON with the recipe's question and context columns."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write answers as JSON lines here.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
) -> None:
    """Answer questions from their context with a question-answering run: one JSON line per question
    (answer, score, start and end characters in the context)."""
    setup_logging()
    with user_errors():
        from hfpipe.errors import UsageError

        if (question is None) == (file is None):
            raise UsageError("give --question with --context, or --file, not both and not neither")
        from hfpipe.api import answer_run

        rows, preds = answer_run(run_dir, question, context, file, batch_size=batch_size)
        _emit([json.dumps({**r, **p}, ensure_ascii=False) for r, p in zip(rows, preds, strict=True)], output)


def fewshot(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Score only the first N examples of each task.")
    ] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-under",
            help="[TASK.]METRIC[@K]=VALUE (repeatable): exit 5 when the mean over seeds is below VALUE, e.g. "
            "acc=0.6, piqa.acc_norm@5=0.55.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Few-shot evaluation of the recipe's model: k-shot prompts, option log-likelihoods or generation;
    a table on the console and OUTPUT_DIR/results.json."""
    setup_logging(verbose, quiet, as_json)
    with user_errors():
        from hfpipe.recipe import load_recipe

        loaded = load_recipe(recipe, overrides or [])
        gates = [_gate(g) for g in fail_under or []]
        from hfpipe.tasks import get_task, require_command

        require_command(get_task(loaded.task), "fewshot", recipe)
        from hfpipe.api import quiet_libraries
        from hfpipe.fewshot import run

        quiet_libraries(verbose)
        results = run(loaded, limit=limit, verbose=verbose)
        rows = []
        for name, entry in results["tasks"].items():
            for k, metrics in entry["summary"].items():
                for metric, s in metrics.items():
                    spread = f" ± {s['std']:.4f}" if s["n"] > 1 else ""
                    rows.append((name, k, metric, f"{s['mean']:.4f}{spread}", str(s["n"])))
        from hfpipe import console

        console.summary_table(rows, ("task", "k", "metric", "value", "seeds"))
        console.say(f"results: {Path(loaded.output_dir) / 'results.json'}")
        failed = _failed_gates(results, gates)
        for line in failed:
            typer.echo(f"fail-under: {line}", err=True)
        summary = {name: entry["summary"] for name, entry in results["tasks"].items()}
        console.final_json(
            {"results": str(Path(loaded.output_dir) / "results.json"), "tasks": summary, "failed": failed}
        )
        if failed:
            from hfpipe.errors import GateFailed

            raise typer.Exit(GateFailed.exit_code)


def _gate(text: str) -> tuple[str | None, str, int | None, float]:
    """[TASK.]METRIC[@K]=VALUE -> (task, metric, k, value)."""
    from hfpipe.errors import RecipeError

    key, sep, value = text.partition("=")
    try:
        threshold = float(value)
    except ValueError:
        raise RecipeError(f"--fail-under {text!r}: expected [TASK.]METRIC[@K]=NUMBER") from None
    if not sep or not key:
        raise RecipeError(f"--fail-under {text!r}: expected [TASK.]METRIC[@K]=NUMBER")
    key, at, k = key.partition("@")
    task, dot, metric = key.rpartition(".")
    from hfpipe.fewshot import METRICS

    if metric not in METRICS:
        raise RecipeError(f"--fail-under {text!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if at and not k.isdigit():
        raise RecipeError(f"--fail-under {text!r}: @K must be a number of shots")
    return (task if dot else None), metric, (int(k) if at else None), threshold


def _failed_gates(results: dict, gates) -> list[str]:
    from hfpipe.errors import RecipeError

    failed = []
    for task, metric, k, threshold in gates:
        checked = 0
        for name, entry in results["tasks"].items():
            if task is not None and name != task:
                continue
            for shots, metrics in entry["summary"].items():
                if (k is not None and int(shots) != k) or metric not in metrics:
                    continue
                checked += 1
                mean = metrics[metric]["mean"]
                if mean < threshold:
                    failed.append(f"{name} {metric} at k={shots}: {mean:.4f} < {threshold}")
        if not checked:
            raise RecipeError(f"--fail-under: no result {'.'.join(filter(None, [task, metric]))} to check")
    return failed


FailUnderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-under",
        help="[SPLIT.]METRIC=VALUE (repeatable): exit 5 when the metric is below VALUE, e.g. accuracy=0.9, "
        "validation.f1=0.8 (train: the test split's metric, else validation's).",
    ),
]


def _split_gate(text: str) -> tuple[str | None, str, float]:
    """[SPLIT.]METRIC=VALUE -> (split or None, metric, value); a usage error (exit 2) when malformed."""
    from hfpipe.errors import UsageError

    key, sep, value = text.partition("=")
    split, dot, metric = key.rpartition(".")
    try:
        threshold = float(value)
    except ValueError:
        threshold = None
    if not sep or not metric or threshold is None or (dot and split not in ("validation", "test")):
        raise UsageError(f"--fail-under {text!r}: expected [validation. | test.]METRIC=NUMBER")
    return (split if dot else None), metric, threshold


def _check_split_gates(gates, by_split: dict[str, dict]) -> None:
    """Exit 5 (after saying which) when a gated metric is below its value; a metric the run does not have
    is a usage error (exit 2). `by_split`: {split: metrics}, in the order a bare METRIC is looked up."""
    from hfpipe.errors import GateFailed, UsageError

    failed: list[str] = []
    for split, metric, threshold in gates:
        candidates = [split] if split else [s for s, m in by_split.items() if m]
        found = next((s for s in candidates if metric in (by_split.get(s) or {})), None)
        if found is None:
            have = sorted({m for metrics in by_split.values() for m in (metrics or {})})
            raise UsageError(
                f"--fail-under: no {'.'.join(filter(None, [split, metric]))} to check (there is: {', '.join(have)})"
            )
        value = by_split[found][metric]
        if not isinstance(value, (int, float)) or value < threshold:
            failed.append(
                f"{found} {metric} {value:.4f} < {threshold}"
                if isinstance(value, float)
                else f"{found} {metric} {value} < {threshold}"
            )
    if failed:
        raise GateFailed("fail-under: " + "; ".join(failed))


def merge(
    run_dir: RunDirArg,
    out_dir: Annotated[Path, typer.Argument(help="Directory for the merged model.", show_default=False)],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier merge in OUT_DIR.")
    ] = False,
) -> None:
    """Fold a LoRA / IA3 adapter run into its base model: OUT_DIR is a standalone Hugging Face model
    directory (and an hfpipe run directory) whose outputs equal the adapter model's."""
    setup_logging()
    with user_errors():
        from hfpipe.api import merge_run

        out, difference = merge_run(run_dir, out_dir, overwrite=overwrite)
        typer.echo(f"merged model: {out} (outputs within {difference:.1e} of the adapter's)")


def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    num_processes: Annotated[
        int, typer.Option("--num-processes", min=1, help="Plan for N processes (the global batch).")
    ] = 1,
    timing_steps: Annotated[
        int, typer.Option("--timing-steps", min=0, help="Training steps to time for the estimate (0: none).")
    ] = 5,
    no_timing: Annotated[bool, typer.Option("--no-timing", help="No timed steps, no estimate.")] = False,
    full_recipe: Annotated[
        bool, typer.Option("--recipe", help="Print the resolved recipe (every default) first.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """What a training run of RECIPE would do, without training: model size, tokenizer, the data as the
    model sees it (lengths, truncation, packing / padding), batch and step counts, and an estimate of the
    run time from a few timed steps on this machine."""
    setup_logging(json=as_json)
    with user_errors():
        from hfpipe import console
        from hfpipe.plan import make_plan, render
        from hfpipe.recipe import load_recipe

        loaded = load_recipe(recipe, overrides or [])
        from hfpipe.tasks import get_task, require_command

        require_command(get_task(loaded.task), "train", recipe, used="plan")
        result = make_plan(loaded, timing_steps=0 if no_timing else timing_steps, processes=num_processes)
        console.say(render(result, full_recipe=full_recipe))
        console.final_json(result)


def attention(
    run_dir: RunDirArg,
    text: Annotated[str, typer.Option("--text", "-t", help="The input to look at.", show_default=False)],
    text_pair: Annotated[
        str | None, typer.Option("--text-pair", help="Second text (sentence pairs; QA: the context).")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="Encoder-decoders: the output to look at (default: the model's own)."),
    ] = None,
    layer: Annotated[int | None, typer.Option("--layer", "-l", help="Only this layer (from 0).")] = None,
    head: Annotated[int | None, typer.Option("--head", help="Only this head (from 0).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the PNGs.")] = Path(
        "attention"
    ),
) -> None:
    """Heat maps of the model's attention weights for one input: tokens on both axes, a grid of heads per
    layer (or one head); encoder, decoder and cross-attention where the model has them."""
    setup_logging()
    with user_errors():
        from hfpipe.api import open_run
        from hfpipe.attention import attention_maps, write

        _, task, model, tokenizer = open_run(run_dir)
        maps = attention_maps(model, tokenizer, text, text_pair, target, causal=task.is_causal)
        for path in write(maps, output, layer, head):
            typer.echo(f"wrote {path}")


def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories to plot and compare.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for the PNGs and summary.md / summary.html.")
    ] = Path("report"),
) -> None:
    """Plots (loss, learning rate, evaluation metrics; several runs overlaid) and a one-page summary
    (runs, final metrics, run time, recipe differences) of finished or running runs."""
    setup_logging()
    with user_errors():
        from hfpipe.report import write_report

        for path in write_report(run_dirs, output):
            typer.echo(f"wrote {path}")


def push(
    run_dir: RunDirArg,
    repo_id: Annotated[str, typer.Argument(help="Hub repository, e.g. you/my-model.", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to push to.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be uploaded; no network.")
    ] = False,
) -> None:
    """Upload a run directory to the Hugging Face Hub (model, tokenizer, model card, recipe, metrics, logs;
    not checkpoints). Needs the network and a token: HF_TOKEN or `hf auth login`."""
    setup_logging()
    with user_errors():
        from hfpipe.api import push_files, push_run

        files = push_files(run_dir)
        for name, size in files:
            typer.echo(f"{size:>12,}  {name}")
        total = sum(size for _, size in files)
        if dry_run:
            typer.echo(f"would upload {len(files)} files ({total:,} bytes) to {repo_id}")
            return
        url = push_run(run_dir, repo_id, private=private, revision=revision)
        typer.echo(f"pushed {len(files)} files ({total:,} bytes): {url}")


def _emit(lines: list[str], output: Path | None) -> None:
    if output:
        from hfpipe.io import atomic_write_text

        atomic_write_text(output, "\n".join(lines) + "\n")
        typer.echo(f"wrote {len(lines)} lines to {output}", err=True)
    else:
        typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": False})(train)
    app.command()(evaluate)
    app.command()(predict)
    app.command()(generate)
    app.command()(translate)
    app.command()(answer)
    app.command()(merge)
    app.command()(push)
    app.command()(report)
    app.command()(plan)
    app.command()(attention)
    app.command()(fewshot)

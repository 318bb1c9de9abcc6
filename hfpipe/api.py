"""The library behind the CLI: train a recipe, evaluate a run directory, predict with it.

Everything the commands do is callable from Python with the same arguments; the CLI only parses
and maps errors to exit codes.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from hfpipe import io, preflight, runlock
from hfpipe.errors import DataError, HfpipeError, RunError, UsageError, decode_utf8, first_line

log = logging.getLogger("hfpipe")


def quiet_libraries(verbose: bool) -> None:
    """transformers and datasets say warnings and errors only, without progress bars (their own logs and
    bars stay when `verbose`: --verbose)."""
    import os

    import transformers

    if verbose:
        return

    # datasets reads these when it is imported (and it costs ~1 s to import when a command does not need it)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars


@runlock.scoped
def train(
    recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    verbose: bool = False,
    interactive: bool = False,
    callbacks=(),
    clock=None,
) -> Path:
    """Train `recipe` into its output_dir and return the run directory. `interactive`: a live progress bar
    (a terminal) instead of progress lines; `callbacks` (hfpipe.training.Callback) watch the loop besides the
    standard ones; `clock` (hfpipe.training.state.Clock) times it.

    Under `accelerate launch` every process runs this; only the main process writes the run directory.
    """
    from hfpipe.assemble import prepare_run
    from hfpipe.tasks import get_task, require_command
    from hfpipe.training import make_accelerator
    from hfpipe.training.trackers import check_installed

    quiet_libraries(verbose)
    require_command(get_task(recipe.task), "train", recipe.source)
    command = command or shlex.join(["hfpipe", *sys.argv[1:]])
    accelerator = make_accelerator(recipe)
    # One writer per run directory: the main process locks it before anything reads or deletes there (a
    # resume removes unfinished checkpoints); the others wait until it holds the lock. Under `hfpipe train
    # --num-processes` the launching process holds it already (runlock.hold_for_launched).
    runlock.claim(recipe.output_dir, command=command, main=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    check_installed(recipe)
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)

    # Everything that can reject the input runs before the output directory is touched, the cheap checks
    # first: the files and packages the recipe needs, a run directory already in use.
    preflight.check(recipe)
    resume_from, restart = _resume_point(recipe, explicit=resume, overwrite=overwrite)
    if resume_from is None:
        io.check_output_dir(recipe.output_dir, overwrite=overwrite or restart)
    run = prepare_run(recipe, accelerator=accelerator, resume_from=resume_from)
    run_dir = _open_run_dir(run, accelerator, fresh=resume_from is None, overwrite=overwrite or restart)
    result = _fit(run, run_dir, accelerator, resume_from, command, interactive, callbacks, clock)
    _finish_run(run, result, run_dir, accelerator, command)
    return run_dir


def _open_run_dir(run, accelerator, *, fresh: bool, overwrite: bool) -> Path:
    """The run directory, created (or emptied, with `overwrite`) for a fresh run, with the resolved recipe;
    the data's fingerprint and an adapter's base, which a resume checks, when it starts."""
    from hfpipe.assemble import DATA_FINGERPRINT
    from hfpipe.recipe import dump_recipe

    recipe = run.recipe
    # What the run reads must survive --overwrite: the recipe, the data, a local base model or tokenizer.
    protected = [recipe.source or "", *run.raw.files]
    protected += [
        p for p in (recipe.model.name_or_path, recipe.tokenizer.name_or_path) if p and Path(p).is_dir()
    ]
    out = Path(recipe.output_dir)
    if accelerator.is_main_process and fresh:
        io.prepare_output_dir(out, overwrite=overwrite, protected=tuple(p for p in protected if p))
        io.write_json(out / DATA_FINGERPRINT, run.digests)
        if recipe.peft is not None:  # the base the run starts from: a resume must find the same one
            from hfpipe.adapters import BASE_RECORD, base_record

            io.write_json(out / BASE_RECORD, base_record(run.model, recipe))
    if accelerator.is_main_process:  # on resume too: the train section may have changed (e.g. more steps)
        io.atomic_write_text(out / io.RECIPE, dump_recipe(recipe))
    accelerator.wait_for_everyone()
    return out.resolve()


def _fit(run, run_dir: Path, accelerator, resume_from, command: str, interactive: bool, callbacks, clock):
    """The loop over the prepared run; an interrupted one says the command that resumes it."""
    from hfpipe.training import TrainingInterrupted, fit

    try:
        return fit(
            run.recipe,
            run.task,
            run.model,
            run.tokenizer,
            run.splits["train"],
            run.splits.get("validation"),
            run_dir,
            accelerator,
            resume_from=resume_from,
            callbacks=callbacks,
            clock=clock,
            interactive=interactive,
        )
    except TrainingInterrupted as exc:
        words = [w for w in command.split() if w != "--overwrite"]
        resume_command = " ".join(words if "--resume" in words else [*words, "--resume"])
        raise TrainingInterrupted(exc.signal_name, exc.step, resume_command) from None


def _finish_run(run, result, run_dir: Path, accelerator, command: str) -> None:
    """After training: score the test split (or predict it when unlabelled) with the best model, export
    it with its tokenizer, write metrics.json and the model card."""
    from hfpipe.adapters import BASE_RECORD, base_record, parameter_counts

    recipe, task, tokenizer, splits = run.recipe, run.task, run.tokenizer, run.splits
    metrics: dict = {
        "task": task.name,
        "parameters": parameter_counts(result.model),
        "train": {
            "steps": result.state.step,
            "epochs": round(result.state.epoch_float, 4),
            "runtime_s": round(result.train_runtime, 2),
            "train_s": round(result.state.train_seconds, 2),  # without evaluation and checkpoints
            "examples": None if recipe.data.streaming else len(splits["train"]),
            "processes": accelerator.num_processes,
            "padding_fraction": round(result.padding_fraction, 4),
            "skipped_nonfinite_batches": result.state.skipped_nonfinite,
        },
        "metric_for_best": result.metric_for_best,
        "best_step": result.state.best_step,
        "validation": result.validation,
        "versions": io.package_versions(),
    }
    if task.metric_signatures is not None:
        metrics["metric_signatures"] = task.metric_signatures(recipe)
    test = splits.get("test")
    labelled = test is not None and (task.label_column in test.column_names or not task.needs_labels)
    written: dict[str, dict] = {}  # {split: {file name: content}} of tasks that write predictions
    if labelled:
        written["test"] = {}
        metrics["test"] = score(result.model, tokenizer, test, task, recipe, accelerator, written["test"])
    if task.writes_outputs and splits.get("validation") is not None:
        written["validation"] = {}
        score(result.model, tokenizer, splits["validation"], task, recipe, accelerator, written["validation"])
    if accelerator.is_main_process:
        for split_name, files in written.items():
            _write_outputs(run_dir, files, prefix=f"{split_name}_")
        if test is not None and not labelled:
            _write_test_predictions(result.model, tokenizer, run.raw, task, recipe, run_dir)
        # adapter runs: base_model.json names the base model the adapter needs
        extra = {BASE_RECORD: base_record(result.model, recipe)} if recipe.peft is not None else {}
        io.export_model(result.model, tokenizer, run_dir, extra=extra)
        io.write_json(run_dir / io.METRICS, metrics)
        io.atomic_write_text(run_dir / io.CARD, io.model_card(recipe, task, metrics, command))
    accelerator.wait_for_everyone()


# Sections that define what is trained; resuming with any of them changed would mix two runs.
_RUN_DEFINING = ("task", "model", "tokenizer", "data", "peft")
# Settings that decide which example comes in which step: a resumed run must keep them.
_ORDER_DEFINING = (
    "batch_size",
    "gradient_accumulation_steps",
    "global_batch_size",
    "seed",
    "group_by_length",
)


def _resume_point(recipe, *, explicit: bool, overwrite: bool) -> tuple[Path | None, bool]:
    """(the checkpoint to resume from, or None to start afresh; whether to start again in our own run
    directory, stopped before its first checkpoint), for --resume or train.resume: auto."""
    import shutil

    from hfpipe.training import latest_checkpoint

    if explicit and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    if overwrite or not (explicit or recipe.train.resume == "auto"):
        return None, False  # --overwrite wins over train.resume: auto
    run_dir = Path(recipe.output_dir).resolve()
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        if (run_dir / io.MARKER).exists() and not any((run_dir / n).exists() for n in io.LOADABLE):
            log.warning("%s: the run stopped before its first checkpoint; starting it again", run_dir)
            return None, True
        if explicit and run_dir.is_dir() and io.holds_files(run_dir):
            raise UsageError(
                f"{run_dir} holds no complete checkpoint to resume from (set train.save_every)",
                key="output_dir",
            )
        return None, False  # nothing to resume: a fresh start
    _check_unchanged(recipe, run_dir)
    for partial in [*(run_dir / io.CHECKPOINTS).glob(".tmp-*"), *(run_dir / io.CHECKPOINTS).glob(".old-*")]:
        shutil.rmtree(partial, ignore_errors=True)  # a checkpoint that a crash cut short
    return checkpoint, False


def _check_unchanged(recipe, run_dir: Path) -> None:
    """A resume needs the run's recipe (what defines the run and its order of examples), its adapter's base
    and its data as they were."""
    import json

    from hfpipe.assemble import DATA_FINGERPRINT, data_fingerprint
    from hfpipe.errors import RecipeError
    from hfpipe.recipe.load import read_yaml

    saved, _ = read_yaml(run_dir / io.RECIPE, str(run_dir / io.RECIPE))
    current = recipe.model_dump(mode="json")
    changed = [k for k in _RUN_DEFINING if saved.get(k) != current.get(k)]
    changed += [f"train.{k}" for k in _ORDER_DEFINING if saved.get("train", {}).get(k) != current["train"][k]]
    if changed:
        raise RecipeError(
            f"changed since the run started; resuming needs the same {', '.join(changed)} "
            "(or start a new run with --overwrite)",
            file=str(run_dir / io.RECIPE),
            key=changed[0],
        )
    base = run_dir / "base_model.json"
    if recipe.peft is not None and base.exists():
        from hfpipe.adapters import base_changed

        if base_changed(json.loads(base.read_text()), recipe.model.name_or_path):
            raise RecipeError(
                "the base model's weights changed since the run started (sha256 in base_model.json); resuming "
                "needs the same base (or start a new run with --overwrite)",
                key="model.name_or_path",
            )
    fingerprint = run_dir / DATA_FINGERPRINT
    if fingerprint.exists():
        before = json.loads(fingerprint.read_text())
        for path, digest in data_fingerprint(recipe).items():
            if before.get(path) != digest:
                raise DataError(
                    "changed since the run started (its content hash differs); resuming needs the same data "
                    "(or start a new run with --overwrite)",
                    file=path,
                )


def _write_outputs(directory: Path, files: dict, prefix: str = "") -> None:
    """The JSON files a task's evaluation produced (question-answering: predictions, n-best)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        io.write_json(Path(directory) / f"{prefix}{name}", content)


def _write_test_predictions(model, tokenizer, raw, task, recipe, run_dir: Path) -> None:
    """An unlabelled test split is predicted instead of scored: RUN_DIR/test_predictions.jsonl."""
    import json

    from hfpipe.data import FILE, ROW

    test = raw.splits["test"]
    keep = [c for c in test.column_names if c not in (ROW, FILE, recipe.data.columns.label)]
    rows = test.select_columns(keep).to_list()
    preds = task.predict(model, tokenizer, rows, recipe, batch_size=recipe.train.eval_batch_size or 64)
    lines = [json.dumps({**row, **pred}, ensure_ascii=False) for row, pred in zip(rows, preds, strict=True)]
    io.atomic_write_text(run_dir / "test_predictions.jsonl", "\n".join(lines) + "\n")
    log.info(
        "test split has no labels: wrote %d predictions to %s", len(rows), run_dir / "test_predictions.jsonl"
    )


def score(model, tokenizer, dataset, task, recipe, accelerator=None, outputs: dict | None = None) -> dict:
    """The task's metrics of `model` on a prepared dataset; `outputs` receives the files a task writes
    (question-answering: predictions.json, nbest_predictions.json)."""
    from accelerate import Accelerator

    from hfpipe.training.batching import eval_loader

    accelerator = accelerator or Accelerator()
    if recipe.generation.eval_samples:  # a limit is for evaluations during training; a score uses all rows
        recipe = recipe.model_copy(
            update={"generation": recipe.generation.model_copy(update={"eval_samples": None})}
        )
    # batches per process as in training: under split_batches each batch is cut between the processes
    collate = task.collator(tokenizer, recipe, train=False)
    dl = eval_loader(dataset, collate, recipe.train, accelerator.num_processes)
    model, dl = accelerator.prepare(model, dl)
    extra = {"outputs": outputs} if outputs is not None and task.writes_outputs else {}
    return task.evaluate(model, dl, accelerator, recipe, tokenizer=tokenizer, **extra)


# ---------------------------------------------------------------------------------------------------
# Using a run directory


def open_run(run_dir: str | Path, *, verbose: bool = False):
    """(recipe, task, model, tokenizer) of a finished run directory (`verbose`: the libraries' own logs
    and progress bars stay)."""
    from hfpipe.models import load_run_model
    from hfpipe.recipe.load import read_yaml, validate_dict
    from hfpipe.tasks import get_task

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError("not a directory", file=str(run_dir))
    if not (run_dir / io.RECIPE).exists():
        raise RunError(f"no {io.RECIPE}: not an hfpipe run directory", file=str(run_dir))
    if not any((run_dir / name).exists() for name in io.LOADABLE):
        raise RunError(
            "no config.json (nor adapter_config.json): the run did not finish (train it again, or resume it)",
            file=str(run_dir),
        )
    data, lines = read_yaml(run_dir / io.RECIPE, str(run_dir / io.RECIPE))
    recipe = validate_dict(data, {k: (str(run_dir / io.RECIPE), v) for k, v in lines.items()})
    quiet_libraries(verbose)
    task = get_task(recipe.task)
    model, tokenizer = load_run_model(run_dir, task, recipe)
    return recipe, task, model, tokenizer


@runlock.scoped
def evaluate_run(
    run_dir: str | Path,
    data_file: str | None = None,
    split: str = "test",
    predictions_dir=None,
    *,
    verbose: bool = False,
) -> dict:
    """Metrics of a run on `data_file` (same columns as the recipe's data) or on its recipe's `split`;
    tasks that write predictions (question-answering) write them in `predictions_dir`."""
    from hfpipe.assemble import PreparedRun, data_fingerprint, file_digests, prepare_splits
    from hfpipe.data import FORMATS, RawData, load_files, load_raw

    runlock.claim(predictions_dir)
    recipe, task, model, tokenizer = open_run(run_dir, verbose=verbose)
    if data_file is not None:
        files: list[str] = []
        formats: list[str] = []
        # The file's own extension decides its format (the recipe's format was for the recipe's files).
        path = str(Path(data_file).resolve())
        fmt = "auto" if Path(path).suffix.lower() in FORMATS else recipe.data.format
        ds = load_files([path], fmt, files, formats, recipe.data.text_unit)
        raw = RawData({"eval": ds}, files, formats, text_unit=recipe.data.text_unit)
        split, digests = "eval", file_digests(files)
    else:
        raw = load_raw(recipe)
        if split not in raw.splits:
            raise DataError(
                f"the recipe has no {split} split (it has: {', '.join(raw.splits)}); "
                "pass --data FILE or --split",
                file=str(Path(run_dir) / io.RECIPE),
            )
        digests = data_fingerprint(recipe)
    # Prepared as training prepares, with the run's tokenizer and model: labels are read against the run's
    # own label set, not re-inferred from this file.
    run = PreparedRun(recipe, task, raw, tokenizer, model, head_kwargs={}, digests=digests)
    prepared = prepare_splits(run, names=[split])[split]
    if task.needs_labels and task.label_column not in prepared.column_names:
        what = task.scored_against or f"label column {recipe.data.columns.label!r}"
        raise DataError(f"no {what} to score against", **raw.where(split))
    outputs: dict = {}
    metrics = score(model, tokenizer, prepared, task, recipe, outputs=outputs)
    if predictions_dir is not None and outputs:
        _write_outputs(predictions_dir, outputs)
    return metrics


def read_inputs(path: str | Path, recipe) -> list[dict]:
    """Rows to predict from a file: .txt (one text per line), or csv / tsv / json / jsonl / parquet."""
    from hfpipe.data import load_files

    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.exists():
            raise DataError("file not found", file=str(path))
        lines = decode_utf8(path.read_bytes(), DataError, str(path)).splitlines()
        if recipe.data.columns.text_pair:
            raise DataError(
                "this model takes text pairs: give a csv / jsonl file with columns "
                f"{recipe.data.columns.text!r} and {recipe.data.columns.text_pair!r}",
                file=str(path),
            )
        return [{recipe.data.columns.text: line} for line in lines if line.strip()]
    ds = load_files([str(path.resolve())], "auto", [], [])
    needed = [recipe.data.columns.text] + (
        [recipe.data.columns.text_pair] if recipe.data.columns.text_pair else []
    )
    for column in needed:
        if column not in ds.column_names:
            raise DataError(
                f"column {column!r} not found (columns: {', '.join(ds.column_names[:-2])})", file=str(path)
            )
    return [dict(zip(needed, values, strict=True)) for values in zip(*(ds[c] for c in needed), strict=True)]


def predict_run(
    run_dir: str | Path,
    texts: list[str] | None = None,
    text_pairs: list[str] | None = None,
    file: str | Path | None = None,
    batch_size: int = 64,
    *,
    verbose: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(input rows, predictions) for `texts` [+ `text_pairs`] or the rows of `file`."""
    recipe, task, model, tokenizer = open_run(run_dir, verbose=verbose)
    if "predict" not in task.run_commands:
        commands = " or ".join(f"hfpipe {command}" for command in task.run_commands)
        raise RunError(f"a {task.name} run takes {task.inputs}: use {commands}", file=str(run_dir))
    cols = recipe.data.columns
    if file is not None:
        rows = read_inputs(file, recipe)
    else:
        texts = list(texts or [])
        if cols.text_pair and len(text_pairs or []) != len(texts):
            raise DataError(
                f"this model takes text pairs: give one --text-pair per --text "
                f"({len(texts)} texts, {len(text_pairs or [])} pairs)"
            )
        if not cols.text_pair and text_pairs:
            raise DataError("this model takes single texts, not pairs: drop --text-pair")
        rows = [{cols.text: t} for t in texts]
        if cols.text_pair:
            for row, pair in zip(rows, text_pairs, strict=True):
                row[cols.text_pair] = pair
    if not rows:
        raise DataError("nothing to predict: give --text or a --file with rows")
    for number, row in enumerate(rows, start=1):
        for column, text in row.items():
            if not isinstance(text, str) or not text.strip():
                where = f"{file} (row {number})" if file is not None else f"input {number}"
                raise DataError(f"column {column!r}: expected non-empty text, got {text!r}", file=where)
    return rows, task.predict(model, tokenizer, rows, recipe, batch_size=batch_size)


def _check_run_command(task, command: str, refusal: str, run_dir) -> None:
    """RunError unless `hfpipe COMMAND` takes runs of `task`: "a TASK run REFUSAL (COMMAND takes a ... run)"."""
    from hfpipe.tasks import tasks_taking

    if command not in task.run_commands:
        takers = " or ".join(tasks_taking(command))
        raise RunError(f"a {task.name} run {refusal} ({command} takes a {takers} run)", file=str(run_dir))


def _generation_spec(recipe, model, settings: dict | None):
    """The run's generation section with command-line overrides, checked as the recipe's would be."""
    from hfpipe.errors import RecipeError

    try:
        spec = type(recipe.generation).model_validate({**recipe.generation.model_dump(), **(settings or {})})
    except ValueError as exc:
        error = exc.errors()[0]
        raise RecipeError(f"invalid --{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if model.config.is_encoder_decoder and limit is not None and spec.max_new_tokens > limit:
        raise RecipeError(
            f"--max-new-tokens {spec.max_new_tokens} is more than the decoder's {limit} positions"
        )
    return spec


TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def _text_rows(file, texts: list[str] | None, literal: str) -> list[dict]:
    """Rows for generate / translate: `texts` as they are, or the lines of a plain-text file (any name but
    a table's: test.en, prompts.txt; split on newlines only), under the key `literal`; or the rows of a
    csv / tsv / json / jsonl / parquet file, all columns. Blank lines stay, so outputs line up with lines."""
    from hfpipe.data import FILE, ROW, load_files

    if file is None:
        return [{literal: t} for t in texts or []]
    path = Path(file)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        if not path.is_file():
            raise DataError("file not found" if not path.exists() else "not a file", file=str(path))
        lines = decode_utf8(path.read_bytes(), DataError, str(path)).split("\n")
        if lines[-1] == "":
            lines.pop()  # the final newline ends the last line
        return [{literal: line.removesuffix("\r")} for line in lines]
    ds = load_files([str(path.resolve())], "auto", [], [])
    return [{k: v for k, v in r.items() if k not in (ROW, FILE)} for r in ds]


def _skip_blank(rows: list[dict], literal: str, run, empty: dict) -> list[dict]:
    """run(rows) on the rows whose literal text is not blank; `empty` for the blank lines, in place."""
    keep = [i for i, r in enumerate(rows) if literal not in r or r[literal].strip()]
    if not keep:
        raise DataError("nothing to do: every input line is blank")
    done = dict(zip(keep, run([rows[i] for i in keep]), strict=True))
    return [done.get(i, dict(empty)) for i in range(len(rows))]


def generate_run(
    run_dir: str | Path,
    prompts: list[str] | None = None,
    file: str | Path | None = None,
    *,
    settings: dict | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    verbose: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(input rows, [{"completion": ...}]) for literal `prompts` or the rows of `file`.

    A .txt file holds one prompt per line; csv / jsonl rows are rendered with the run's prompt template
    (or its prompt column). `settings` override the run's generation section (max_new_tokens, ...).
    """
    from hfpipe.tasks.generation import LITERAL
    from hfpipe.tasks.generation import predict as generate

    recipe, task, model, tokenizer = open_run(run_dir, verbose=verbose)
    _check_run_command(task, "generate", "does not generate text", run_dir)
    spec = _generation_spec(recipe, model, settings)
    rows = _text_rows(file, prompts, LITERAL)
    if not rows:
        raise DataError("nothing to generate from: give --prompt or a --file with rows")
    predictions = _skip_blank(
        rows,
        LITERAL,
        lambda some: generate(
            model, tokenizer, some, recipe, batch_size=batch_size, settings=spec, seed=seed
        ),
        {"completion": ""},
    )
    shown = [{"prompt": r[LITERAL]} if LITERAL in r else r for r in rows]
    return shown, predictions


def translate_run(
    run_dir: str | Path,
    texts: list[str] | None = None,
    file: str | Path | None = None,
    *,
    settings: dict | None = None,
    batch_size: int = 16,
    verbose: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(input rows, [{"translation": ...}]) for `texts` or the rows of `file` (.txt: one source per line;
    csv / jsonl: the column named data.source_lang, or a `translation` column)."""
    from hfpipe.tasks.translation import LITERAL
    from hfpipe.tasks.translation import predict as translate

    recipe, task, model, tokenizer = open_run(run_dir, verbose=verbose)
    _check_run_command(task, "translate", "does not translate", run_dir)
    spec = _generation_spec(recipe, model, settings)
    rows = _text_rows(file, texts, LITERAL)
    if not rows:
        raise DataError("nothing to translate: give --text or a --file with rows")
    predictions = _skip_blank(
        rows,
        LITERAL,
        lambda some: translate(model, tokenizer, some, recipe, batch_size=batch_size, settings=spec),
        {"translation": ""},
    )
    shown = [{recipe.data.source_lang: r[LITERAL]} if LITERAL in r else r for r in rows]
    return shown, predictions


def answer_run(
    run_dir: str | Path,
    questions: list[str] | None = None,
    contexts: list[str] | None = None,
    file: str | Path | None = None,
    *,
    batch_size: int = 32,
    verbose: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(input rows, [{answer, score, start, end}]) for question / context pairs or the rows of `file`
    (csv / jsonl / SQuAD JSON with the recipe's question and context columns)."""
    from hfpipe.data import load_files
    from hfpipe.tasks.question_answering import CONTEXT, QUESTION
    from hfpipe.tasks.question_answering import predict as answer

    recipe, task, model, tokenizer = open_run(run_dir, verbose=verbose)
    _check_run_command(task, "answer", "does not answer questions", run_dir)
    if file is not None:
        ds = load_files([str(Path(file).resolve())], "auto", [], [])
        cols = recipe.data.columns
        for column in (cols.question, cols.context):
            if column not in ds.column_names:
                raise DataError(
                    f"column {column!r} not found (columns: {', '.join(ds.column_names[:-2])})",
                    file=str(file),
                )
        rows = [{k: v for k, v in r.items() if k in (cols.id, cols.question, cols.context)} for r in ds]
    else:
        questions, contexts = questions or [], contexts or []
        if len(contexts) == 1 and len(questions) > 1:
            contexts = contexts * len(questions)  # several questions on one context
        if not questions or len(questions) != len(contexts):
            raise DataError(
                f"give --question and --context in pairs ({len(questions)} questions, {len(contexts)} contexts), "
                "or one --context for all questions, or --file"
            )
        rows = [{QUESTION: q, CONTEXT: c} for q, c in zip(questions, contexts, strict=True)]
    if not rows:
        raise DataError("nothing to answer", file=str(file) if file else None)
    predictions = answer(model, tokenizer, rows, recipe, batch_size=batch_size)
    shown = [{"question": r[QUESTION]} if QUESTION in r else r for r in rows]
    return shown, predictions


@runlock.scoped
def merge_run(
    run_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, verbose: bool = False
) -> tuple[Path, float]:
    """Fold an adapter run into its base model: (standalone run directory `out_dir`, largest difference
    between the adapter model's outputs and the merged model's on a probe input)."""
    import json

    import torch

    from hfpipe.adapters import ADAPTER_CONFIG, is_adapter_run, max_output_difference, probe_inputs

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    runlock.claim(out_dir)
    if run_dir.is_dir() and (run_dir / "config.json").exists() and not is_adapter_run(run_dir):
        raise RunError("not an adapter run: it already holds a full model", file=str(run_dir))
    recipe, task, model, tokenizer = open_run(run_dir, verbose=verbose)
    if recipe.peft is not None and recipe.peft.method == "prefix-tuning":
        raise RunError(
            "a prefix-tuning adapter adds key / value positions, not weight updates: it cannot be merged; "
            "use the adapter run directory itself",
            file=str(run_dir),
        )
    if out_dir.resolve() == run_dir.resolve():
        raise RunError("the merged model needs a directory of its own", file=str(out_dir))
    probe = probe_inputs(model, tokenizer)
    with torch.no_grad():
        before = model(**probe)
        merged = model.merge_and_unload()
        merged.eval()
        after = merged(**probe)
    difference = max_output_difference(before, after)
    # fp32 sums agree to ~1e-6; a bf16 / fp16 checkpoint rounds the merged weights to its own precision.
    dtype = next(merged.parameters()).dtype
    tolerance = (
        1e-4 if dtype == torch.float32 else 1e-2 * max(1.0, max_output_difference(before, {}, absolute=True))
    )
    if difference > tolerance:
        raise HfpipeError(
            f"the merged model's outputs differ from the adapter's by {difference:.2e} (more than {tolerance:.0e})",
            file=str(run_dir),
        )
    base = json.loads((run_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    io.prepare_output_dir(out_dir, overwrite=overwrite, protected=(str(run_dir), base))
    io.export_model(merged, tokenizer, out_dir)
    # The recipe as it ran, pointing at this directory: `hfpipe train OUT/recipe.yaml --overwrite` must not
    # replace the adapter run.
    from hfpipe.recipe import dump_recipe

    recipe = recipe.model_copy(update={"output_dir": str(out_dir.resolve())})
    io.atomic_write_text(out_dir / io.RECIPE, dump_recipe(recipe))
    metrics = json.loads((run_dir / io.METRICS).read_text()) if (run_dir / io.METRICS).exists() else {}
    total = sum(p.numel() for p in merged.parameters())
    metrics["adapter_parameters"] = metrics.get("parameters")
    metrics["parameters"] = {"total": total, "trainable": total, "trainable_fraction": 1.0}
    metrics["merged_from"] = str(run_dir.resolve())
    metrics["merge_max_output_difference"] = difference
    io.write_json(out_dir / io.METRICS, metrics)
    command = shlex.join(["hfpipe", *sys.argv[1:]])
    card = io.model_card(recipe, task, metrics, command, merged_from=str(run_dir.resolve()))
    io.atomic_write_text(out_dir / io.CARD, card)
    log.info("merged %s into its base: outputs differ by at most %.2e", run_dir, difference)
    return out_dir, difference


# What `hfpipe push` leaves out: resumable state (optimizer, RNG: big and useless to others), a local MLflow
# store, hfpipe's marker, lock file and staging folders.
PUSH_IGNORE = ("checkpoints/*", "mlruns/*", ".hfpipe-run", ".hfpipe-lock", ".tmp*", "**/.tmp*")


def push_files(run_dir: str | Path) -> list[tuple[str, int]]:
    """(path in the repository, bytes) of every file `hfpipe push` uploads from a finished run."""
    import fnmatch

    run_dir = Path(run_dir)
    if not (run_dir / io.RECIPE).exists() or not any((run_dir / n).exists() for n in io.LOADABLE):
        raise RunError("not a finished hfpipe run directory (no recipe.yaml and model)", file=str(run_dir))
    files = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir).as_posix()
        if not any(fnmatch.fnmatch(relative, pattern) for pattern in PUSH_IGNORE):
            files.append((relative, path.stat().st_size))
    return files


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None) -> str:
    """Upload a run directory (model, tokenizer, card, recipe, metrics, logs) to a Hub model repository,
    creating it if needed; returns the commit URL. Needs the network and a token (HF_TOKEN or
    `hf auth login`)."""
    import os

    files = push_files(run_dir)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise UsageError("HF_HUB_OFFLINE is set: pushing needs the network (unset it, or use --dry-run)")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(run_dir),
            repo_id=repo_id,
            revision=revision,
            ignore_patterns=list(PUSH_IGNORE),
            commit_message=f"hfpipe push of {Path(run_dir).name} ({len(files)} files)",
        )
    except Exception as exc:  # HTTP errors, no network, no token: whatever the client raises, one line
        raise HfpipeError(f"push to {repo_id} failed: {type(exc).__name__}: {first_line(exc)}") from None
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)

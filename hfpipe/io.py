"""The run directory: atomic writes, its layout, and the model card.

Layout (a Hugging Face model directory plus hfpipe's records)::

    RUN_DIR/config.json, model.safetensors, tokenizer*.json   the final (best) model
    RUN_DIR/recipe.yaml                                       the resolved recipe that ran
    RUN_DIR/metrics.jsonl                                     one line per log / eval event
    RUN_DIR/metrics.json                                      final summary (best, validation, test)
    RUN_DIR/README.md                                         model card
    RUN_DIR/checkpoints/step-000100/                          resumable training state
    RUN_DIR/checkpoints/best/                                 weights of the best evaluation so far
    RUN_DIR/.hfpipe-lock                                      who writes the run now (hfpipe.runlock)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from hfpipe.errors import UsageError
from hfpipe.formatting import fmt

RECIPE = "recipe.yaml"
METRICS = "metrics.json"
METRICS_LOG = "metrics.jsonl"
CARD = "README.md"
CHECKPOINTS = "checkpoints"
MARKER = ".hfpipe-run"
# The lock of the command writing the directory (hfpipe.runlock): never one of the run's files.
LOCK = ".hfpipe-lock"
# A file that makes a run directory loadable, written last: a full model's config, or an adapter's.
LOADABLE = ("config.json", "adapter_config.json")


def _repo_root(start: Path) -> Path | None:
    for parent in (start, *start.parents):
        if (parent / ".git").exists():
            return parent
    return None


def forbidden_output_dirs() -> set[Path]:
    """/, the home directory and the repository around the working directory: never a run directory."""
    forbidden = {Path("/"), Path.home().resolve()}
    root = _repo_root(Path.cwd().resolve())
    if root is not None:
        forbidden.add(root)
    return forbidden


def holds_files(folder: Path) -> bool:
    """Whether `folder` holds anything but the lock file (which the running command itself may hold)."""
    return any(child.name != LOCK for child in Path(folder).iterdir())


def check_output_dir(path: str | Path, *, overwrite: bool, protected: tuple[str, ...] = ()) -> Path:
    """The run directory, refused (UsageError) when it cannot be written: a directory that already holds
    files without `overwrite`; with it, one hfpipe did not create (no MARKER file) or one that holds a file
    the run reads (`protected`: the recipe, the data). Changes nothing: `train` calls it before loading
    anything, and `prepare_output_dir` again before it writes."""
    out = Path(path).expanduser().resolve()
    if out in forbidden_output_dirs():
        raise UsageError(
            f"refusing to use {out} as output_dir (it is / , the home directory or the "
            "repository root); pick a subdirectory",
            key="output_dir",
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory", key="output_dir")
    if out.is_dir() and holds_files(out):
        if not overwrite:
            raise UsageError(
                f"{out} already holds files; pass --overwrite to replace that run (or change output_dir)",
                key="output_dir",
            )
        if not (out / MARKER).exists():
            raise UsageError(
                f"{out} was not created by hfpipe train (no {MARKER}); refusing to delete what is in it, "
                "even with --overwrite",
                key="output_dir",
            )
        for item in protected:
            if Path(item).resolve().is_relative_to(out):
                raise UsageError(
                    f"{out} holds {item}, which this run reads; refusing to delete it", key="output_dir"
                )
    return out


def prepare_output_dir(path: str | Path, *, overwrite: bool, protected: tuple[str, ...] = ()) -> Path:
    """Create the run directory, or empty an earlier run there (`overwrite`), after `check_output_dir`.

    Only a directory that hfpipe created (it holds the MARKER file) is ever emptied, and never one that
    holds a file the run reads. The lock file stays: the command that calls this holds it.
    """
    out = check_output_dir(path, overwrite=overwrite, protected=protected)
    if out.is_dir() and holds_files(out):
        for child in out.iterdir():
            if child.name == LOCK:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / MARKER, "This directory is an hfpipe run; `hfpipe train --overwrite` may replace it.\n"
    )
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested mappings (a recipe) as one level of dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=2) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(jsonable(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_dir(final: Path, fill) -> Path:
    """Build a directory with `fill(tmp_dir)` next to `final`, then rename it into place.

    A crash at any moment leaves either the old directory or the new one, never a mix: an unfinished
    temporary directory starts with '.tmp-' and is ignored (and cleaned) by later runs.
    """
    tmp = staging_dir(final)
    fill(tmp)
    return commit_dir(tmp, final)


def staging_dir(final: Path) -> Path:
    """A fresh, empty '.tmp-<name>' directory beside `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` to disk, so a rename never publishes data still in the page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def commit_dir(tmp: Path, final: Path) -> Path:
    """Rename a finished staging directory to `final`, replacing what was there."""
    final = Path(final)
    _fsync_tree(tmp)
    if final.exists():
        old = final.parent / f".old-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def export_model(model, tokenizer, run_dir: Path, extra: dict | None = None) -> None:
    """Save model + tokenizer (+ `extra` {file name: JSON content}) into the run directory's root.

    Files are written to a temporary directory and moved in one by one with atomic renames; config.json
    (adapter_config.json for an adapter), which makes the directory loadable, arrives last, so a
    half-exported directory never loads.
    """
    run_dir = Path(run_dir)

    from hfpipe.adapters import save_options

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, **save_options(model))
        tokenizer.save_pretrained(tmp)
        (tmp / CARD).unlink(missing_ok=True)  # PEFT writes a stub card; hfpipe writes its own
        for name, content in (extra or {}).items():
            write_json(tmp / name, content)

    staged = atomic_dir(run_dir / ".export", fill)
    names = sorted(p.name for p in staged.iterdir())
    names.sort(key=lambda n: n in LOADABLE)
    mode = 0o666 & ~_umask()
    for name in names:
        if (staged / name).is_file():
            os.chmod(staged / name, mode)
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged / name, target)
    staged.rmdir()


def model_card(recipe, task, metrics: dict, command: str, merged_from: str | None = None) -> str:
    """README.md for the run directory: Hub metadata, what was trained on what, the results.

    An adapter run's card says so (library peft, its base model, how to load both); `merged_from` is the
    adapter run a `hfpipe merge` directory was made from."""
    from hfpipe import __version__

    adapter = recipe.peft is not None and merged_from is None
    params = metrics.get("parameters") or {}
    adapter_params = metrics.get("adapter_parameters") or params
    model = recipe.model.name_or_path or f"{recipe.model.architecture} built from config"
    source, dataset_type, dataset_name = _data_source(recipe.data)
    name = recipe.name or Path(recipe.output_dir).name
    front = card_metadata(recipe, task, metrics, name, adapter, dataset_type, dataset_name)
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# {name}",
        "",
        recipe.description or f"A {task.name} model trained with hfpipe {__version__}.",
        "",
        f"- **Task:** {task.name} ({task.description})",
        f"- **Model:** {model}, {params.get('total', 0):,} parameters",
        f"- **Data:** {source}",
        f"- **Command:** `{command}`",
    ]
    if recipe.peft is not None:
        lines.append(
            f"- **Adapter:** {recipe.peft.method}, {adapter_params.get('trainable', 0):,} trainable parameters "
            f"({100 * adapter_params.get('trainable_fraction', 0):.2f}%)"
            + (f"; merged into the base by `hfpipe merge` from `{merged_from}`" if merged_from else "")
        )
    lines += ["", "## Results", "", "| split | metric | value |", "|---|---|---|"]
    for split in ("validation", "test"):
        for metric, value in (metrics.get(split) or {}).items():
            lines.append(f"| {split} | {metric} | {fmt(value)} |")
    if metrics.get("best_step") is not None:
        lines += ["", f"Best checkpoint: step {metrics['best_step']} by {metrics.get('metric_for_best')}."]
    folder = Path(recipe.output_dir).name
    use = _adapter_use(task, folder) if adapter else _pipeline_use(task, folder)
    lines += ["", "## Use", "", *use, "", *_training_section(recipe, metrics, command)]
    return "\n".join(lines)


def _data_source(data) -> tuple[str, str, str]:
    """(the data as the card says it, its dataset type and name for the Hub metadata)."""
    if data.builtin:
        source = f"hfpipe built-in dataset `{data.builtin.name}` (seed {data.builtin.seed})"
        return source, f"hfpipe/{data.builtin.name}", f"hfpipe built-in {data.builtin.name}"
    if data.dataset:
        source = f"Hub dataset `{data.dataset}`" + (
            f" / `{data.dataset_config}`" if data.dataset_config else ""
        )
        return source, data.dataset, data.dataset
    files = [data.train] if isinstance(data.train, str) else list(data.train or [])
    first = Path(files[0]) if files else Path("data")
    return ", ".join(f"`{Path(f).name}`" for f in files), first.suffix.lstrip(".") or "text", first.stem


def _pipeline_use(task, folder: str) -> list[str]:
    return [
        "```python",
        "from transformers import pipeline",
        f'pipe = pipeline("{task.pipeline_tag}", model="{folder}")',
        "```",
    ]


def _adapter_use(task, folder: str) -> list[str]:
    """How an adapter run loads without hfpipe: its base model (the config it was loaded with), then peft."""
    return [
        "This directory holds the adapter only; it loads on top of its base model (named in",
        "`adapter_config.json` and `base_model.json`, with the config the base was loaded with):",
        "",
        "```python",
        "import json",
        "import transformers",
        "from peft import PeftModel",
        f"from transformers import {task.auto_model}",
        "",
        f'record = json.load(open("{folder}/base_model.json"))',
        'config = transformers.CONFIG_MAPPING[record["model_type"]].from_dict(record["config"])',
        f'base = {task.auto_model}.from_pretrained(record["name_or_path"], config=config, '
        "ignore_mismatched_sizes=True)",
        f'model = PeftModel.from_pretrained(base, "{folder}")',
        *(
            ["model.forward = model.base_model.forward  # PEFT 0.21's QA class drops token_type_ids"]
            if task.peft_task_type == "QUESTION_ANS"
            else []
        ),
        "```",
        "",
        f"hfpipe commands take the directory as it is; `hfpipe merge {folder} OUT` writes a standalone model.",
    ]


# Packages whose versions decide what a run computes; recorded in metrics.json and the card.
VERSIONED = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "safetensors")


def package_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from hfpipe import __version__

    found = {"hfpipe": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def card_metadata(
    recipe, task, metrics: dict, name: str, adapter: bool, dataset_type: str, dataset_name: str
) -> str:
    """The card's YAML front matter, made by huggingface_hub (the Hub's own schema): library, pipeline,
    license, languages, datasets, base model, tags and a model-index with every validation / test metric."""
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    for split in ("validation", "test"):
        for metric, value in (metrics.get(split) or {}).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            results.append(
                EvalResult(
                    task_type=task.pipeline_tag,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config=recipe.data.dataset_config if recipe.data.dataset else None,
                    dataset_split=split,
                    metric_type=metric,
                    metric_value=float(value),
                    metric_name=f"{split} {metric}",
                )
            )
    base = recipe.model.name_or_path
    hub_base = base if base and not Path(base).exists() else None  # a Hub id, not a local path
    datasets = list(recipe.card.datasets) + ([recipe.data.dataset] if recipe.data.dataset else [])
    tags = ["hfpipe", task.name, *([recipe.peft.method] if recipe.peft is not None else []), *recipe.tags]
    data = ModelCardData(
        model_name=name,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=task.pipeline_tag,
        license=recipe.card.license,
        language=list(recipe.card.language) or None,
        datasets=list(dict.fromkeys(datasets)) or None,
        base_model=hub_base,
        tags=list(dict.fromkeys(tags)),
        eval_results=results or None,
    )
    return data.to_yaml()


def _training_section(recipe, metrics: dict, command: str) -> list[str]:
    from hfpipe.recipe import dump_recipe

    train = metrics.get("train") or {}
    versions = metrics.get("versions") or package_versions()
    done = []
    if train:
        done.append(
            f"{train.get('steps', '?')} optimizer steps ({train.get('epochs', '?')} epochs, "
            f"{train.get('examples', '?'):,} training examples) in {train.get('runtime_s', 0):.1f} s"
            + (f" ({train['train_s']:.1f} s training)" if train.get("train_s") else "")
            + f" on {train.get('processes', 1)} process(es)."
            if isinstance(train.get("examples"), int)
            else f"{train.get('steps', '?')} optimizer steps in {train.get('runtime_s', 0):.1f} s."
        )
    return [
        "## Training",
        "",
        *done,
        *([""] if done else []),
        "The exact command:",
        "",
        "```bash",
        command,
        "```",
        "",
        "The recipe (`recipe.yaml`, every default resolved):",
        "",
        "```yaml",
        dump_recipe(recipe).rstrip("\n"),
        "```",
        "",
        "Package versions:",
        "",
        "| package | version |",
        "|---|---|",
        *(f"| {package} | {version} |" for package, version in versions.items()),
        "",
        "Training logs are in `metrics.jsonl`; metrics in `metrics.json`.",
        "",
    ]

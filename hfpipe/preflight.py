"""Cheap checks of a valid recipe against this machine, before anything heavy runs: the files and folders it
names exist, and the packages its model needs are installed. `hfpipe validate` runs them (no torch, no
transformers: a few stat calls and small JSON reads), and `hfpipe train` runs them before it loads any data
or model, so a typo in a path fails in a second, not after the tokenizer is trained."""

from __future__ import annotations

from pathlib import Path

from hfpipe.errors import DataError, HfpipeError, MissingPackage, RecipeError


def problems(recipe) -> list[HfpipeError]:
    """Every problem found, in recipe order (empty when the recipe can run here)."""
    from hfpipe.model_files import check_packages
    from hfpipe.tokenization import looks_like_path

    found: list[HfpipeError] = []
    for key, name in (
        ("model.name_or_path", recipe.model.name_or_path),
        ("tokenizer.name_or_path", recipe.tokenizer.name_or_path),
    ):
        if not name:
            continue
        if looks_like_path(name) and not Path(name).expanduser().is_dir():
            what = "no such directory" if not Path(name).expanduser().exists() else "not a directory"
            found.append(RecipeError(f"{what}: {name} (a path, not a Hub name)", key=key))
            continue
        try:
            check_packages(name, recipe.model.revision, key)
        except MissingPackage as exc:
            found.append(exc)
    sections = [recipe.data] if recipe.data is not None else []
    sections += [task.data for task in (recipe.fewshot.tasks if recipe.fewshot is not None else [])]
    for data in sections:
        found += _missing_files(data)
    config_file = recipe.accelerate.config_file
    if config_file and not Path(config_file).is_file():
        found.append(RecipeError(f"no Accelerate config file {config_file}", key="accelerate.config_file"))
    return found


def _missing_files(data) -> list[DataError]:
    """The first data file of the section that is not there (one line: a missing folder is many files)."""
    from hfpipe.data import data_files
    from hfpipe.errors import shown_path

    missing = [path for path in data_files(data) if not Path(path).is_file()]
    if not missing:
        return []
    what = "file not found" if not Path(missing[0]).exists() else "is a directory, not a data file"
    more = f" (and {len(missing) - 1} more of its data files)" if len(missing) > 1 else ""
    hint = f"; {data.source_hint}" if data.source_hint else ""
    return [DataError(what + more + hint, file=shown_path(missing[0]))]


def check(recipe) -> None:
    """Raise the first problem (`hfpipe train` stops at it; `validate` lists them all)."""
    found = problems(recipe)
    if found:
        raise found[0]

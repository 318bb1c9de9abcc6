"""Load the recipe's data into a DatasetDict (train / validation / test) with errors that name file and line.

Local files are read with the `datasets` builders (Arrow, fast, memory-mapped). Each file is loaded on
its own and tagged with a file index and row number, so a problem found later (a bad label, an empty
text) is reported as ``data/train.csv:17: column 'label': ...`` even after shuffling or splitting.
When a builder fails, the file is scanned with the standard library to find the offending line.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from hfpipe.errors import DataError, decode_utf8, shown_path

log = logging.getLogger("hfpipe")

ROW = "_hfpipe_row"  # 0-based row of the example in its file
FILE = "_hfpipe_file"  # index into RawData.files
SPLITS = ("train", "validation", "test")
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
}


@dataclass
class RawData:
    """The raw splits plus what is needed to point at a row in its file."""

    splits: dict  # split name -> datasets.Dataset
    files: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    origin: str = "files"  # files | hub | builtin
    text_unit: str = "line"  # how text files were cut into rows

    def where(self, split: str, example: dict | None = None) -> dict:
        """file= and line= keyword arguments for a DataError about this example (or split)."""
        if example is not None and FILE in example and example[FILE] is not None:
            path, fmt = self.files[example[FILE]], self.formats[example[FILE]]
            row = int(example[ROW])
            if fmt == "text":  # one row per line (blank lines included), or paragraphs / whole files
                return (
                    {"file": shown_path(path), "line": row + 1}
                    if self.text_unit == "line"
                    else {"file": f"{shown_path(path)} ({self.text_unit} {row + 1})"}
                )
            lines = _record_lines(path, fmt) if fmt in ("csv", "tsv", "jsonl") else []
            if row < len(lines):
                return {"file": shown_path(path), "line": lines[row]}
            # parquet / json arrays have rows, not lines
            return {"file": f"{shown_path(path)} (row {row + 1})"}
        if example is not None and ROW in example:
            return {"file": f"{self.origin} split {split!r} (row {int(example[ROW]) + 1})"}
        split_files = sorted({self.files[i] for i in self._file_ids(split)}) if self.files else []
        if split_files:
            return {"file": ", ".join(shown_path(f) for f in split_files)}
        return {"file": f"{self.origin} split {split!r}"}

    def _file_ids(self, split: str) -> list[int]:
        ds = self.splits.get(split)
        if ds is None or FILE not in ds.column_names or len(ds) == 0:
            return []
        return sorted(set(ds.unique(FILE)))


@functools.lru_cache(maxsize=8)
def _record_lines(path: str, fmt: str) -> list[int]:
    """Line number (1-based) where each data row of a file starts; read only to report an error.

    Blank lines (skipped by the readers) and quoted multi-line csv fields make row + 2 wrong.
    """
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if fmt == "jsonl":
            return [number for number, line in enumerate(f, start=1) if line.strip()]
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
        starts, previous = [], 0
        for row in reader:
            if row:
                starts.append(previous + 1)
            previous = reader.line_num
        return starts[1:]  # the first record is the header


def file_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    raise DataError(
        f"cannot tell the format from the extension {suffix!r}; set data.format "
        f"(one of csv, tsv, json, jsonl, parquet, text)",
        file=shown_path(path),
    )


# ---------------------------------------------------------------------------------------------------
# Reading files


_SAMPLE_BY = {"line": "line", "paragraph": "paragraph", "file": "document"}


def _existing_file(path: str) -> str:
    """`path` as messages show it; DataError unless it is a file that exists."""
    shown = shown_path(path)
    if not os.path.exists(path):
        raise DataError("file not found", file=shown)
    if os.path.isdir(path):
        raise DataError("is a directory, not a data file", file=shown)
    return shown


def _load_file(path: str, fmt: str, file_index: int, text_unit: str = "line"):
    import datasets

    shown = _existing_file(path)
    if os.path.getsize(path) == 0:
        raise DataError("file is empty", file=shown)
    if fmt == "json":
        squad = _squad_rows(path)
        if squad is not None:
            ds = datasets.Dataset.from_list(squad)
            ds = ds.add_column(ROW, list(range(len(ds))))
            return ds.add_column(FILE, [file_index] * len(ds))
    builder, kwargs = {
        "csv": ("csv", {"delimiter": ",", "keep_default_na": False, "na_filter": False}),
        # GLUE-style tsv files are not quoted: a " inside a sentence is just a character.
        "tsv": (
            "csv",
            {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False, "na_filter": False},
        ),
        "json": ("json", {}),
        "jsonl": ("json", {}),
        "parquet": ("parquet", {}),
        "text": ("text", {"sample_by": _SAMPLE_BY[text_unit]}),
    }[fmt]
    # The builders log their own error (with a traceback) before raising: hfpipe reports it on one line.
    builder_log = logging.getLogger("datasets")
    level = builder_log.level
    builder_log.setLevel(logging.CRITICAL)
    try:
        ds = datasets.load_dataset(builder, data_files={"data": path}, split="data", **kwargs)
    except Exception as exc:  # the builders raise many types; find the real cause in the file
        raise _diagnose(path, fmt, exc) from None
    finally:
        builder_log.setLevel(level)
    if len(ds) == 0:
        raise DataError("file has no rows", file=shown)
    ds = ds.add_column(ROW, list(range(len(ds))))
    return ds.add_column(FILE, [file_index] * len(ds))


def _squad_rows(path: str) -> list[dict] | None:
    """The questions of an official SQuAD JSON file (version / data / paragraphs / qas) as flat rows:
    id, title, context, question, answers {text, answer_start}, is_impossible. None for other JSON."""
    shown = shown_path(path)
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"{") or b'"data"' not in head and b'"version"' not in head:
        return None
    try:
        doc = json.loads(decode_utf8(Path(path).read_bytes(), DataError, shown))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=shown, line=e.lineno) from None
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not (
        isinstance(articles, list)
        and articles
        and isinstance(articles[0], dict)
        and "paragraphs" in articles[0]
    ):
        return None
    rows = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas") or []):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                answers = qa.get("answers") or []
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise DataError(f"{where}: answers must be a list of {{text, answer_start}}", file=shown)
                rows.append(
                    {
                        "id": str(qa.get("id", where)),
                        "title": str(article.get("title", "")),
                        "context": context,
                        "question": qa.get("question"),
                        "answers": {
                            "text": [x.get("text") for x in answers],
                            "answer_start": [x.get("answer_start") for x in answers],
                        },
                        "is_impossible": bool(qa.get("is_impossible", False)),
                    }
                )
    if not rows:
        raise DataError("SQuAD file has no questions", file=shown)
    return rows


def _diagnose(path: str, fmt: str, exc: Exception) -> DataError:
    """Turn a builder failure into a DataError pointing at the first bad line of the file."""
    shown = shown_path(path)
    try:
        text = decode_utf8(Path(path).read_bytes(), DataError, shown)
    except DataError as err:
        return err
    if fmt == "jsonl" or (fmt == "json" and not text.lstrip().startswith(("[", "{\n", "{\r"))):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                return DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=shown, line=number)
            if not isinstance(value, dict):
                return DataError(
                    f"expected a JSON object per line, got {type(value).__name__}", file=shown, line=number
                )
    if fmt == "json":
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=shown, line=e.lineno)
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(text.splitlines(), delimiter=delimiter, quoting=quoting)
        header = next(reader, None) or []
        rows = 0
        for number, row in enumerate(reader, start=2):
            if row and len(row) != len(header):
                return DataError(
                    f"expected {len(header)} fields (as in the header), found {len(row)}",
                    file=shown,
                    line=number,
                )
            rows += bool(row)
        if not rows:
            return DataError("file has no rows (only a header)", file=shown)
    cause = str(exc).strip().splitlines()
    detail = cause[-1] if cause else type(exc).__name__
    return DataError(f"cannot read as {fmt}: {detail[:300]}", file=shown)


def load_files(
    paths: list[str], declared: str, files: list[str], formats: list[str], text_unit: str = "line"
):
    import datasets

    parts = []
    for path in paths:
        fmt = file_format(path, declared)
        files.append(path)
        formats.append(fmt)
        parts.append(_load_file(path, fmt, len(files) - 1, text_unit))
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as exc:
        raise DataError(
            f"files of one split have different columns or column types: {exc}",
            file=", ".join(shown_path(p) for p in paths),
        ) from None


PARALLEL_TARGET = 1  # in parallel files, a row's target line is in raw.files[row's FILE + 1]


def parallel_files(prefix: str, source: str, target: str) -> tuple[str, str]:
    return f"{prefix}.{source}", f"{prefix}.{target}"


def _read_lines(path: str) -> list[str]:
    """Lines split on newlines only (a line may hold tabs or other separators); a final newline ends it."""
    shown = _existing_file(path)
    text = decode_utf8(Path(path).read_bytes(), DataError, shown)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError("file is empty", file=shown)
    return lines


def _load_parallel(prefixes: list[str], source: str, target: str, files: list[str], formats: list[str]):
    """Aligned PREFIX.source / PREFIX.target files -> a dataset with one column per language."""
    import datasets

    parts = []
    for prefix in prefixes:
        src_path, tgt_path = parallel_files(prefix, source, target)
        src, tgt = _read_lines(src_path), _read_lines(tgt_path)
        if len(src) != len(tgt):
            raise DataError(
                f"misaligned parallel files: {len(src)} lines in {shown_path(src_path)}, {len(tgt)} in "
                f"{shown_path(tgt_path)}",
                file=f"{shown_path(src_path)}, {shown_path(tgt_path)}",
            )
        # Rows are lines: errors point at line row + 1 of the source file, whose entry the target file's
        # follows (PARALLEL_TARGET: the target side of a row is in file FILE + 1).
        files += [src_path, tgt_path]
        formats += ["text", "text"]
        parts.append(
            datasets.Dataset.from_dict(
                {source: src, target: tgt, ROW: list(range(len(src))), FILE: [len(files) - 2] * len(src)}
            )
        )
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def data_files(data) -> list[str]:
    """Every file the data section reads (for content hashes)."""
    out = []
    for split in SPLITS:
        value = getattr(data, split)
        paths = [value] if isinstance(value, str) else list(value or [])
        for path in paths:
            if data.format == "parallel":
                out += parallel_files(path, data.source_lang, data.target_lang)
            else:
                out.append(path)
    return out


# ---------------------------------------------------------------------------------------------------
# The entry point


def load_raw(recipe) -> RawData:
    """The recipe's data as RawData: splits train (always), validation and test (when given)."""
    import datasets

    data = recipe.data
    if data.builtin is not None:
        from hfpipe.builtin_data import GENERATORS

        b = data.builtin
        rows = GENERATORS[b.name](b.train_size, b.validation_size, b.test_size, b.seed)
        splits = {}
        for name, split_rows in rows.items():
            ds = datasets.Dataset.from_list(split_rows)
            splits[name] = ds.add_column(ROW, list(range(len(ds))))
        raw = RawData(splits, origin=f"builtin:{b.name}")
    elif data.dataset is not None:
        raw = RawData(load_hub(data), origin=f"hub:{data.dataset}")
    else:
        if data.train is None:
            raise DataError("data.train is required (validation and test alone cannot train a model)")
        files: list[str] = []
        formats: list[str] = []
        splits = {}
        for split in SPLITS:
            value = getattr(data, split)
            if value is None:
                continue
            paths = [value] if isinstance(value, str) else list(value)
            if split == "train" and data.streaming:
                from hfpipe.streaming import stream_files

                splits[split] = stream_files(paths)
                if data.max_train_samples:
                    splits[split] = splits[split].take(data.max_train_samples)
                files += paths
                formats += ["stream"] * len(paths)
            elif data.format == "parallel":
                splits[split] = _load_parallel(paths, data.source_lang, data.target_lang, files, formats)
            else:
                splits[split] = load_files(paths, data.format, files, formats, data.text_unit)
        raw = RawData(splits, files, formats, text_unit=data.text_unit)

    if "validation" not in raw.splits and data.validation_fraction:
        try:
            parts = raw.splits["train"].train_test_split(
                test_size=data.validation_fraction, seed=recipe.train.seed, shuffle=True
            )
        except ValueError:
            raise DataError(
                f"{len(raw.splits['train'])} training rows are too few to hold out "
                f"data.validation_fraction={data.validation_fraction}",
                **raw.where("train"),
            ) from None
        raw.splits["train"], raw.splits["validation"] = parts["train"], parts["test"]
        log.info(
            "held out %d of %d training rows as validation (data.validation_fraction=%s)",
            len(parts["test"]),
            len(parts["train"]) + len(parts["test"]),
            data.validation_fraction,
        )
    if data.max_train_samples and not data.streaming:
        train = raw.splits["train"]
        raw.splits["train"] = train.select(range(min(data.max_train_samples, len(train))))
    if data.max_eval_samples:
        for split in ("validation", "test"):
            if split in raw.splits:
                ds = raw.splits[split]
                raw.splits[split] = ds.select(range(min(data.max_eval_samples, len(ds))))
    return raw


def load_hub(data) -> dict:
    import datasets

    try:
        loaded = datasets.load_dataset(data.dataset, data.dataset_config, revision=data.revision)
    except Exception as exc:  # offline, unknown name, gated, ...
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        hint = (
            " (HF_HUB_OFFLINE is set: only cached datasets load)" if os.environ.get("HF_HUB_OFFLINE") else ""
        )
        raise DataError(
            f"cannot load Hub dataset {data.dataset!r}: {detail}{hint}", file=f"hub:{data.dataset}"
        ) from None
    splits = {}
    for split in SPLITS:
        name = data.splits.get(split, split)
        if name in loaded:
            ds = loaded[name]
            splits[split] = ds.add_column(ROW, list(range(len(ds))))
        elif split in data.splits:
            raise DataError(
                f"split {name!r} not found (available: {', '.join(loaded)})", file=f"hub:{data.dataset}"
            )
    if "train" not in splits:
        raise DataError(
            f"no train split (available: {', '.join(loaded)}); map one with data.splits",
            file=f"hub:{data.dataset}",
        )
    return splits


def require_columns(raw: RawData, split: str, columns: list[str], keys: list[str]) -> None:
    """DataError unless the split has every column; `keys` name the recipe keys to fix it."""
    ds = raw.splits[split]
    if ds.column_names is None:  # a stream whose columns show only when read: checked as it is read
        return
    present = [c for c in ds.column_names if c not in (ROW, FILE)]
    for column, key in zip(columns, keys, strict=True):
        if column not in ds.column_names:
            from hfpipe.errors import did_you_mean

            raise DataError(
                f"column {column!r} not found{did_you_mean(column, present)} "
                f"(columns: {', '.join(present)}; set {key})",
                **raw.where(split),
            )

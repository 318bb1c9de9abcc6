"""Sequence classification: text [, text_pair] -> a class (single-label) or a score (regression)."""

from __future__ import annotations

import logging
import math

from hfpipe.data import FILE, ROW
from hfpipe.errors import DataError
from hfpipe.tasks import Task, percentiles, register, split_counts

log = logging.getLogger("hfpipe")


# ---------------------------------------------------------------------------------------------------
# Labels: decided once from the training split, saved in the model config (id2label / label2id)


def _label_kind(raw, recipe, split: str = "train") -> str:
    """'regression', 'class-names' (ClassLabel or strings) or 'ids' (ints) for the labels of `split`."""
    import datasets

    column = recipe.data.columns.label
    feature = raw.splits[split].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return "class-names"
    dtype = getattr(feature, "dtype", "")
    if recipe.data.label_type == "regression":
        return "regression"
    if dtype.startswith("float"):
        if recipe.data.label_type == "classes":
            return "ids"
        return "regression"
    if dtype.startswith(("int", "uint")):
        return "ids"
    if dtype in ("string", "large_string"):
        return "class-names"
    if dtype == "bool":
        return "ids"
    # A column pandas could not type (e.g. ints and words mixed in a csv) lands here as strings;
    # anything else is a mixed or nested column.
    raise DataError(
        f"column {column!r} mixes value types ({dtype or type(feature).__name__}); labels must be all class "
        "names, all int ids or all floats",
        **raw.where(split),
    )


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _natural(name: str):
    """Sort key: numbers by value ("2" before "10"), then words alphabetically."""
    stripped = name.strip()
    number = stripped.lstrip("-")
    return (0, int(stripped), "") if number.isdigit() else (1, 0, name)


def configure(raw, recipe) -> dict:
    """Config kwargs for the head: num_labels, id2label, label2id, problem_type."""
    from hfpipe.data import require_columns

    cols = recipe.data.columns
    needed = [cols.text] + ([cols.text_pair] if cols.text_pair else []) + [cols.label]
    keys = (
        ["data.columns.text"]
        + (["data.columns.text_pair"] if cols.text_pair else [])
        + ["data.columns.label"]
    )
    require_columns(raw, "train", needed, keys)
    if "validation" in raw.splits:
        require_columns(raw, "validation", needed, keys)
    if "test" in raw.splits:  # a test split may come without labels: then it is predicted, not scored
        require_columns(raw, "test", needed[:-1], keys[:-1])

    kind = _label_kind(raw, recipe)
    if kind == "regression":
        return {
            "num_labels": 1,
            "problem_type": "regression",
            "id2label": {0: "score"},
            "label2id": {"score": 0},
        }
    train = raw.splits["train"]
    feature = train.features[cols.label]
    if recipe.data.labels is not None:
        names = list(recipe.data.labels)
    elif hasattr(feature, "names"):
        names = list(feature.names)
    else:
        values = [v for v in train.unique(cols.label) if not _is_blank(v)]
        if kind == "ids" and values:
            ints = sorted({int(v) for v in values})
            # Ids 0..N-1 name themselves; any other ints (1-5 stars, -1/1) are class names.
            names = [str(i) for i in range(ints[-1] + 1)] if ints == list(range(len(ints))) else None
            names = names or [str(i) for i in ints]
        else:
            names = sorted({str(v) for v in values}, key=_natural)
    if len(names) < 2:
        raise DataError(
            f"column {cols.label!r} has {len(names)} distinct label(s) {names}; "
            "classification needs at least 2",
            **raw.where("train"),
        )
    log.info("%d labels: %s", len(names), ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""))
    return {
        "num_labels": len(names),
        "problem_type": "single_label_classification",
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def training_text(raw, recipe):
    cols = recipe.data.columns
    spec = recipe.tokenizer.train
    train = raw.splits["train"]
    if spec is not None and spec.max_examples:
        train = train.select(range(min(spec.max_examples, len(train))))
    for batch in train.iter(batch_size=1000):
        yield from (t for t in batch[cols.text] if isinstance(t, str))
        if cols.text_pair:
            yield from (t for t in batch[cols.text_pair] if isinstance(t, str))


# ---------------------------------------------------------------------------------------------------
# Preprocessing


def _label_ids(values, config, by_index: bool, rows_where):
    """Labels of a batch as ids (floats for regression); rows_where(i) locates an error.

    Strings are class names. Ints are ids when the classes are 0..N-1 or when data.labels names them
    (`by_index`); otherwise they are class names too ("5" of a 1-5 star scale).
    """
    if config.problem_type == "regression":
        out = []
        for i, v in enumerate(values):
            if _is_blank(v):
                raise DataError("empty label", **rows_where(i))
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise DataError(
                    f"label {v!r} is not a number (this is a regression task)", **rows_where(i)
                ) from None
            if not math.isfinite(f):
                raise DataError(f"label {v!r} is not a finite number", **rows_where(i))
            out.append(f)
        return out
    label2id, n = config.label2id, config.num_labels
    ids_name_themselves = by_index or list(label2id) == [str(i) for i in range(n)]
    out = []
    for i, v in enumerate(values):
        if _is_blank(v):
            raise DataError("empty label", **rows_where(i))
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, str) and v in label2id:
            out.append(label2id[v])
            continue
        if isinstance(v, str) and by_index and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, int):
            if ids_name_themselves:
                if 0 <= v < n:
                    out.append(v)
                    continue
                raise DataError(f"label id {v} is out of range 0..{n - 1}", **rows_where(i))
            if str(v) in label2id:
                out.append(label2id[str(v)])
                continue
        shown = ", ".join(list(label2id)[:10]) + (" ..." if n > 10 else "")
        raise DataError(f"label {v!r} is not one of the labels [{shown}]", **rows_where(i))
    return out


def _unlabelled(ds, column: str) -> bool:
    """A test split whose labels are all missing (-1 as in GLUE, null, or empty) is to be predicted."""
    return all(
        v is None or v == -1 or (isinstance(v, str) and v.strip() in ("", "-1")) for v in ds.unique(column)
    )


def prepare(raw, split: str, tokenizer, config, recipe):
    """Tokenize (truncating at data.max_length, counting what was cut) and map labels to ids."""
    cols = recipe.data.columns
    ds = raw.splits[split]
    max_length = recipe.data.max_length
    has_labels = cols.label in ds.column_names and not (split == "test" and _unlabelled(ds, cols.label))
    # Ints index the class names when the recipe lists them, or when the column is a Hub ClassLabel.
    by_index = recipe.data.labels is not None or hasattr(ds.features.get(cols.label), "names")
    truncated = 0

    def where(batch, i):
        example = {k: batch[k][i] for k in (ROW, FILE) if k in batch}
        return raw.where(split, example)

    def check_texts(batch, column):
        for i, text in enumerate(batch[column]):
            if not isinstance(text, str):
                raise DataError(f"column {column!r}: expected text, got {text!r}", **where(batch, i))
            if not text.strip():
                raise DataError(f"column {column!r}: empty text", **where(batch, i))

    def tokenize(batch):
        nonlocal truncated
        check_texts(batch, cols.text)
        args = [batch[cols.text]]
        if cols.text_pair:
            check_texts(batch, cols.text_pair)
            args.append(batch[cols.text_pair])
        # Tokenize in full first to count what truncation cuts, then redo only the long rows.
        enc = tokenizer(*args, truncation=False, verbose=False)
        long_rows = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_length]
        if long_rows:
            truncated += len(long_rows)
            cut = tokenizer(
                *[[a[i] for i in long_rows] for a in args], truncation=True, max_length=max_length
            )
            for key in enc:
                for j, i in enumerate(long_rows):
                    enc[key][i] = cut[key][j]
        out = dict(enc)
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        if has_labels:
            out["labels"] = _label_ids(batch[cols.label], config, by_index, lambda i: where(batch, i))
        return out

    # keep_in_memory: the tokenized split is rebuilt each run (cheap here); the pretraining issue adds
    # a content-keyed cache for corpora where tokenization is the expensive part.
    out = ds.map(
        tokenize,
        batched=True,
        batch_size=1000,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        desc=None,
    )
    if truncated:
        log.info(
            "%s: truncated %d of %d examples to data.max_length=%d tokens",
            split,
            truncated,
            len(ds),
            max_length,
        )
    return out


def collator(tokenizer, recipe, train: bool = True):
    from transformers import DataCollatorWithPadding

    # Pad each batch to its longest example. Multiples of 8 only help tensor cores (half precision).
    multiple = 8 if recipe.train.precision != "fp32" else None
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


# ---------------------------------------------------------------------------------------------------
# Evaluation and prediction


def evaluate(model, dataloader, accelerator, recipe, tokenizer=None) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from hfpipe.metrics import classification_metrics, regression_metrics

    config = accelerator.unwrap_model(model).config
    regression = config.problem_type == "regression"
    preds, refs, losses = [], [], []
    with torch.no_grad():
        for batch in dataloader:
            logits = model(**batch).logits.float()
            labels = batch["labels"]
            if regression:
                p = logits.squeeze(-1)
                loss = (p - labels.float()) ** 2  # the model's MSE, per example
            else:
                p = logits.argmax(-1)
                loss = F.cross_entropy(logits, labels, reduction="none")
            # Per example, so gather_for_metrics can drop the samples repeated to even out processes.
            p, r, loss = accelerator.gather_for_metrics((p, labels, loss))
            preds.append(p.cpu())
            refs.append(r.cpu())
            losses.append(loss.cpu())
    if not preds:
        return {}
    preds_all, refs_all = torch.cat(preds).float().numpy(), torch.cat(refs).float().numpy()
    metrics = {"loss": torch.cat(losses).mean().item()}
    if regression:
        metrics.update(regression_metrics(preds_all, refs_all))
    else:
        metrics.update(classification_metrics(preds_all.astype(int), refs_all.astype(int), config.num_labels))
    return metrics


def primary_metric(config) -> str:
    return "pearson" if getattr(config, "problem_type", None) == "regression" else "accuracy"


def metric_names(config) -> list[str]:
    if getattr(config, "problem_type", None) == "regression":
        return ["loss", "mse", "pearson", "spearman"]
    return ["loss", "accuracy", "f1" if config.num_labels == 2 else "f1_macro", "mcc"]


def predict(model, tokenizer, rows: list[dict], recipe, batch_size: int = 64) -> list[dict]:
    """[{label, score}] per row (score = softmax probability); regression: [{score}]."""
    import torch

    cols = recipe.data.columns
    texts = [r[cols.text] for r in rows]
    pairs = [r[cols.text_pair] for r in rows] if cols.text_pair else None
    order = sorted(range(len(rows)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
    results: list[dict | None] = [None] * len(rows)
    regression = model.config.problem_type == "regression"
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            args = [[texts[i] for i in idx]] + ([[pairs[i] for i in idx]] if pairs else [])
            enc = tokenizer(
                *args, truncation=True, max_length=recipe.data.max_length, padding=True, return_tensors="pt"
            ).to(device)
            logits = model(**enc).logits.float()
            if regression:
                for i, value in zip(idx, logits.squeeze(-1).tolist(), strict=True):
                    results[i] = {"score": value}
                continue
            probs = logits.softmax(-1)
            scores, ids = probs.max(-1)
            for i, label_id, score in zip(idx, ids.tolist(), scores.tolist(), strict=True):
                results[i] = {"label": model.config.id2label[label_id], "score": score}
    return results  # type: ignore[return-value]


def split_stats(raw, split: str, tokenizer, recipe, prepared, config) -> dict:
    """Token lengths of the texts (pairs) before truncation, and how many data.max_length cuts."""
    cols = recipe.data.columns
    ds = raw.splits[split]
    out = split_counts(raw, split, prepared)
    args = [list(ds[cols.text])] + ([list(ds[cols.text_pair])] if cols.text_pair else [])
    lengths = [len(x) for x in tokenizer(*args, truncation=False, verbose=False)["input_ids"]]
    out["tokens"] = percentiles(lengths)
    out["truncated"] = sum(n > recipe.data.max_length for n in lengths)
    return out


def preparation_settings(recipe, config) -> dict:
    """Labels become ids through the model's label set."""
    return {"config": {k: getattr(config, k, None) for k in ("problem_type", "label2id", "num_labels")}}


CLASSIFICATION = register(
    Task(
        name="classification",
        description="Sequence classification of a text or a text pair; regression when labels are floats.",
        auto_model="AutoModelForSequenceClassification",
        peft_task_type="SEQ_CLS",
        pipeline_tag="text-classification",
        configure=configure,
        training_text=training_text,
        prepare=prepare,
        collator=collator,
        evaluate=evaluate,
        primary_metric=primary_metric,
        metric_names=metric_names,
        predict=predict,
        preparation_settings=preparation_settings,
        split_stats=split_stats,
    )
)

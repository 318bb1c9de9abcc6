"""Extractive question answering (SQuAD v1.1 / v2.0): a span head picks the answer out of the context.

Data: rows with question, context and answers {text: [...], answer_start: [...]} (the Hugging Face
SQuAD layout), or the official SQuAD JSON file (data / paragraphs / qas), which `hfpipe.data` flattens
into such rows. With qa.version_2_with_negative, questions without answers (or `is_impossible`) are
allowed and the model may answer nothing.

Preprocessing: question first, context second, only the context truncated; a long context becomes
overlapping windows (qa.doc_stride tokens shared); the offset mapping ties every context token to its
characters. A window that does not hold the whole answer points at [CLS] (start = end = 0).

Post-processing, per question: the n-best start and end logits of each of its windows, spans inside the
context only, end >= start, at most qa.max_answer_length tokens; the best span over all windows, mapped
back to characters of the original context. v2: answer nothing when the [CLS] ("null") score, the lowest
over the question's windows, exceeds the best span's by more than qa.null_score_diff_threshold.
Metrics: the official SQuAD exact match and F1 (hfpipe.metrics.squad_metrics).
"""

from __future__ import annotations

import logging
import math

from hfpipe.data import FILE, ROW
from hfpipe.errors import DataError, RecipeError
from hfpipe.tasks import Task, pad_rows, percentiles, register, split_counts

log = logging.getLogger("hfpipe")

QUESTION, CONTEXT = "_question", "_context"  # row keys of literal inputs (hfpipe answer --question ...)


# ---------------------------------------------------------------------------------------------------
# Examples


def _columns(recipe) -> tuple[str, str, str, str]:
    c = recipe.data.columns
    return c.question, c.context, c.answers, c.id


def configure(raw, recipe) -> dict:
    question, context, answers, _ = _columns(recipe)
    for split, ds in raw.splits.items():
        names = [c for c in ds.column_names if c not in (ROW, FILE)]
        needed = [question, context] + ([answers] if split != "test" else [])
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataError(
                f"no column {missing[0]!r} (columns: {', '.join(names)}; data.columns.question / context / "
                "answers name them)",
                **raw.where(split),
            )
    return {}


def examples(raw, split: str, recipe) -> list[dict]:
    """[{id, question, context, answers: [(text, start)] or None when the split has no answers}].

    DataError (file, line, example id) for an answer that is not where answer_start says, and for a
    question without answers unless qa.version_2_with_negative.
    """
    question_col, context_col, answers_col, id_col = _columns(recipe)
    ds = raw.splits[split]
    labelled = answers_col in ds.column_names
    v2 = recipe.qa.version_2_with_negative
    out = []
    for number, row in enumerate(ds):
        qid = str(row[id_col]) if id_col in row and row[id_col] is not None else f"{split}-{number}"
        where = raw.where(split, row)
        for column in (question_col, context_col):
            if not isinstance(row[column], str) or not row[column].strip():
                raise DataError(
                    f"example {qid!r}: column {column!r}: expected text, got {row[column]!r}", **where
                )
        context = row[context_col]
        answers = None
        if labelled:
            answers = _answers(row[answers_col], qid, answers_col, where)
            if row.get("is_impossible"):
                answers = []
            for text, start in answers:
                if context[start : start + len(text)] != text:
                    raise DataError(
                        f"example {qid!r}: answer {text!r} is not at answer_start {start} of its context (there: "
                        f"{context[start : start + len(text)]!r})",
                        **where,
                    )
            if not answers and not v2:
                raise DataError(
                    f"example {qid!r} has no answer: unanswerable questions need qa.version_2_with_negative: true",
                    **where,
                )
        # Leading spaces (some SQuAD questions have many) would only take window room.
        out.append(
            {"id": qid, "question": row[question_col].lstrip(), "context": context, "answers": answers}
        )
    seen: set[str] = set()
    for e in out:
        if e["id"] in seen:
            raise DataError(
                f"example id {e['id']!r} appears twice: predictions are keyed by id", **raw.where(split)
            )
        seen.add(e["id"])
    return out


def _answers(value, qid: str, column: str, where: dict) -> list[tuple[str, int]]:
    if value is None:
        return []
    if not isinstance(value, dict) or not isinstance(value.get("text"), list | tuple):
        raise DataError(
            f"example {qid!r}: column {column!r}: expected {{text: [...], answer_start: [...]}}, got {value!r}",
            **where,
        )
    texts, starts = list(value["text"]), list(value.get("answer_start") or [])
    if len(texts) != len(starts):
        raise DataError(
            f"example {qid!r}: {len(texts)} answer texts but {len(starts)} answer_start values", **where
        )
    out = []
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise DataError(f"example {qid!r}: bad answer {text!r} at {start!r}", **where)
        out.append((text, start))
    return out


def training_text(raw, recipe):
    """Questions and each distinct context once (SQuAD repeats a paragraph for each of its questions)."""
    question_col, context_col, _, _ = _columns(recipe)
    ds = raw.splits["train"]
    seen: set[int] = set()
    for question, context in zip(ds[question_col], ds[context_col], strict=True):
        yield question
        key = hash(context)
        if key not in seen:
            seen.add(key)
            yield context


# ---------------------------------------------------------------------------------------------------
# Windows


def windows(tokenizer, items: list[dict], recipe, where=lambda index: {}):
    """Tokenized windows of (question, context) pairs with offsets; DataError for a too-long question
    (`where(index)`: file= / line= of item `index`)."""
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(
            "question-answering needs a fast tokenizer (for offset mappings)", key="tokenizer.name_or_path"
        )
    if tokenizer.padding_side != "right":
        tokenizer.padding_side = "right"  # question first, context second: windows run over the context
    limit = recipe.qa.max_question_length
    lengths = tokenizer([e["question"] for e in items], add_special_tokens=False)["input_ids"]
    for index, (item, ids) in enumerate(zip(items, lengths, strict=True)):
        if len(ids) > limit:
            raise DataError(
                f"example {item['id']!r}: the question has {len(ids)} tokens, more than qa.max_question_length "
                f"({limit}); raise it (and data.max_length) or shorten the question",
                **where(index),
            )
    return tokenizer(
        [e["question"] for e in items],
        [e["context"] for e in items],
        truncation="only_second",
        max_length=recipe.data.max_length,
        stride=recipe.qa.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _context_offsets(enc, i: int) -> tuple[list[int], list[int]]:
    """Character start / end of each token of window i that belongs to the context; -1 elsewhere."""
    sequence_ids = enc.sequence_ids(i)
    starts, ends = [], []
    for seq, (s, e) in zip(sequence_ids, enc["offset_mapping"][i], strict=True):
        starts.append(s if seq == 1 else -1)
        ends.append(e if seq == 1 else -1)
    return starts, ends


def span_positions(starts: list[int], ends: list[int], answer: tuple[str, int] | None, cls: int = 0):
    """(start token, end token) of the answer's characters in one window; (cls, cls) when the window does
    not hold the whole answer, or there is none."""
    if not answer:
        return cls, cls
    text, char_start = answer
    char_end = char_start + len(text)
    context = [t for t, s in enumerate(starts) if s >= 0]
    first, last = context[0], context[-1]
    if not (starts[first] <= char_start and ends[last] >= char_end):
        return cls, cls
    start = first
    while start <= last and (starts[start] < 0 or ends[start] <= char_start):
        start += 1
    end = last
    while end >= first and (starts[end] < 0 or starts[end] >= char_end):
        end -= 1
    if start > end:  # the answer sits inside one token's gap (whitespace): nothing to point at
        return cls, cls
    return start, end


def prepare(raw, split: str, tokenizer, config, recipe):
    import datasets

    items = examples(raw, split, recipe)
    ds = raw.splits[split]
    enc = windows(tokenizer, items, recipe, lambda index: raw.where(split, ds[index]))
    cls = tokenizer.cls_token_id
    columns: dict[str, list] = {
        "input_ids": enc["input_ids"],
        "length": [len(x) for x in enc["input_ids"]],
        "example": list(enc["overflow_to_sample_mapping"]),
        "feature": list(range(len(enc["input_ids"]))),
        "offset_start": [],
        "offset_end": [],
        "start_positions": [],
        "end_positions": [],
    }
    if "token_type_ids" in enc:
        columns["token_type_ids"] = enc["token_type_ids"]
    lost = 0
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        starts, ends = _context_offsets(enc, i)
        columns["offset_start"].append(starts)
        columns["offset_end"].append(ends)
        answers = items[example_index]["answers"]
        cls_index = enc["input_ids"][i].index(cls) if cls in enc["input_ids"][i] else 0
        s, e = span_positions(starts, ends, answers[0] if answers else None, cls_index)
        columns["start_positions"].append(s)
        columns["end_positions"].append(e)
    # Per example (looked up through "example"): what post-processing and scoring need.
    labelled = all(e["answers"] is not None for e in items)
    if labelled:
        found = {}
        for example_index, s in zip(
            enc["overflow_to_sample_mapping"], columns["start_positions"], strict=True
        ):
            found[example_index] = found.get(example_index, False) or s != 0
        lost = sum(1 for k, e in enumerate(items) if e["answers"] and not found.get(k))
        if lost:
            log.warning(
                "%s: %d answers are in no window whole (longer than a window's context part?)", split, lost
            )
    else:
        del columns["start_positions"], columns["end_positions"]
    per_feature = [items[k] for k in enc["overflow_to_sample_mapping"]]
    columns["id"] = [e["id"] for e in per_feature]
    columns["context"] = [e["context"] for e in per_feature]
    columns["gold"] = [[t for t, _ in e["answers"] or []] for e in per_feature]
    windows_per_example = len(enc["input_ids"]) / max(1, len(items))
    if windows_per_example > 1:
        log.info("%s: %d questions -> %d windows", split, len(items), len(enc["input_ids"]))
    return datasets.Dataset.from_dict(columns)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def collator(tokenizer, recipe, train: bool = True):
    import torch

    pad = tokenizer.pad_token_id

    def collate(features):
        batch = {
            "input_ids": pad_rows([f["input_ids"] for f in features], pad),
            "attention_mask": pad_rows([[1] * len(f["input_ids"]) for f in features], 0),
        }
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = pad_rows([f["token_type_ids"] for f in features], 0)
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        if not train:  # post-processing: where each window's tokens are in its context
            batch["feature"] = torch.tensor([f["feature"] for f in features])
            for key in ("example", "offset_start", "offset_end", "id", "context", "gold"):
                batch[key] = [f[key] for f in features]
        return batch

    return collate


# ---------------------------------------------------------------------------------------------------
# Post-processing and scoring


def best_answers(windows_of: dict, contexts: dict, recipe) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """({id: answer text}, {id: n-best list}) from {id: [(start logits, end logits, offset starts, offset
    ends), ...]} (one entry per window) and {id: context}."""
    import numpy as np

    spec = recipe.qa
    predictions, nbest = {}, {}
    for qid, parts in windows_of.items():
        context = contexts[qid]
        candidates, null_score = [], None
        for start_logits, end_logits, starts, ends in parts:
            start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
            score = float(start_logits[0] + end_logits[0])
            null_score = score if null_score is None else min(null_score, score)
            top_starts = np.argsort(start_logits)[::-1][: spec.n_best_size]
            top_ends = np.argsort(end_logits)[::-1][: spec.n_best_size]
            for s in top_starts:
                if s >= len(starts) or starts[s] < 0:
                    continue
                for e in top_ends:
                    if e >= len(ends) or ends[e] < 0 or e < s or e - s + 1 > spec.max_answer_length:
                        continue
                    candidates.append(
                        {
                            "text": context[starts[s] : ends[e]],
                            "start": int(starts[s]),
                            "end": int(ends[e]),
                            "score": float(start_logits[s] + end_logits[e]),
                        }
                    )
        candidates.sort(key=lambda c: -c["score"])
        kept = candidates[: spec.n_best_size]
        if spec.version_2_with_negative and null_score is not None:
            kept.append({"text": "", "start": -1, "end": -1, "score": null_score})
            kept.sort(key=lambda c: -c["score"])
            kept = kept[: spec.n_best_size + 1]
        if not kept:
            kept = [{"text": "", "start": -1, "end": -1, "score": 0.0}]
        top = max(c["score"] for c in kept)
        weights = [math.exp(c["score"] - top) for c in kept]
        for c, w in zip(kept, weights, strict=True):
            c["probability"] = w / sum(weights)
        nbest[qid] = kept
        best = next((c for c in kept if c["text"]), None)
        if spec.version_2_with_negative:
            if best is None or null_score - best["score"] > spec.null_score_diff_threshold:
                predictions[qid] = ""
            else:
                predictions[qid] = best["text"]
        else:
            predictions[qid] = best["text"] if best is not None else ""
    return predictions, nbest


def evaluate(model, dataloader, accelerator, recipe, tokenizer=None, outputs: dict | None = None) -> dict:
    """Loss (mean over windows of the start / end cross-entropy) and SQuAD exact match / F1 (0-100).

    `outputs`, when given, receives predictions.json / nbest_predictions.json contents.
    """
    import torch
    import torch.nn.functional as F

    from hfpipe.metrics import squad_metrics

    local = []
    losses, counts = [], []
    with torch.no_grad():
        for batch in dataloader:
            inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
            out = model(**inputs)
            start, end = out.start_logits.float(), out.end_logits.float()
            if "start_positions" in batch:
                loss = (
                    F.cross_entropy(start, batch["start_positions"], reduction="none")
                    + F.cross_entropy(end, batch["end_positions"], reduction="none")
                ) / 2
                # Per window, so gather_for_metrics can drop the windows repeated to even out processes.
                gathered = accelerator.gather_for_metrics(loss)
                losses.append(gathered.sum().item())
                counts.append(gathered.numel())
            width = batch["attention_mask"].sum(dim=1).tolist()
            for i, n in enumerate(width):
                local.append(
                    (
                        int(batch["feature"][i]),
                        batch["id"][i],
                        batch["context"][i],
                        batch["gold"][i],
                        start[i, :n].tolist(),
                        end[i, :n].tolist(),
                        batch["offset_start"][i],
                        batch["offset_end"][i],
                    )
                )
    if not local and not losses:
        return {}
    from accelerate.utils import gather_object

    rows = gather_object(local) if accelerator.num_processes > 1 else local
    by_feature = {r[0]: r for r in rows}  # a window repeated to even out processes counts once
    windows_of, contexts, golds = {}, {}, {}
    for _, qid, context, gold, s, e, os_, oe in sorted(by_feature.values(), key=lambda r: r[0]):
        windows_of.setdefault(qid, []).append((s, e, os_, oe))
        contexts[qid], golds[qid] = context, gold
    predictions, nbest = best_answers(windows_of, contexts, recipe)
    metrics = {}
    if counts and sum(counts):
        metrics["loss"] = sum(losses) / sum(counts)
    metrics.update(squad_metrics(predictions, golds, recipe.qa.version_2_with_negative))
    if outputs is not None:
        outputs["predictions.json"] = predictions
        outputs["nbest_predictions.json"] = nbest
    return metrics


def primary_metric(config) -> str:
    return "f1"


def metric_names(config) -> list[str]:
    return [
        "loss",
        "exact_match",
        "f1",
        "has_answer_exact_match",
        "has_answer_f1",
        "no_answer_exact_match",
    ]


def predict(model, tokenizer, rows: list[dict], recipe, batch_size: int = 32) -> list[dict]:
    """[{answer, score, start, end}] per row; rows hold question and context (columns or literal keys).
    score: the answer's probability among the n-best; start / end: its characters in the context
    (-1 for no answer, v2)."""
    import torch

    question_col, context_col, _, _ = _columns(recipe)
    items = []
    for number, row in enumerate(rows, start=1):
        question = row.get(QUESTION, row.get(question_col))
        context = row.get(CONTEXT, row.get(context_col))
        for what, value in (("question", question), ("context", context)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"row {number}: no {what} text")
        items.append({"id": str(number), "question": question.lstrip(), "context": context, "answers": None})
    enc = windows(tokenizer, items, recipe)
    sample = list(enc["overflow_to_sample_mapping"])
    offsets = [_context_offsets(enc, i) for i in range(len(sample))]
    device = next(model.parameters()).device
    order = sorted(range(len(sample)), key=lambda i: -len(enc["input_ids"][i]))
    windows_of: dict[str, list] = {}
    collate = collator(tokenizer, recipe, train=True)
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            feats = [{k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc} for i in idx]
            batch = {k: v.to(device) for k, v in collate(feats).items()}
            out = model(**batch)
            for j, i in enumerate(idx):
                n = len(enc["input_ids"][i])
                windows_of.setdefault(items[sample[i]]["id"], []).append(
                    (
                        i,
                        out.start_logits[j, :n].float().tolist(),
                        out.end_logits[j, :n].float().tolist(),
                        *offsets[i],
                    )
                )
    # windows in their order in the context, as evaluation has them
    ordered = {q: [w[1:] for w in sorted(ws)] for q, ws in windows_of.items()}
    predictions, nbest = best_answers(ordered, {e["id"]: e["context"] for e in items}, recipe)
    out_rows = []
    for e in items:
        text = predictions[e["id"]]
        chosen = next((c for c in nbest[e["id"]] if c["text"] == text), nbest[e["id"]][0])
        out_rows.append(
            {"answer": text, "score": chosen["probability"], "start": chosen["start"], "end": chosen["end"]}
        )
    return out_rows


def split_stats(raw, split: str, tokenizer, recipe, prepared, config) -> dict:
    """Token lengths of question + context before windowing, how many need more than one window, the
    windows, and the answers that no window holds whole (they are never trained on)."""
    cols = recipe.data.columns
    ds = raw.splits[split]
    questions, contexts = list(ds[cols.question]), list(ds[cols.context])
    lengths = [len(x) for x in tokenizer(questions, contexts, truncation=False, verbose=False)["input_ids"]]
    out = split_counts(raw, split, prepared)
    out["tokens"] = percentiles(lengths)
    out["longer_than_a_window"] = sum(n > recipe.data.max_length for n in lengths)
    out["windows"] = len(prepared)
    out["windows_per_example"] = round(len(prepared) / max(len(ds), 1), 3)
    if "start_positions" in prepared.column_names and "example" in prepared.column_names:
        found: dict[int, bool] = {}
        for example, start in zip(list(prepared["example"]), list(prepared["start_positions"]), strict=True):
            found[example] = found.get(example, False) or start != 0
        answered = [
            i
            for i, a in enumerate(list(ds[cols.answers]))
            if a and (a.get("text") if isinstance(a, dict) else a)
        ]
        out["answers_lost"] = sum(1 for i in answered if not found.get(i))
    return out


def check_recipe(recipe) -> None:
    # [CLS] question [SEP] context [SEP]: a window must hold the longest question and more context than it
    # shares with the next window, or the windows never advance.
    if recipe.data is None:
        return
    room = recipe.data.max_length - recipe.qa.max_question_length - 3
    if room <= recipe.qa.doc_stride:
        raise ValueError(
            f"@qa.doc_stride: {recipe.qa.doc_stride} must be less than data.max_length ({recipe.data.max_length}) "
            f"- qa.max_question_length ({recipe.qa.max_question_length}) - 3 special tokens = {room}: each "
            "window must move forward through the context"
        )


QUESTION_ANSWERING = register(
    Task(
        name="question-answering",
        description="Extractive QA (SQuAD v1.1 / v2.0): a span of the context, with windows over long ones.",
        auto_model="AutoModelForQuestionAnswering",
        peft_task_type="QUESTION_ANS",
        pipeline_tag="question-answering",
        configure=configure,
        training_text=training_text,
        prepare=prepare,
        collator=collator,
        evaluate=evaluate,
        primary_metric=primary_metric,
        metric_names=metric_names,
        predict=predict,
        label_column="start_positions",
        writes_outputs=True,
        check_recipe=check_recipe,
        split_stats=split_stats,
        run_commands=("answer",),
        inputs="questions and contexts",
        unsmoothable_labels="answer spans",
        # the windows: their stride, the room the question takes, whether unanswerable questions stay
        preparation_settings=lambda recipe, config: {
            "qa": recipe.qa.model_dump(
                include={"doc_stride", "max_question_length", "version_2_with_negative"}
            )
        },
    )
)

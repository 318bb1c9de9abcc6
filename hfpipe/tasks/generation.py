"""GPT-style supervised fine-tuning: learn a completion given a prompt; evaluate by loss and by generating.

Each example is prompt tokens + completion tokens + EOS. Only the completion and its EOS are labels
(the prompt's positions are -100), so the model learns to answer, not to repeat the question. Prompt
and completion are tokenized apart, as `hfpipe generate` sees the prompt alone. GPT-2 has no pad
token: EOS pads (safe, as padded positions are never labels and are masked from attention).

Evaluation reports the loss and perplexity of the completions (exp of the mean over all completion
tokens) and generates a completion for each example (greedy or beam search, left-padded batches) to
score exact match and chrF (sacrebleu) against the reference.
"""

from __future__ import annotations

import logging

from hfpipe.data import FILE, ROW
from hfpipe.errors import DataError
from hfpipe.tasks import Task, eval_mode, percentiles, register, split_counts

log = logging.getLogger("hfpipe")

LITERAL = "_prompt"  # a row key holding the prompt text itself (hfpipe generate --prompt)


def _fields(recipe) -> tuple[list[str], list[str]]:
    """(columns the prompt needs, columns the completion needs)."""
    template = recipe.data.template
    if template is None:
        return [recipe.data.columns.prompt], [recipe.data.columns.completion]
    return template.fields(template.prompt), template.fields(template.completion)


def _render(row: dict, recipe) -> tuple[str, str | None]:
    """(prompt, completion or None when the row has no completion columns)."""
    if LITERAL in row:
        return row[LITERAL], None
    template = recipe.data.template
    prompt_fields, completion_fields = _fields(recipe)
    values = {k: ("" if v is None else v) for k, v in row.items()}
    if template is None:
        prompt = row[prompt_fields[0]]
        completion = row.get(completion_fields[0])
    else:
        prompt = template.prompt.format_map(values)
        has_completion = all(f in row and row[f] is not None for f in completion_fields)
        completion = template.completion.format_map(values) if has_completion else None
    return prompt, completion


def configure(raw, recipe) -> dict:
    from hfpipe.data import require_columns

    prompt_fields, completion_fields = _fields(recipe)
    key = "data.template" if recipe.data.template else "data.columns.prompt"
    for split in raw.splits:
        require_columns(raw, split, prompt_fields, [key] * len(prompt_fields))
        if split != "test":  # a test split without completions is generated for instead of scored
            ckey = "data.template" if recipe.data.template else "data.columns.completion"
            require_columns(raw, split, completion_fields, [ckey] * len(completion_fields))
    return {}


def _rows(raw, split: str, recipe) -> tuple[list[str], list[str | None]]:
    """Prompts and completions of a split; DataError (file, line) for a value that is not text."""
    prompt_fields, completion_fields = _fields(recipe)
    ds = raw.splits[split]
    columns = [c for c in dict.fromkeys(prompt_fields + completion_fields) if c in ds.column_names]
    prompts, completions = [], []
    for example in ds.select_columns([*columns, *(c for c in (ROW, FILE) if c in ds.column_names)]):
        for column in columns:  # a template formats any value; plain columns must hold text
            value = example[column]
            if value is None or (recipe.data.template is None and not isinstance(value, str)):
                raise DataError(
                    f"column {column!r}: expected text, got {value!r}", **raw.where(split, example)
                )
        try:
            prompt, completion = _render(example, recipe)
        except (ValueError, TypeError) as exc:  # a format spec that does not fit the value, e.g. {n:d}
            raise DataError(f"data.template: {exc}", **raw.where(split, example)) from None
        if completion is not None and not completion.strip():
            raise DataError("empty completion: nothing to learn", **raw.where(split, example))
        prompts.append(prompt)
        completions.append(completion)
    return prompts, completions


def training_text(raw, recipe):
    spec = recipe.tokenizer.train
    prompts, completions = _rows(raw, "train", recipe)
    limit = spec.max_examples if spec is not None and spec.max_examples else len(prompts)
    for prompt, completion in zip(prompts[:limit], completions[:limit], strict=True):
        yield prompt + (completion or "")


def ensure_pad(tokenizer) -> None:
    """GPT-2 tokenizers have no pad token: EOS pads (padded positions are never attended or learned)."""
    from hfpipe.tokenization import pad_with_eos

    pad_with_eos(tokenizer)
    if tokenizer.pad_token_id is None:
        raise DataError("the tokenizer has neither a pad nor an eos token; generation needs eos")


def prepare(raw, split: str, tokenizer, config, recipe):
    import datasets

    ensure_pad(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token, which ends every completion", **raw.where(split))
    limit = recipe.data.max_length
    prompts, completions = _rows(raw, split, recipe)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    if all(c is None for c in completions):  # an unlabelled split: prompts only, to be generated for
        ids = [p[-limit:] for p in prompt_ids]
        return datasets.Dataset.from_dict({"input_ids": ids, "length": [len(i) for i in ids]})
    if any(c is None for c in completions):
        raise DataError(f"{split}: some rows have a completion and some do not", **raw.where(split))
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    inputs, labels, cut_prompts, cut_completions = [], [], 0, 0
    for p, c in zip(prompt_ids, completion_ids, strict=True):
        target = [*c, eos]
        if len(target) > limit - 1:  # keep at least one prompt token; the completion's end is cut
            target, cut_completions = target[: limit - 1], cut_completions + 1
        room = limit - len(target)
        if len(p) > room:  # a long prompt loses its beginning: what precedes the answer matters most
            p, cut_prompts = p[len(p) - room :], cut_prompts + 1
        inputs.append(p + target)
        labels.append([-100] * len(p) + target)
    if cut_prompts or cut_completions:
        log.warning(
            "%s: data.max_length=%d cut the start of %d prompts and the end of %d completions",
            split,
            limit,
            cut_prompts,
            cut_completions,
        )
    log.info(
        "%s: %d examples, %d completion tokens (labels) of %d tokens",
        split,
        len(inputs),
        sum(len(x) - x.count(-100) for x in labels),
        sum(map(len, inputs)),
    )
    return datasets.Dataset.from_dict(
        {
            "input_ids": inputs,
            "labels": labels,
            "length": [len(i) for i in inputs],
            "row": list(range(len(inputs))),
        }
    )


def split_stats(raw, split: str, tokenizer, recipe, prepared, config) -> dict:
    """Token lengths of prompt + completion as the template renders them, after truncation (how many
    reach data.max_length)."""
    out = split_counts(raw, split, prepared)
    lengths = list(prepared["length"]) if "length" in prepared.column_names else []
    out["tokens"] = percentiles(lengths)
    out["at_max_length"] = sum(n >= recipe.data.max_length for n in lengths)
    return out


def collator(tokenizer, recipe, train: bool = True):
    import torch

    ensure_pad(tokenizer)
    pad = tokenizer.pad_token_id

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            mask[row, :n] = 1
            if "labels" in f:
                labels[row, :n] = torch.tensor(f["labels"])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if not train and "row" in features[0]:  # evaluation generates for the split's first rows
            batch["row"] = torch.tensor([f["row"] for f in features])
        return batch

    return collate


# ---------------------------------------------------------------------------------------------------
# Generating


def generation_kwargs(settings, tokenizer, *, sampling: bool = True) -> dict:
    """model.generate() arguments from a recipe's generation section (sampling off for evaluation)."""
    kwargs = {
        "max_new_tokens": settings.max_new_tokens,
        "num_beams": settings.num_beams,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_cache": True,
    }
    if settings.num_beams > 1:
        kwargs["length_penalty"] = settings.length_penalty
    if sampling and settings.do_sample:
        kwargs.update(
            do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k
        )
    else:
        kwargs["do_sample"] = False
    return kwargs


def generate_ids(
    model, tokenizer, prompt_ids: list[list[int]], kwargs: dict, batch_size: int
) -> list[list[int]]:
    """New tokens for each prompt (EOS and what follows removed): batched, left-padded, longest first."""
    import torch

    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    from hfpipe.adapters import reserved_positions

    room = (limit - reserved_positions(model) - kwargs["max_new_tokens"]) if limit else None
    if room is not None and room < 1:
        raise DataError(
            f"max_new_tokens={kwargs['max_new_tokens']} leaves no room in the model's {limit} positions"
        )
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[list[int]] = [[] for _ in prompt_ids]
    eos, pad = kwargs["eos_token_id"], kwargs["pad_token_id"]
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [prompt_ids[i][-room:] if room else prompt_ids[i] for i in idx]
            rows = [r if r else [eos] for r in rows]  # an empty prompt starts from EOS (GPT-2's BOS)
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, width - len(row) :] = torch.tensor(row)
                mask[r, width - len(row) :] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            for r, i in enumerate(idx):
                new = generated[r, width:].tolist()
                out[i] = new[: new.index(eos)] if eos in new else new
    return out


def evaluate(model, dataloader, accelerator, recipe, tokenizer=None) -> dict[str, float]:
    from hfpipe.tasks.causal_lm import token_loss_metrics

    metrics = token_loss_metrics(model, dataloader, accelerator, shift=True)
    budget = recipe.generation.eval_samples
    if tokenizer is None or budget == 0 or not metrics:
        return metrics
    # The split's first `budget` rows (by row order, not by length), each generated once: rows repeated
    # to even out processes come back with the same row number and are dropped.
    unwrapped = accelerator.unwrap_model(model)
    kwargs = generation_kwargs(recipe.generation, tokenizer, sampling=False)
    local = []
    for batch in dataloader:
        chosen = [i for i, row in enumerate(batch["row"].tolist()) if budget is None or row < budget]
        prompts, targets = [], []
        for i in chosen:
            ids, mask, labels = batch["input_ids"][i], batch["attention_mask"][i], batch["labels"][i]
            prompts.append(ids[mask.bool() & (labels == -100)].tolist())  # the prompt: unlabelled real tokens
            targets.append(labels[labels != -100].tolist())
        generated = generate_ids(unwrapped, tokenizer, prompts, kwargs, len(prompts)) if prompts else []
        for i, g, t in zip(chosen, generated, targets, strict=True):
            local.append(
                (
                    int(batch["row"][i]),
                    tokenizer.decode(g, skip_special_tokens=True).strip(),
                    tokenizer.decode(t, skip_special_tokens=True).strip(),
                )
            )
    hypotheses, references = unique_rows(accelerator, local)
    metrics.update(text_metrics(hypotheses, references))
    return metrics


def unique_rows(accelerator, local: list[tuple[int, str, str]]) -> tuple[list[str], list[str]]:
    """(hypotheses, references) from every process, once per row, in row order."""
    from accelerate.utils import gather_object

    rows = dict(
        (row, (h, r)) for row, h, r in (gather_object(local) if accelerator.num_processes > 1 else local)
    )
    ordered = [rows[k] for k in sorted(rows)]
    return [h for h, _ in ordered], [r for _, r in ordered]


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Exact match (after stripping surrounding spaces) and corpus chrF (sacrebleu, 0-100)."""
    from sacrebleu.metrics import CHRF

    if not hypotheses:
        return {}
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(hypotheses)
    chrf = CHRF().corpus_score(hypotheses, [references]).score
    return {"exact_match": exact, "chrf": chrf, "generated": float(len(hypotheses))}


def primary_metric(config) -> str:
    return "loss"


def metric_names(config) -> list[str]:
    return ["loss", "perplexity", "exact_match", "chrf"]


def predict(
    model, tokenizer, rows: list[dict], recipe, batch_size: int = 16, settings=None, seed=None
) -> list[dict]:
    """A generated completion per row: rows hold the prompt (LITERAL) or the columns the prompt needs."""
    import torch

    ensure_pad(tokenizer)
    prompts = []
    for number, row in enumerate(rows, start=1):
        try:
            prompts.append(_render(row, recipe)[0])
        except KeyError as exc:
            raise DataError(f"row {number}: no column {exc.args[0]!r}, which the prompt needs") from None
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = generation_kwargs(settings or recipe.generation, tokenizer)
    new = generate_ids(model, tokenizer, prompt_ids, kwargs, batch_size)
    return [{"completion": tokenizer.decode(ids, skip_special_tokens=True)} for ids in new]


GENERATION = register(
    Task(
        name="generation",
        description="GPT-style fine-tuning on prompt -> completion (loss on the completion only); "
        "scored by loss, exact match and chrF of generated completions.",
        auto_model="AutoModelForCausalLM",
        peft_task_type="CAUSAL_LM",
        loss_items="next_tokens",
        pipeline_tag="text-generation",
        configure=configure,
        training_text=training_text,
        prepare=prepare,
        collator=collator,
        evaluate=evaluate,
        primary_metric=primary_metric,
        metric_names=metric_names,
        predict=predict,
        is_causal=True,
        split_stats=split_stats,
        run_commands=("predict", "generate"),
        scored_against="completions",
        language_model=True,
    )
)

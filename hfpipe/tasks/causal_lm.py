"""Causal language modelling (GPT-style pretraining): packed blocks of text, next-token loss, perplexity."""

from __future__ import annotations

import logging
import math

from hfpipe.data import FILE, ROW
from hfpipe.errors import DataError, RecipeError
from hfpipe.tasks import Task, percentiles, register, split_counts

log = logging.getLogger("hfpipe")


def configure(raw, recipe) -> dict:
    from hfpipe.data import require_columns

    for split in raw.splits:
        require_columns(raw, split, [recipe.data.columns.text], ["data.columns.text"])
    return {}


def training_text(raw, recipe):
    spec = recipe.tokenizer.train
    train = raw.splits["train"]
    if recipe.data.streaming:  # one pass over the stream (its first max_examples documents, if set)
        from hfpipe.streaming import stream_texts

        yield from stream_texts(train, recipe.data.columns.text, spec.max_examples if spec else None)
        return
    if spec is not None and spec.max_examples:
        train = train.select(range(min(spec.max_examples, len(train))))
    for batch in train.iter(batch_size=1000):
        yield from (t for t in batch[recipe.data.columns.text] if isinstance(t, str))


def split_texts(raw, split: str, recipe) -> list[str]:
    """The split's documents: DataError (file, line) for a value that is not text; blank lines skipped."""
    column = recipe.data.columns.text
    ds = raw.splits[split]

    def check(batch):
        for i, text in enumerate(batch[column]):
            if not isinstance(text, str):
                example = {k: batch[k][i] for k in (ROW, FILE) if k in batch}
                raise DataError(
                    f"column {column!r}: expected text, got {text!r}", **raw.where(split, example)
                )
        return batch

    ds.map(check, batched=True, batch_size=1000, keep_in_memory=True, load_from_cache_file=False)
    return [t for t in ds[column] if t.strip()]


def pack(token_lists, eos_id: int | None, block_size: int) -> tuple[list[list[int]], int]:
    """Concatenate documents, each followed by EOS, and cut the stream into blocks of block_size.

    Over the whole split at once: nothing is lost at the edges of map batches; only the final remainder
    (fewer than block_size tokens) is dropped, and its size is returned.
    """
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        if eos_id is not None:  # None: the documents carry their own separators ([SEP])
            stream.append(eos_id)
    usable = len(stream) - len(stream) % block_size
    blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    return blocks, len(stream) - usable


def prepare(raw, split: str, tokenizer, config, recipe):
    import datasets

    block_size = recipe.data.max_length
    eos = tokenizer.eos_token_id
    if eos is None:
        raise RecipeError(
            "the tokenizer has no eos_token, which packing puts between documents; use one that has",
            key="tokenizer.name_or_path" if recipe.tokenizer.name_or_path else "model.name_or_path",
        )

    texts = split_texts(raw, split, recipe)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks, dropped = pack(ids, eos, block_size)
    if not blocks:
        raise DataError(
            f"{split}: {sum(map(len, ids)) + len(ids)} tokens are fewer than one block of "
            f"data.max_length={block_size}",
            **raw.where(split),
        )
    log.info(
        "%s: %d documents -> %d blocks of %d tokens (padding 0%%); dropped the last %d tokens",
        split,
        len(texts),
        len(blocks),
        block_size,
        dropped,
    )
    return datasets.Dataset.from_dict({"input_ids": blocks, "length": [block_size] * len(blocks)})


def packing_stats(raw, split: str, tokenizer, recipe, prepared, *, special_tokens: bool) -> dict:
    """Documents, their token lengths, and how they fill the prepared blocks. `special_tokens`: each
    document is [CLS] text [SEP] (masked-lm); otherwise text + EOS."""
    texts = split_texts(raw, split, recipe)
    lengths = [
        len(x) + (0 if special_tokens else 1)
        for x in tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]
    ]
    out = split_counts(raw, split, prepared)
    out["examples"] = len(texts)
    out["tokens"] = percentiles(lengths)
    total = sum(lengths)
    block_size = recipe.data.max_length
    out["packing"] = {
        "blocks": len(prepared),
        "block_size": block_size,
        "tokens": total,
        "efficiency": round(len(prepared) * block_size / total, 4) if total else 0.0,
    }
    return out


def split_stats(raw, split: str, tokenizer, recipe, prepared, config) -> dict:
    return packing_stats(raw, split, tokenizer, recipe, prepared, special_tokens=False)


def collator(tokenizer, recipe, train: bool = True):
    import torch

    def collate(features):
        # Packed blocks are all full: no padding, no attention mask; the model shifts labels itself.
        input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}

    return collate


def token_loss_metrics(
    model, dataloader, accelerator, *, shift: bool, seq2seq: bool = False
) -> dict[str, float]:
    """Mean loss over every predicted token of the split (not a mean of batch means) and its exp.

    shift=True: next-token prediction (causal); False: the labelled positions themselves (masked, or an
    encoder-decoder's target with seq2seq=True: the model builds its decoder inputs from the labels).
    """
    import torch
    import torch.nn.functional as F

    sums, counts = [], []
    with torch.no_grad():
        for batch in dataloader:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
            if seq2seq:
                inputs["labels"] = batch["labels"]
            logits = model(**inputs).logits.float()
            targets = batch["labels"]
            if shift:
                logits, targets = logits[:, :-1], targets[:, 1:]
            per_token = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none", ignore_index=-100
            ).view(targets.shape)
            # Per example, so gather_for_metrics can drop the samples repeated to even out processes.
            summed, count = accelerator.gather_for_metrics(
                (per_token.sum(dim=1), (targets != -100).sum(dim=1))
            )
            sums.append(summed.double().cpu())
            counts.append(count.cpu())
    if not sums:
        return {}
    loss = (torch.cat(sums).sum() / torch.cat(counts).sum().clamp(min=1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 700))}


def evaluate(model, dataloader, accelerator, recipe, tokenizer=None) -> dict[str, float]:
    return token_loss_metrics(model, dataloader, accelerator, shift=True)


def primary_metric(config) -> str:
    return "perplexity"


def metric_names(config) -> list[str]:
    return ["loss", "perplexity"]


def predict(model, tokenizer, rows: list[dict], recipe, batch_size: int = 16) -> list[dict]:
    """Perplexity of each text under the model (one text at a time, no padding effects)."""
    import torch

    column = recipe.data.columns.text
    device = next(model.parameters()).device
    out = []
    limit = getattr(model.config, "n_positions", None) or recipe.data.max_length
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row[column], add_special_tokens=False)["input_ids"][:limit]
            if len(ids) < 2:
                out.append({"perplexity": None, "tokens": len(ids)})
                continue
            input_ids = torch.tensor([ids], device=device)
            loss = model(input_ids=input_ids, labels=input_ids).loss.item()
            out.append({"perplexity": math.exp(min(loss, 700)), "tokens": len(ids)})
    return out


CAUSAL_LM = register(
    Task(
        name="causal-lm",
        description="GPT-style language modelling on packed blocks of text; scored by perplexity.",
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
        needs_labels=False,
        streams=True,
        is_causal=True,
        packed=True,
        split_stats=split_stats,
        run_commands=("predict", "generate"),
        language_model=True,
    )
)

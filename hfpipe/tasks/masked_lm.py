"""Masked language modelling (BERT-style pretraining): packed blocks, 80/10/10 masking, perplexity."""

from __future__ import annotations

import logging

from hfpipe.errors import DataError
from hfpipe.tasks import Task, register
from hfpipe.tasks.causal_lm import (
    configure,
    metric_names,
    pack,
    primary_metric,
    split_texts,
    token_loss_metrics,
    training_text,
)

log = logging.getLogger("hfpipe")


def prepare(raw, split: str, tokenizer, config, recipe):
    """Each document as [CLS] text [SEP], concatenated over the whole split and cut into full blocks."""
    import datasets

    if tokenizer.mask_token_id is None:
        raise DataError("the tokenizer has no mask_token, which masked-lm needs", **raw.where(split))
    texts = split_texts(raw, split, recipe)
    ids = tokenizer(texts)["input_ids"]
    blocks, dropped = pack(ids, None, recipe.data.max_length)
    if not blocks:
        raise DataError(
            f"{split}: too little text for one block of data.max_length={recipe.data.max_length}",
            **raw.where(split),
        )
    log.info(
        "%s: %d documents -> %d blocks of %d tokens; dropped the last %d tokens",
        split,
        len(texts),
        len(blocks),
        recipe.data.max_length,
        dropped,
    )
    return datasets.Dataset.from_dict({"input_ids": blocks, "length": [len(b) for b in blocks]})


def collator(tokenizer, recipe, train: bool = True):
    from transformers import DataCollatorForLanguageModeling

    # Training masks draw from the global torch RNG (seeded, and restored on resume); evaluation masks
    # come from a fixed seed, so every evaluation scores the same positions and uses no training RNG.
    return DataCollatorForLanguageModeling(
        tokenizer,
        mlm=True,
        mlm_probability=recipe.train.mlm_probability,
        seed=None if train else recipe.train.seed,
    )


def evaluate(model, dataloader, accelerator, recipe) -> dict[str, float]:
    return token_loss_metrics(model, dataloader, accelerator, shift=False)


def predict(model, tokenizer, rows: list[dict], recipe, batch_size: int = 16) -> list[dict]:
    """Fill each [MASK] of each text with the model's most likely token."""
    import torch

    column = recipe.data.columns.text
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for row in rows:
            enc = tokenizer(
                row[column], truncation=True, max_length=recipe.data.max_length, return_tensors="pt"
            )
            logits = model(**enc.to(device)).logits[0]
            positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            out.append(
                {"filled": [tokenizer.convert_ids_to_tokens(int(logits[p].argmax())) for p in positions]}
            )
    return out


MASKED_LM = register(
    Task(
        name="masked-lm",
        description="BERT-style masked language modelling on packed blocks (80/10/10); scored by perplexity.",
        auto_model="AutoModelForMaskedLM",
        peft_task_type="FEATURE_EXTRACTION",  # PEFT has no masked-LM type; LoRA wraps the encoder alike
        pipeline_tag="fill-mask",
        configure=configure,
        training_text=training_text,
        prepare=prepare,
        collator=collator,
        evaluate=evaluate,
        primary_metric=primary_metric,
        metric_names=metric_names,
        predict=predict,
        needs_labels=False,
    )
)

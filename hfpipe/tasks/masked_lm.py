"""Masked language modelling (BERT-style pretraining): packed blocks, 80/10/10 masking, perplexity."""

from __future__ import annotations

import logging

from hfpipe.errors import DataError
from hfpipe.tasks import Task, register
from hfpipe.tasks.causal_lm import (
    configure,
    metric_names,
    pack,
    packing_stats,
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
    enc = tokenizer(texts)
    ids = enc["input_ids"]
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
    columns = {"input_ids": blocks, "length": [len(b) for b in blocks]}
    if recipe.train.whole_word_mask:
        columns["word_ids"] = _block_word_ids(enc, len(texts), recipe.data.max_length)
    return datasets.Dataset.from_dict(columns)


def _block_word_ids(enc, documents: int, block_size: int) -> list[list[int]]:
    """Per block, the word of each token (0, 1, ... within the block; -1 for special tokens).

    Words are the tokenizer's pre-tokenized words (BERT: split on spaces and punctuation), so the
    pieces "un", "##bel", "##iev", "##able" share one id and are masked together.
    """
    stream: list[int] = []
    offset = 0
    for i in range(documents):
        words = enc.word_ids(i)
        stream.extend(-1 if w is None else w + offset for w in words)
        offset += max((w for w in words if w is not None), default=-1) + 1
    blocks, _ = pack([stream], None, block_size)
    out = []
    for block in blocks:
        renumber: dict[int, int] = {}
        out.append([-1 if w < 0 else renumber.setdefault(w, len(renumber)) for w in block])
    return out


class Masking:
    """BERT masking of packed blocks: choose ~p of the tokens (or of the words), then 80/10/10.

    Chosen positions become labels; of those, 80% are replaced by [MASK], 10% by a random token and
    10% kept. Special tokens are never chosen. With word_ids in the features, whole words are chosen
    (each word with probability p), and every piece of a chosen word is predicted.

    Training draws from the global torch RNG (seeded by the loop, and restored on resume). Evaluation
    (seed given) draws each block's masks from a generator seeded by the seed and the block's content,
    so every evaluation, any batch order and any number of processes score the same positions.
    """

    def __init__(self, tokenizer, probability: float, seed: int | None = None):
        self.probability = probability
        self.seed = seed
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = sorted(set(tokenizer.all_special_ids))

    def _uniform(self, ids):
        """Three tensors of uniforms shaped like ids: choice, replacement kind, random token."""
        import zlib

        import torch

        if self.seed is None:
            return torch.rand((3, *ids.shape))
        rows = []
        for row in ids:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(row.numpy().tobytes()))
            rows.append(torch.rand((3, ids.shape[1]), generator=g))
        return torch.stack(rows, dim=1)

    def __call__(self, features):
        import torch

        ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        choose, kind, token = self._uniform(ids)
        special = torch.isin(ids, torch.tensor(self.special_ids, dtype=torch.long))
        if "word_ids" in features[0]:
            words = torch.tensor([f["word_ids"] for f in features], dtype=torch.long)
            # choose[:, w] decides word w of the row (word ids are < the block length)
            chosen = torch.gather(choose < self.probability, 1, words.clamp(min=0)) & (words >= 0) & ~special
        else:
            chosen = (choose < self.probability) & ~special
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = ids.clone()
        inputs[chosen & (kind < 0.8)] = self.mask_id
        random_positions = chosen & (kind >= 0.8) & (kind < 0.9)
        random_tokens = (token * self.vocab_size).long().clamp(max=self.vocab_size - 1)
        inputs[random_positions] = random_tokens[random_positions]
        return {"input_ids": inputs, "labels": labels}


def split_stats(raw, split: str, tokenizer, recipe, prepared, config) -> dict:
    return packing_stats(raw, split, tokenizer, recipe, prepared, special_tokens=True)


def collator(tokenizer, recipe, train: bool = True):
    return Masking(tokenizer, recipe.train.mlm_probability, seed=None if train else recipe.train.seed)


def evaluate(model, dataloader, accelerator, recipe, tokenizer=None) -> dict[str, float]:
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
        loss_items="tokens",
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
        packed=True,
        split_stats=split_stats,
        language_model=True,
        # whole-word masking keeps each token's word id in the prepared blocks
        preparation_settings=lambda recipe, config: {
            "train": {"whole_word_mask": recipe.train.whole_word_mask}
        },
    )
)

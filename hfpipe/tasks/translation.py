"""Translation with encoder-decoders (T5, BART, Marian): source -> target, scored by BLEU and chrF.

Pairs come from a `translation` column ({"en": ..., "de": ...}, the WMT layout), from two columns named
by the language codes, or from aligned PREFIX.en / PREFIX.de files (data.format: parallel). The source
gets data.source_prefix (T5's "translate English to German: "); targets become labels (padding -100);
the model builds its decoder inputs from them with its own decoder_start_token_id.

Evaluation: the mean token loss over all target tokens, then beam search on every example (batches
come length-sorted) and corpus BLEU and chrF from sacrebleu, the reference implementation, whose
signatures go to metrics.json.
"""

from __future__ import annotations

import logging

from hfpipe.data import FILE, PARALLEL_TARGET, ROW
from hfpipe.errors import DataError, RecipeError
from hfpipe.tasks import Task, pad_rows, percentiles, register, split_counts

log = logging.getLogger("hfpipe")

LITERAL = "_source"  # a row key holding the source text itself (hfpipe translate --text)


def _langs(recipe) -> tuple[str, str]:
    data = recipe.data
    if not (data.source_lang and data.target_lang):
        raise RecipeError("translation needs data.source_lang and data.target_lang", key="data.source_lang")
    return data.source_lang, data.target_lang


def configure(raw, recipe) -> dict:
    source, target = _langs(recipe)
    for split, ds in raw.splits.items():
        names = [c for c in ds.column_names if c not in (ROW, FILE)]
        if "translation" in names:
            continue
        needed = [source] + ([target] if split != "test" else [])
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataError(
                f"no column {missing[0]!r} and no 'translation' column (columns: {', '.join(names)}; the "
                "language codes data.source_lang / data.target_lang name the columns)",
                **raw.where(split),
            )
    prefix = recipe.data.source_prefix
    # pipeline("translation_xx_to_yy", model=RUN_DIR) then adds the prefix itself, as for T5 checkpoints.
    return {"task_specific_params": {f"translation_{source}_to_{target}": {"prefix": prefix or ""}}}


def _pairs(raw, split: str, recipe) -> tuple[list[str], list[str | None]]:
    """Sources and targets (None when the split has no targets); DataError (file, line) for bad rows."""
    source, target = _langs(recipe)
    ds = raw.splits[split]
    nested = "translation" in ds.column_names
    sources, targets = [], []
    for example in ds:
        pair = example["translation"] if nested else example
        if not isinstance(pair, dict):
            raise DataError(
                f"column 'translation': expected an object, got {pair!r}", **raw.where(split, example)
            )
        for lang in (source, target):
            value = pair.get(lang)
            if lang == target and value is None and not nested and target not in ds.column_names:
                continue  # an unlabelled test split
            if not isinstance(value, str) or not value.strip():
                if recipe.data.format == "parallel":  # point at the line of the file that holds it
                    side = PARALLEL_TARGET if lang == target else 0
                    where = raw.where(split, {**example, FILE: example[FILE] + side})
                    raise DataError(
                        f"empty {lang!r} line (its pair: {pair[target if side == 0 else source]!r})", **where
                    )
                raise DataError(
                    f"{'translation.' if nested else 'column '}{lang!r}: expected text, got {value!r}",
                    **raw.where(split, example),
                )
        sources.append(pair[source])
        targets.append(pair.get(target))
    return sources, targets


def training_text(raw, recipe):
    """Both languages: one tokenizer (and one embedding matrix) serves source and target."""
    spec = recipe.tokenizer.train
    sources, targets = _pairs(raw, "train", recipe)
    limit = spec.max_examples if spec is not None and spec.max_examples else len(sources)
    for s, t in zip(sources[:limit], targets[:limit], strict=True):
        yield s
        yield t


def check_model(recipe, config) -> None:
    if not recipe.data.source_prefix and recipe.model.name_or_path and config.model_type == "t5":
        log.warning(
            "a pretrained T5 model without data.source_prefix: T5 expects one, "
            'e.g. "translate English to German: "'
        )


def set_lang_codes(tokenizer, recipe) -> None:
    """mBART-style tokenizers: src_lang / tgt_lang from the recipe's codes ("en" matches "en_XX")."""
    codes = getattr(tokenizer, "lang_code_to_id", None)
    if not codes:
        return
    for attribute, lang in zip(("src_lang", "tgt_lang"), _langs(recipe), strict=True):
        matches = [c for c in codes if c == lang] or [c for c in codes if c.split("_")[0] == lang]
        if len(matches) != 1:
            raise RecipeError(
                f"the tokenizer's language codes have {len(matches)} matches for {lang!r}; use one of its codes "
                f"({', '.join(sorted(codes)[:8])}, ...)",
                key="data.source_lang" if attribute == "src_lang" else "data.target_lang",
            )
        setattr(tokenizer, attribute, matches[0])


def prepare(raw, split: str, tokenizer, config, recipe):
    import datasets

    set_lang_codes(tokenizer, recipe)
    sources, targets = _pairs(raw, split, recipe)
    source_limit = recipe.data.max_length
    target_limit = recipe.data.max_target_length or recipe.data.max_length
    prefix = recipe.data.source_prefix or ""
    enc = tokenizer([prefix + s for s in sources], truncation=True, max_length=source_limit)
    columns = {
        "input_ids": enc["input_ids"],
        "length": [len(i) for i in enc["input_ids"]],
        "row": list(range(len(sources))),
    }
    cut = sum(len(i) == source_limit for i in enc["input_ids"])
    if all(t is not None for t in targets):
        labels = tokenizer(text_target=targets, truncation=True, max_length=target_limit)["input_ids"]
        columns["labels"] = labels
        columns["reference"] = targets  # scored as written, not as the tokenizer gives them back
        cut_targets = sum(len(i) == target_limit for i in labels)
        if cut_targets:
            log.warning(
                "%s: %d targets reach data.max_target_length=%d (cut)", split, cut_targets, target_limit
            )
    if cut:
        log.warning("%s: %d sources reach data.max_length=%d (cut)", split, cut, source_limit)
    return datasets.Dataset.from_dict(columns)


def split_stats(raw, split: str, tokenizer, recipe, prepared, config) -> dict:
    """Token lengths of the prefixed sources (and of the targets, when the split has them) before
    truncation, and how many data.max_length (data.max_target_length) cuts."""
    limit = recipe.data.max_length
    sources, targets = _pairs(raw, split, recipe)
    prefix = recipe.data.source_prefix or ""
    source_lengths = [len(x) for x in tokenizer([prefix + s for s in sources])["input_ids"]]
    out = split_counts(raw, split, prepared)
    out["tokens"] = percentiles(source_lengths)
    out["truncated"] = sum(n > limit for n in source_lengths)
    if all(t is not None for t in targets):
        target_limit = recipe.data.max_target_length or limit
        target_lengths = [len(x) for x in tokenizer(text_target=targets)["input_ids"]]
        out["target_tokens"] = percentiles(target_lengths)
        out["targets_truncated"] = sum(n > target_limit for n in target_lengths)
    return out


def collator(tokenizer, recipe, train: bool = True):
    import torch

    pad = tokenizer.pad_token_id

    def collate(features):
        batch = {
            "input_ids": pad_rows([f["input_ids"] for f in features], pad),
            "attention_mask": pad_rows([[1] * len(f["input_ids"]) for f in features], 0),
        }
        if "labels" in features[0]:
            batch["labels"] = pad_rows([f["labels"] for f in features], -100)
        if not train and "row" in features[0]:  # evaluation translates the split's first rows
            batch["row"] = torch.tensor([f["row"] for f in features])
        if not train and "reference" in features[0]:
            batch["reference"] = [f["reference"] for f in features]
        return batch

    return collate


# ---------------------------------------------------------------------------------------------------
# Generating and scoring


def generation_kwargs(settings, tokenizer) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams, "do_sample": False}
    if settings.num_beams > 1:
        kwargs["length_penalty"] = settings.length_penalty
    lang_codes = getattr(tokenizer, "lang_code_to_id", None)  # mBART-style: force the target language
    if lang_codes and getattr(tokenizer, "tgt_lang", None) in lang_codes:
        kwargs["forced_bos_token_id"] = lang_codes[tokenizer.tgt_lang]
    return kwargs


def translate_ids(model, input_ids, attention_mask, kwargs) -> list[list[int]]:
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out.tolist()


def evaluate(model, dataloader, accelerator, recipe, tokenizer=None) -> dict[str, float]:
    import torch

    from hfpipe.tasks.causal_lm import token_loss_metrics

    metrics = token_loss_metrics(model, dataloader, accelerator, shift=False, seq2seq=True)
    if not metrics:
        return metrics
    budget = recipe.generation.eval_samples
    if tokenizer is not None and budget != 0:
        from hfpipe.tasks.generation import unique_rows

        # The split's first `budget` rows (row order), each once whatever the number of processes.
        unwrapped = accelerator.unwrap_model(model)
        kwargs = generation_kwargs(recipe.generation, tokenizer)
        local = []
        with torch.no_grad():
            for batch in dataloader:
                chosen = [i for i, row in enumerate(batch["row"].tolist()) if budget is None or row < budget]
                if not chosen:
                    continue
                generated = translate_ids(
                    unwrapped, batch["input_ids"][chosen], batch["attention_mask"][chosen], kwargs
                )
                for i, g in zip(chosen, generated, strict=True):
                    if "reference" in batch:
                        reference = batch["reference"][i]
                    else:  # a dataset prepared without the raw targets
                        ids = batch["labels"][i]
                        reference = tokenizer.decode(ids[ids != -100].tolist(), skip_special_tokens=True)
                    local.append(
                        (
                            int(batch["row"][i]),
                            tokenizer.decode(g, skip_special_tokens=True).strip(),
                            reference,
                        )
                    )
        hypotheses, references = unique_rows(accelerator, local)
        metrics.update(corpus_scores(hypotheses, references, recipe.data.target_lang))
    return metrics


def _scorers(target_lang: str | None = None):
    """sacrebleu's BLEU with the tokenization it chooses for the target language (13a; zh for Chinese,
    MeCab for Japanese / Korean) and chrF."""
    from sacrebleu.metrics import BLEU, CHRF

    try:
        bleu = BLEU(trg_lang=target_lang or "")
    except RuntimeError:  # ja / ko need MeCab: sacrebleu[ja] / sacrebleu[ko]
        log.warning(
            "BLEU for %r needs `pip install sacrebleu[%s]`; scoring with character tokenization instead "
            "(tok:char in the signature)",
            target_lang,
            target_lang,
        )
        bleu = BLEU(tokenize="char")
    return bleu, CHRF()


def corpus_scores(
    hypotheses: list[str], references: list[str], target_lang: str | None = None
) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults: 13a tokenization, exp smoothing; chrF n=6, beta=2)."""
    if not hypotheses:
        return {}
    bleu, chrf = _scorers(target_lang)
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "generated": float(len(hypotheses)),
    }


def metric_signatures(recipe=None) -> dict[str, str]:
    bleu, chrf = _scorers(recipe.data.target_lang if recipe is not None else None)
    for metric in (bleu, chrf):  # sacrebleu fills in its signature (e.g. nrefs) once it has scored
        metric.corpus_score(["a"], [["a"]])
    return {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}


def primary_metric(config) -> str:
    return "bleu"


def metric_names(config) -> list[str]:
    return ["loss", "perplexity", "bleu", "chrf"]


def predict(model, tokenizer, rows: list[dict], recipe, batch_size: int = 16, settings=None) -> list[dict]:
    """A translation per row: rows hold the source (LITERAL) or a column named data.source_lang."""
    import torch

    source, _ = _langs(recipe)
    texts = []
    for number, row in enumerate(rows, start=1):
        text = row.get(LITERAL, row.get(source, row.get(recipe.data.columns.text)))  # text: hfpipe predict
        if text is None and isinstance(row.get("translation"), dict):
            text = row["translation"].get(source)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"row {number}: no {source!r} text to translate")
        texts.append(text)
    prefix = recipe.data.source_prefix or ""
    set_lang_codes(tokenizer, recipe)
    kwargs = generation_kwargs(settings or recipe.generation, tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[dict] = [{} for _ in texts]
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [prefix + texts[i] for i in idx],
                truncation=True,
                max_length=recipe.data.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            for i, ids in zip(
                idx, translate_ids(model, enc["input_ids"], enc["attention_mask"], kwargs), strict=True
            ):
                out[i] = {"translation": tokenizer.decode(ids, skip_special_tokens=True).strip()}
    return out


TRANSLATION = register(
    Task(
        name="translation",
        description="Encoder-decoder translation (T5, BART, Marian); scored by sacrebleu BLEU and chrF.",
        auto_model="AutoModelForSeq2SeqLM",
        peft_task_type="SEQ_2_SEQ_LM",
        loss_items="tokens",
        pipeline_tag="translation",
        configure=configure,
        training_text=training_text,
        prepare=prepare,
        collator=collator,
        evaluate=evaluate,
        primary_metric=primary_metric,
        metric_names=metric_names,
        predict=predict,
        metric_signatures=metric_signatures,
        check_model=check_model,
        split_stats=split_stats,
        run_commands=("predict", "translate"),
        language_model=True,
    )
)

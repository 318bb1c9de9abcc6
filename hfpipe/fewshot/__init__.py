"""Few-shot evaluation (`hfpipe fewshot`): k-shot prompts, log-likelihood scoring and generation.

For each task, each k and each seed: build every example's prompt (k shots drawn from the fewshot split,
never the example itself), turn options into (context, continuation) requests, score them all in
length-sorted batches, and aggregate. Results go to OUTPUT_DIR/results.json with the hash of the
resolved prompts, so two runs can be compared prompt for prompt.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import statistics
import string
import time
from pathlib import Path

from hfpipe import runlock
from hfpipe.errors import DataError, RecipeError

log = logging.getLogger("hfpipe")

MASK = "mask"  # the {mask} field of a cloze prompt


def render(template: str, row: dict, where: str, extra: dict | None = None) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    values = {**row, **(extra or {})}
    missing = sorted(f for f in fields if f not in values)
    if missing:
        raise DataError(
            f"the template names column(s) {', '.join(missing)} that the data lacks "
            f"(columns: {', '.join(sorted(k for k in row if not k.startswith('__')))})",
            file=where,
        )
    return template.format(**{k: values[k] for k in fields})


def load_splits(data, where: str) -> dict[str, list[dict]]:
    """{split: rows} of a few-shot task's data (files, Hub, built-in), without the training rules."""
    from hfpipe.data import FILE, ROW, load_files

    if data.builtin is not None:
        from hfpipe.builtin_data import GENERATORS

        b = data.builtin
        return dict(GENERATORS[b.name](b.train_size, b.validation_size, b.test_size, b.seed))
    if data.dataset is not None:
        from hfpipe.data import load_hub

        return {k: v.to_list() for k, v in load_hub(data).items()}
    out = {}
    for split in ("train", "validation", "test"):
        value = getattr(data, split)
        if value is None:
            continue
        paths = [value] if isinstance(value, str) else list(value)
        if data.format in ("auto", "jsonl") and all(p.endswith(".jsonl") for p in paths):
            out[split] = _read_jsonl(paths)  # no datasets / Arrow round trip: ~2 s less per run
            continue
        ds = load_files(paths, data.format, [], [], data.text_unit)
        out[split] = [{k: v for k, v in row.items() if k not in (ROW, FILE)} for row in ds]
    if not out:
        raise DataError("no data", file=where)
    return out


def _read_jsonl(paths: list[str]) -> list[dict]:
    import json

    from hfpipe.errors import decode_utf8

    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError("file not found", file=path)
        for number, line in enumerate(decode_utf8(Path(path).read_bytes(), DataError, path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {number}: not JSON ({exc.msg})", file=path) from None
            if not isinstance(row, dict):
                raise DataError(f"line {number}: expected a JSON object", file=path)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# Prompts


class Prompts:
    """Contexts, options and answers of one task's examples, for one k and one seed."""

    def __init__(self, task, docs: list[dict], pool: list[dict], same_split: bool, where: str) -> None:
        self.task, self.docs, self.pool, self.same_split, self.where = task, docs, pool, same_split, where

    def options(self, doc: dict) -> list[str]:
        task = self.task
        if task.mode == "multiple_choice":
            if isinstance(task.choices, str):
                value = doc.get(task.choices)
                if not isinstance(value, list) or not value:
                    raise DataError(f"column {task.choices!r} must hold a list of options", file=self.where)
                return [str(v) for v in value]
            return [render(c, doc, self.where) for c in task.choices]
        if task.mode == "classification":
            return list(self.verbalizer().values())
        return []

    def verbalizer(self) -> dict[str, str]:
        if self.task.verbalizer:
            return dict(self.task.verbalizer)
        labels = sorted({str(d[self.task.label]) for d in self.pool + self.docs if self.task.label in d})
        return {label: label for label in labels}

    def gold(self, doc: dict) -> int | str:
        """The index of the right option (choice modes) or the expected text (generate)."""
        task = self.task
        if task.mode == "generate":
            return render(task.target, doc, self.where)
        if task.label not in doc:
            raise DataError(f"no {task.label!r} column (the answer)", file=self.where)
        value = doc[task.label]
        if task.mode == "multiple_choice":
            try:
                return int(value)
            except (TypeError, ValueError):
                raise DataError(
                    f"{task.label!r} must be an option index, got {value!r}", file=self.where
                ) from None
        names = list(self.verbalizer())
        if str(value) not in names:
            raise DataError(f"label {value!r} is not one of {names}", file=self.where)
        return names.index(str(value))

    def answer_text(self, doc: dict) -> str:
        """What a k-shot example shows after its prompt."""
        if self.task.mode == "generate":
            return str(self.gold(doc))
        return self.options(doc)[int(self.gold(doc))]

    def shot_text(self, doc: dict, cloze: bool) -> str:
        if cloze:
            return render(self.task.prompt, doc, self.where, {MASK: self.answer_text(doc)})
        return render(self.task.prompt, doc, self.where) + self.task.target_delimiter + self.answer_text(doc)

    def draw(self, k: int, seed: int, sampler: str):
        """For each doc, the k shots: lists of pool rows, never the doc itself."""
        if k == 0:
            return [[] for _ in self.docs]
        available = len(self.pool) - (1 if self.same_split else 0)
        if available < k:
            raise DataError(f"the fewshot split has {available} examples to draw k={k} from", file=self.where)
        shots = []
        if sampler == "first_n":  # lm-evaluation-harness's FirstNSampler: the pool without the doc, in order
            return [[x for x in self.pool if not (self.same_split and x == doc)][:k] for doc in self.docs]
        if sampler == "fixed":  # one draw of k + 1 for all; a doc among the first k gets the (k+1)-th instead
            drawn = random.Random(seed).sample(self.pool, min(len(self.pool), k + 1))
            for index, doc in enumerate(self.docs):
                chosen = [x for x in drawn if not (self.same_split and x == doc)][:k]
                if len(chosen) < k:  # copies of the doc in the draw: its own draw, as per_example
                    rnd = random.Random(f"{seed}/{index}")
                    chosen = rnd.sample([x for x in self.pool if x != doc], k)
                shots.append(chosen)
            return shots
        if sampler == "harness":  # one stream in data order: lm-evaluation-harness's ContextSampler
            rnd = random.Random(seed)
            for doc in self.docs:
                if not self.same_split:  # the harness passes no eval_doc then
                    shots.append(rnd.sample(self.pool, k))
                    continue
                chosen = [x for x in rnd.sample(self.pool, k + 1) if x != doc][:k]
                if len(chosen) < k:  # duplicates of the doc: the harness draws again from the others
                    chosen = rnd.sample([x for x in self.pool if x != doc], k)
                shots.append(chosen)
            return shots
        for index, doc in enumerate(self.docs):
            rnd = random.Random(f"{seed}/{index}")  # each example its own draw: order-independent
            candidates = [i for i in range(len(self.pool)) if not (self.same_split and self.pool[i] == doc)]
            shots.append([self.pool[i] for i in rnd.sample(candidates, k)])
        return shots

    def contexts(self, k: int, seed: int, sampler: str, cloze: bool = False) -> list[str]:
        task, out = self.task, []
        for doc, shots in zip(self.docs, self.draw(k, seed, sampler), strict=True):
            parts = [self.shot_text(s, cloze) for s in shots]
            parts.append(render(task.prompt, doc, self.where, {MASK: "\0"} if cloze else None))
            described = render(task.description, doc, self.where) if task.description else ""
            out.append(described + task.fewshot_delimiter.join(parts))
        return out


# ---------------------------------------------------------------------------------------------------
# The model


def open_model(name_or_path: str, recipe, *, verbose: bool = False):
    """(model, tokenizer, kind) for a run directory, local model or Hub name; kind is causal, seq2seq or
    masked (a masked LM scores by cloze). `verbose`: the libraries' own logs and progress bars stay."""
    import transformers

    from hfpipe import io

    path = Path(name_or_path)
    if path.is_dir() and (path / io.RECIPE).exists():  # an hfpipe run (full or adapter)
        from hfpipe.api import open_run
        from hfpipe.tasks import language_models

        _, task, model, tokenizer = open_run(path, verbose=verbose)
        if not task.language_model:
            *others, last = language_models()
            raise RecipeError(
                f"{path} is a {task.name} run, not a language model: few-shot scoring needs a "
                f"{', '.join(others)} or {last} run",
                key="model.name_or_path",
            )
    else:
        from hfpipe.models import load_pretrained, pretrained_config
        from hfpipe.tokenization import load_tokenizer

        config = pretrained_config(recipe.model, {})
        tokenizer = load_tokenizer(
            name_or_path,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            key="model.name_or_path",
        )
        masked = any(a.endswith("ForMaskedLM") for a in config.architectures or [])
        auto = (
            transformers.AutoModelForSeq2SeqLM
            if config.is_encoder_decoder
            else transformers.AutoModelForMaskedLM
            if masked or (config.model_type in ("bert", "roberta", "distilbert") and not config.is_decoder)
            else transformers.AutoModelForCausalLM
        )
        model, _ = load_pretrained(
            auto, name_or_path, recipe.model, where={"key": "model.name_or_path"}, config=config, score=True
        )
    model.eval()
    config = model.config
    if config.is_encoder_decoder:
        kind = "seq2seq"
    elif (
        type(model).__name__.endswith("ForMaskedLM")
        or "MaskedLM" in type(getattr(model, "base_model", model)).__name__
    ):
        kind = "masked"
    else:
        kind = "causal"
    return model, tokenizer, kind


def _positions(model) -> int:
    config = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


# ---------------------------------------------------------------------------------------------------
# Scoring one (task, k, seed)


def _choice_metrics(scores: list[list[float]], options: list[list[str]], gold: list[int]) -> dict:
    acc = [max(range(len(s)), key=lambda j: s[j]) == g for s, g in zip(scores, gold, strict=True)]
    norm = [
        max(range(len(s)), key=lambda j: s[j] / max(1, len(o[j]))) == g
        for s, o, g in zip(scores, options, gold, strict=True)
    ]
    return {"acc": sum(acc) / len(acc), "acc_norm": sum(norm) / len(norm)}


def score_choices(
    model, tokenizer, kind: str, prompts: Prompts, contexts: list[str], spec
) -> tuple[dict, int]:
    """acc / acc_norm of a multiple_choice or classification task; (metrics, number of requests)."""
    from hfpipe.fewshot import scoring

    options = [prompts.options(d) for d in prompts.docs]
    gold = [int(prompts.gold(d)) for d in prompts.docs]
    for g, o, d in zip(gold, options, prompts.docs, strict=True):
        if not 0 <= g < len(o):
            raise DataError(f"answer {g} is not an option index (0-{len(o) - 1}) of {d}", file=prompts.where)
    max_length = spec.max_length or _positions(model)
    if kind == "masked":
        scores = _cloze_scores(model, tokenizer, options, contexts, spec, max_length)
        return _choice_metrics(scores, options, gold), len(contexts)
    if kind == "causal":  # an option longer than the model cannot be scored (the harness fails there too)
        for n, opts in enumerate(options):
            longest = max(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in opts)
            if longest >= max_length:
                raise DataError(
                    f"example {n + 1}: an option of {longest} tokens does not fit the model's {max_length} positions",
                    file=prompts.where,
                )
    requests = [
        (c, prompts.task.target_delimiter + o)
        for c, opts in zip(contexts, options, strict=True)
        for o in opts
    ]
    if kind == "seq2seq":
        flat = scoring.seq2seq_loglikelihoods(model, tokenizer, requests, spec.batch_size, max_length)
    else:
        flat = _causal_scores(model, tokenizer, requests, options, spec, max_length, prompts.where)
    scores, at = [], 0
    for opts in options:
        scores.append([flat[at + j][0] for j in range(len(opts))])
        at += len(opts)
    return _choice_metrics(scores, options, gold), len(requests)


def _cloze_scores(model, tokenizer, options, contexts, spec, max_length: int) -> list[list[float]]:
    """A masked LM's log-probability of each option's (one-token) word at the prompt's mask."""
    from hfpipe.fewshot import scoring

    ids = []
    for word in options[0]:
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]  # after a space (RoBERTa's Ġ)
        if len(pieces) != 1:
            raise RecipeError(
                f"cloze scoring needs one-token verbalizers; {word!r} is {len(pieces)} tokens for this tokenizer",
                key="fewshot.tasks.verbalizer",
            )
        ids.append(pieces[0])
    if tokenizer.mask_token is None:
        raise RecipeError("this masked LM's tokenizer has no mask token", key="model.name_or_path")
    texts = [c.replace("\0", tokenizer.mask_token) for c in contexts]
    return scoring.cloze_logprobs(model, tokenizer, texts, ids, spec.batch_size, max_length)


def _causal_scores(model, tokenizer, requests, options, spec, max_length: int, where: str) -> list[tuple]:
    """(log-likelihood, greedy) of each (context, option) request under a causal LM: each context run once
    for all its options where that pays (spec.reuse_context), else every request on its own."""
    from hfpipe.fewshot import scoring

    prefix = scoring.prefix_token(tokenizer)
    encoded, seen = [], {}
    for context, continuation in requests:
        ctx, cont = scoring.encode_pair(tokenizer, context, continuation, seen)
        if not cont:
            raise DataError(f"an option is empty after the prompt {context[-80:]!r}", file=where)
        encoded.append((ctx or [prefix], cont))
    if not spec.reuse_context:
        return scoring.causal_loglikelihoods(model, encoded, spec.batch_size, max_length)
    groups, spans, at = [], [], 0  # one pass of each context, its cache shared by the options
    for opts in options:
        chunk = encoded[at : at + len(opts)]
        spans.append((at, at + len(opts)))
        at += len(opts)
        same = all(c[0] == chunk[0][0] for c in chunk)  # a space moved into one option only
        # Sharing pays when the context outweighs the options (k-shot prompts): measured on PIQA,
        # 1.9x faster at k=5, 1.5x slower at k=0, where a second pass costs more than it saves.
        long = len(chunk[0][0]) >= 2 * max(len(c[1]) for c in chunk)
        groups.append((chunk[0][0], [c[1] for c in chunk]) if same and long else None)
    grouped = iter(
        scoring.causal_option_loglikelihoods(
            model, [r for r in groups if r is not None], spec.batch_size, max_length
        )
    )
    alone = [r for g, (a, b) in enumerate(spans) if groups[g] is None for r in encoded[a:b]]
    alone_iter = iter(scoring.causal_loglikelihoods(model, alone, spec.batch_size, max_length))
    flat = []
    for g, (a, b) in enumerate(spans):
        flat += [next(alone_iter) for _ in range(a, b)] if groups[g] is None else next(grouped)
    return flat


def score_generate(model, tokenizer, prompts: Prompts, contexts: list[str], spec) -> tuple[dict, int]:
    import sacrebleu

    from hfpipe.fewshot import scoring
    from hfpipe.metrics import normalize_answer, squad_f1

    task = prompts.task
    gold = [str(prompts.gold(d)) for d in prompts.docs]
    settings = {"max_new_tokens": task.max_new_tokens, "num_beams": task.num_beams}
    outputs = scoring.generate(
        model, tokenizer, contexts, task.stop, settings, spec.batch_size, spec.max_length or _positions(model)
    )
    predictions = [o.strip() for o in outputs]
    metrics = {
        "exact_match": sum(
            normalize_answer(p) == normalize_answer(g) for p, g in zip(predictions, gold, strict=True)
        )
        / len(gold),
        "f1": sum(squad_f1(p, g) for p, g in zip(predictions, gold, strict=True)) / len(gold),
        "bleu": sacrebleu.corpus_bleu(predictions, [gold]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [gold]).score,
    }
    return metrics, len(contexts)


def score_rolling(model, tokenizer, kind: str, prompts: Prompts, spec) -> tuple[dict, int]:
    from hfpipe.fewshot import scoring

    if kind != "causal":
        raise RecipeError("loglikelihood_rolling needs a causal LM", key="fewshot.tasks.mode")
    max_length = spec.max_length or _positions(model)
    prefix = scoring.prefix_token(tokenizer)
    requests, owner, words, nbytes = [], [], 0, 0
    for n, doc in enumerate(prompts.docs):
        text = render("{" + prompts.task.text + "}", doc, prompts.where)
        words += len(re.split(r"\s+", text))  # as the harness counts words
        nbytes += len(text.encode("utf-8"))
        tokens = tokenizer(text)["input_ids"]  # the tokenizer's special tokens, as the harness
        for window in scoring.rolling_windows(tokens, prefix, max_length):
            requests.append(window)
            owner.append(n)
    results = scoring.causal_loglikelihoods(model, requests, spec.batch_size, max_length)
    total = sum(r[0] for r in results)
    return {
        "word_perplexity": math.exp(-total / max(1, words)),
        "byte_perplexity": math.exp(-total / max(1, nbytes)),
        "bits_per_byte": -total / max(1, nbytes) / math.log(2),
    }, len(requests)


# ---------------------------------------------------------------------------------------------------
# The run


@runlock.scoped
def run(recipe, *, limit: int | None = None, verbose: bool = False) -> dict:
    """Evaluate recipe.fewshot on recipe.model.name_or_path; write OUTPUT_DIR/results.json; return it
    (`verbose`: the libraries' own logs and progress bars stay)."""
    from hfpipe import io
    from hfpipe.tasks import get_task, require_command

    require_command(get_task(recipe.task), "fewshot", recipe.source)
    runlock.claim(recipe.output_dir)
    spec = recipe.fewshot
    limit = limit or spec.limit
    model, tokenizer, kind = open_model(recipe.model.name_or_path, recipe, verbose=verbose)
    log.info("few-shot: %s (%s LM), k %s, seeds %s", recipe.model.name_or_path, kind, spec.k, spec.seeds)
    results: dict = {
        "model": recipe.model.name_or_path,
        "kind": kind,
        "k": spec.k,
        "seeds": spec.seeds,
        "tasks": {},
    }
    for task in spec.tasks:
        where = f"{recipe.source or 'recipe'} (fewshot task {task.name})"
        splits = load_splits(task.data, where)
        shots_needed = task.mode != "loglikelihood_rolling" and any(spec.k)
        for needed in (task.split, task.fewshot_split) if shots_needed else (task.split,):
            if needed not in splits:
                raise DataError(f"no {needed} split (it has: {', '.join(splits)})", file=where)
        docs = splits[task.split][:limit] if limit else splits[task.split]
        pool = splits.get(task.fewshot_split, [])
        prompts = Prompts(task, docs, pool, task.fewshot_split == task.split, where)
        if kind == "masked" and task.mode != "classification":
            raise RecipeError(
                f"a masked LM scores classification by cloze, not {task.mode}", key="fewshot.tasks.mode"
            )
        if kind == "masked" and "{" + MASK + "}" not in task.prompt:
            raise RecipeError(
                "a masked LM needs {mask} in the prompt (where the verbalizer goes)",
                key="fewshot.tasks.prompt",
            )
        entry: dict = {"mode": task.mode, "examples": len(docs), "runs": []}
        for k in spec.k if task.mode != "loglikelihood_rolling" else [0]:
            for seed in spec.seeds if k else spec.seeds[:1]:
                started = time.perf_counter()
                if task.mode == "loglikelihood_rolling":
                    contexts = []
                    metrics, n_requests = score_rolling(model, tokenizer, kind, prompts, spec)
                else:
                    contexts = prompts.contexts(k, seed, spec.sampler, cloze=kind == "masked")
                    if task.mode == "generate":
                        metrics, n_requests = score_generate(model, tokenizer, prompts, contexts, spec)
                    else:
                        metrics, n_requests = score_choices(model, tokenizer, kind, prompts, contexts, spec)
                seconds = time.perf_counter() - started
                digest = hashlib.sha256("\x1e".join(contexts).encode("utf-8")).hexdigest()[:16]
                entry["runs"].append(
                    {
                        "k": k,
                        "seed": seed,
                        **metrics,
                        "requests": n_requests,
                        "seconds": round(seconds, 3),
                        "requests_per_s": round(n_requests / max(seconds, 1e-9), 1),
                        "prompts_sha256": digest,
                    }
                )
                log.info(
                    "%s k=%d seed=%d: %s",
                    task.name,
                    k,
                    seed,
                    "  ".join(f"{m} {v:.4f}" for m, v in metrics.items()),
                )
        entry["summary"] = summarize(entry["runs"])
        results["tasks"][task.name] = entry
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "results.json", results)
    return results


METRICS = (
    "acc",
    "acc_norm",
    "exact_match",
    "f1",
    "bleu",
    "chrf",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
)


def summarize(runs: list[dict]) -> dict:
    """{k: {metric: {mean, std, n}}} over seeds."""
    out: dict = {}
    for k in sorted({r["k"] for r in runs}):
        group = [r for r in runs if r["k"] == k]
        out[str(k)] = {}
        for metric in METRICS:
            values = [r[metric] for r in group if metric in r]
            if values:
                out[str(k)][metric] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
    return out

"""Log-likelihoods and generations for few-shot requests, batched and exact.

A request is (context, continuation) as text. Tokenization follows lm-evaluation-harness: trailing spaces
of the context move to the continuation, the context and the whole string are tokenized, and the
continuation is the difference, so a score never depends on where a space falls. The log-likelihood of a
batched request equals that of a plain forward pass of the request alone (tested to 1e-5, for left and
right padding).
"""

from __future__ import annotations

from collections.abc import Sequence


def move_spaces(context: str, continuation: str) -> tuple[str, str]:
    """Trailing spaces of the context belong to the continuation (the harness's rule)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def encode_pair(
    tokenizer, context: str, continuation: str, seen: dict | None = None
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by the harness's rule: the context alone, and the whole string minus
    the context's length. The tokenizer's own special tokens (a BOS for Llama-style tokenizers), as the
    harness's tok_encode. `seen` keeps contexts already tokenized (an example's options share one)."""
    context, continuation = move_spaces(context, continuation)
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = seen.get(context) if seen is not None else None
    if ctx is None:
        ctx = tokenizer(context)["input_ids"]
        if seen is not None:
            seen[context] = ctx
    return ctx, whole[len(ctx) :]


def prefix_token(tokenizer) -> int:
    """What an empty context starts from: BOS, else EOS (GPT-2's <|endoftext|>)."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if token is not None:
            return token
    from hfpipe.errors import RecipeError

    raise RecipeError("the tokenizer has no BOS / EOS / pad token to start an empty context", key="model")


def causal_loglikelihoods(
    model,
    requests: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    max_length: int,
    padding_side: str = "left",
) -> list[tuple[float, bool]]:
    """(summed log p(continuation | context), continuation is the greedy one) per token request.

    Input = (context + continuation) cut to its last max_length + 1 tokens, minus the last token (the
    harness's rule); longest first, so a batch pads little. With left padding (the default), position ids
    skip the pad and every row ends in the last column, so only the last columns' logits are computed
    (the vocabulary projection of the context's positions is most of a small model's work).
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pad = 0
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            rows, spans = [], []
            for i in idx:
                ctx, cont = requests[i]
                whole = (ctx + cont)[-(max_length + 1) :]
                inputs = whole[:-1]
                rows.append(inputs)
                spans.append((len(inputs) - len(cont), len(cont)))  # where the continuation's logits are
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            shift = []
            for r, row in enumerate(rows):
                start = width - len(row) if padding_side == "left" else 0
                ids[r, start : start + len(row)] = torch.tensor(row)
                mask[r, start : start + len(row)] = 1
                shift.append(start)
            kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            kept = 0
            if padding_side == "left":
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
                if _takes(model, "logits_to_keep"):
                    kept = max(n for _, n in spans)
                    kwargs["logits_to_keep"] = kept
            logprobs = F.log_softmax(model(**kwargs).logits.float(), dim=-1)
            for r, i in enumerate(idx):
                first, n = spans[r]
                cont = torch.tensor(requests[i][1], dtype=torch.long, device=device)
                begin_at = kept - n if kept else shift[r] + first  # kept: the last `kept` columns only
                rows_lp = logprobs[r, begin_at : begin_at + n]
                total = rows_lp.gather(-1, cont[:, None]).sum().item()
                greedy = bool((rows_lp.argmax(-1) == cont).all().item())
                out[i] = (total, greedy)
    return out  # type: ignore[return-value]


def shared_prefixes(contexts: Sequence[list[int]], min_length: int = 16) -> list[tuple[int, list[int]]]:
    """Clusters of contexts that start with the same tokens: [(prefix length, member indices)], every index
    in one cluster; a prefix of 0 for contexts that share nothing worth a pass of its own.

    Contexts sorted in token order put any common start in one run, and the common start of a run is the
    smallest common start of its neighbours (the LCP-interval tree of a suffix array). Each run is either
    one cluster (its prefix runs once instead of once per member: (members - 1) x prefix tokens saved) or
    split where its neighbours share least, whichever saves more. A prefix always leaves a member at least
    one token of its own (the token that predicts its first option token).
    """
    order = sorted(range(len(contexts)), key=lambda i: contexts[i])

    def common(a: list[int], b: list[int]) -> int:
        n, i = min(len(a), len(b)) - 1, 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    shared = [common(contexts[order[i]], contexts[order[i + 1]]) for i in range(len(order) - 1)]
    best: dict[tuple[int, int], tuple[int, list[tuple[int, list[int]]]]] = {}
    stack = [(0, len(order), False)]
    while stack:
        lo, hi, ready = stack.pop()
        if hi - lo < 2:
            best[(lo, hi)] = (0, [(0, order[lo:hi])] if hi > lo else [])
            continue
        low = min(shared[lo : hi - 1])
        cuts = [lo] + [i + 1 for i in range(lo, hi - 1) if shared[i] == low] + [hi]
        parts = list(zip(cuts, cuts[1:], strict=False))
        if not ready:
            stack.append((lo, hi, True))
            stack += [(a, b, False) for a, b in parts]
            continue
        saved = sum(best[p][0] for p in parts)
        clusters = [c for p in parts for c in best.pop(p)[1]]
        whole = (hi - lo - 1) * low if low >= min_length else 0
        if whole > saved:
            best[(lo, hi)] = (whole, [(low, order[lo:hi])])
        else:  # contexts without a shared prefix go together (one cluster of prefix 0)
            alone = [i for n, members in clusters if n == 0 for i in members]
            kept = [c for c in clusters if c[0] > 0]
            best[(lo, hi)] = (saved, kept + ([(0, alone)] if alone else []))
    return best[(0, len(order))][1] if order else []


def causal_option_loglikelihoods(
    model,
    groups: Sequence[tuple[list[int], list[list[int]]]],
    batch_size: int,
    max_length: int,
    share_prefixes: bool = True,
) -> list[list[tuple[float, bool]]]:
    """Like causal_loglikelihoods for (context, [options]) groups, but each context runs once: its key /
    value cache is copied for every option, which then runs only its own tokens. With share_prefixes, a
    start that several contexts share (the same k shots, a task description) runs once for all of them
    (shared_prefixes), and its cache is copied for each context. Contexts are left-padded after the shared
    prefix so that every cache ends in the same column; position ids skip the pad. Groups where an option
    would cut the context (longer than max_length) take the plain path, which cuts per option as the
    harness does.
    """
    import copy

    import torch

    device = next(model.parameters()).device
    out: list[list[tuple[float, bool]] | None] = [None] * len(groups)
    fits = [
        g
        for g, (ctx, opts) in enumerate(groups)
        if ctx and all(len(ctx) + len(o) <= max_length + 1 for o in opts)
    ]
    plain = [g for g in range(len(groups)) if g not in set(fits)]
    if plain:
        flat = [(groups[g][0], o) for g in plain for o in groups[g][1]]
        scores = iter(causal_loglikelihoods(model, flat, batch_size, max_length))
        for g in plain:
            out[g] = [next(scores) for _ in groups[g][1]]
    keep_one = {"logits_to_keep": 1} if _takes(model, "logits_to_keep") else {}  # the next token only
    prefix_cache, prefix_of = None, None
    model.eval()
    with torch.no_grad():
        for shared, batch in _option_batches(groups, fits, batch_size, share_prefixes):
            cached = {}
            if shared:
                start = groups[batch[0]][0][:shared]
                if prefix_of != start:  # once per cluster: its batches come one after the other
                    prefix_of = start
                    prefix_cache = _output_cache(
                        model(input_ids=torch.tensor([start], device=device), use_cache=True, **keep_one)
                    )
                cache = copy.deepcopy(prefix_cache)
                cache.reorder_cache(torch.zeros(len(batch), dtype=torch.long, device=device))
                cached = {_cache_argument(model): cache}
            for g, scores in zip(
                batch, _score_batch(model, groups, batch, shared, cached, keep_one), strict=True
            ):
                out[g] = scores
    return out  # type: ignore[return-value]


def _option_batches(
    groups, fits: list[int], batch_size: int, share_prefixes: bool
) -> list[tuple[int, list[int]]]:
    """(shared prefix length, group indices) batches of about `batch_size` option rows, whole groups, longest
    context first; a cluster of contexts sharing a prefix (shared_prefixes) in consecutive batches."""
    clusters = (
        [(n, [fits[i] for i in members]) for n, members in shared_prefixes([groups[g][0] for g in fits])]
        if share_prefixes
        else [(0, fits)]
    )
    batches = []
    for shared, members in clusters:
        current, rows = [], 0
        for g in sorted(members, key=lambda g: -len(groups[g][0])):
            if current and rows + len(groups[g][1]) > batch_size:
                batches.append((shared, current))
                current, rows = [], 0
            current.append(g)
            rows += len(groups[g][1])
        if current:
            batches.append((shared, current))
    return batches


def _score_batch(model, groups, batch: list[int], shared: int, cached: dict, keep_one: dict) -> list[list]:
    """[(log-likelihood, greedy) per option] per group of `batch`: the contexts after the `shared` prefix
    (whose cache is in `cached`) run once, left-padded; then each option's tokens after its first run on a
    copy of its context's cache."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    contexts = [groups[g][0][shared:] for g in batch]
    width = max(map(len, contexts))
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, ctx in enumerate(contexts):
        ids[r, width - len(ctx) :], mask[r, width - len(ctx) :] = torch.tensor(ctx), 1
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), mask], dim=1)
    first = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **cached,
        **keep_one,
    )
    first_lp = F.log_softmax(first.logits[:, -1].float(), dim=-1)  # predicts each option's 1st token
    owner = [r for r, g in enumerate(batch) for _ in groups[g][1]]
    options = [o for g in batch for o in groups[g][1]]
    steps = max(len(o) for o in options) - 1
    rest_lp = None
    if steps > 0:
        cache = _output_cache(first)
        cache.reorder_cache(torch.tensor(owner, device=device))  # one copy of its context's cache per option
        tail = torch.zeros((len(options), steps), dtype=torch.long)
        tail_mask = torch.zeros_like(tail)
        for j, o in enumerate(options):
            tail[j, : len(o) - 1], tail_mask[j, : len(o) - 1] = torch.tensor(o[:-1]), 1
        lengths = mask.sum(-1)[owner]
        # pad after a short option gets position 0 (it may lie past the model's last position; no real
        # token attends to it)
        positions = (lengths[:, None] + torch.arange(steps)[None, :]) * tail_mask
        second = model(
            input_ids=tail.to(device),
            attention_mask=torch.cat([mask[owner], tail_mask], dim=1).to(device),
            position_ids=positions.to(device),
            **{_cache_argument(model): cache},
            use_cache=True,
        )
        rest_lp = F.log_softmax(second.logits.float(), dim=-1)
    out, at = [], 0
    for r, g in enumerate(batch):
        scores = []
        for o in groups[g][1]:
            total = first_lp[r, o[0]].item()
            greedy = bool(first_lp[r].argmax().item() == o[0])
            if len(o) > 1:
                target = torch.tensor(o[1:], device=device)
                lp = rest_lp[at, : len(o) - 1]
                total += lp.gather(-1, target[:, None]).sum().item()
                greedy = greedy and bool((lp.argmax(-1) == target).all().item())
            scores.append((total, greedy))
            at += 1
        out.append(scores)
    return out


def _output_cache(output):
    """The key / value cache a forward pass returned (`cache` in transformers >= 5.2x, past_key_values before)."""
    return output["cache"] if "cache" in output else output.past_key_values


def _takes(model, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(model.forward).parameters


def _cache_argument(model) -> str:
    """`cache` (transformers >= 5.2x) or `past_key_values` (before): the forward argument of a KV cache."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def seq2seq_loglikelihoods(
    model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int, max_length: int
) -> list[tuple[float, bool]]:
    """Encoder-decoders: the context is the encoder's input, the option the decoder's target. As the
    harness: spaces moved, context and option tokenized apart with the tokenizer's special tokens (T5's
    </s> ends the option and is scored), a long context keeps its end."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pairs = [move_spaces(c, x) for c, x in requests]
    contexts = [tokenizer(c)["input_ids"][-max_length:] for c, _ in pairs]
    targets_all = [tokenizer(x)["input_ids"] for _, x in pairs]
    order = sorted(range(len(requests)), key=lambda i: -len(contexts[i]))
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            width = max(len(contexts[i]) for i in idx)
            ids = torch.full((len(idx), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, : len(contexts[i])], attention[r, : len(contexts[i])] = torch.tensor(contexts[i]), 1
            enc = {"input_ids": ids.to(device), "attention_mask": attention.to(device)}
            targets = [targets_all[i] for i in idx]
            width = max(map(len, targets))
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            for r, t in enumerate(targets):
                labels[r, : len(t)] = torch.tensor(t)
            logits = model(**enc, labels=labels.to(device)).logits.float()
            logprobs = F.log_softmax(logits, dim=-1)
            for r, i in enumerate(idx):
                t = torch.tensor(targets[r], device=device)
                lp = logprobs[r, : len(t)]
                out[i] = (lp.gather(-1, t[:, None]).sum().item(), bool((lp.argmax(-1) == t).all().item()))
    return out  # type: ignore[return-value]


def cloze_logprobs(
    model, tokenizer, texts: Sequence[str], options: Sequence[int], batch_size: int, max_length: int
) -> list[list[float]]:
    """Masked LMs (PET-style cloze): log p(option token at the [MASK]) for each text, one mask each.

    Texts longer than max_length keep their end, where the mask (and the scored example) is."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    mask_id = tokenizer.mask_token_id
    out: list[list[float]] = []
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(texts), batch_size):
            chunk = texts[begin : begin + batch_size]
            rows = []
            for text in chunk:
                ids = tokenizer(text)["input_ids"]
                if len(ids) > max_length:  # keep [CLS], drop the oldest shots
                    ids = ids[:1] + ids[len(ids) - max_length + 1 :]
                if ids.count(mask_id) != 1:
                    from hfpipe.errors import DataError

                    raise DataError(
                        f"a cloze prompt must hold exactly one {tokenizer.mask_token}: {text[-200:]!r}"
                    )
                rows.append(ids)
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, : len(row)], attention[r, : len(row)] = torch.tensor(row), 1
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            for r, row in enumerate(rows):
                lp = F.log_softmax(logits[r, row.index(mask_id)], dim=-1)
                out.append([lp[o].item() for o in options])
    return out


def rolling_windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) token windows that score every token of a text once (the harness's
    rolling windows with one token of context, made disjoint)."""
    if not tokens:
        return []  # an empty text has nothing to score
    windows = []
    first = min(max_length, len(tokens))
    windows.append(([prefix], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        windows.append((tokens[max(0, end - max_length - 1) : end - n], tokens[end - n : end]))
        done = end
    return windows


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    stop: Sequence[str],
    settings: dict,
    batch_size: int,
    max_length: int = 1024,
):
    """Greedy / beam continuations of `prompts`, cut at the first stop string (batched, left-padded).
    Prompts keep their last tokens: max_length - max_new_tokens for a decoder, max_length for an encoder."""
    import torch

    device = next(model.parameters()).device
    seq2seq = bool(model.config.is_encoder_decoder)
    side, tokenizer.padding_side = tokenizer.padding_side, "right" if seq2seq else "left"
    cut, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    room = max_length if seq2seq else max_length - settings.get("max_new_tokens", 32)
    if room < 1:
        from hfpipe.errors import RecipeError

        raise RecipeError(
            f"max_new_tokens leaves no room in the model's {max_length} positions",
            key="fewshot.tasks.max_new_tokens",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    try:
        with torch.no_grad():
            for begin in range(0, len(order), batch_size):
                idx = order[begin : begin + batch_size]
                enc = tokenizer(
                    [prompts[i] for i in idx],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=room,
                    add_special_tokens=seq2seq,
                )
                enc = enc.to(device)
                ids = model.generate(
                    **enc,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    **settings,
                )
                new = ids if seq2seq else ids[:, enc["input_ids"].shape[1] :]
                for r, i in enumerate(idx):
                    text = tokenizer.decode(new[r], skip_special_tokens=True)
                    for s in stop:
                        text = text.split(s)[0] if s else text
                    out[i] = text
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, cut
    return out

"""Few-shot evaluation: prompts, exact log-likelihoods (batched = one at a time), metrics, the CLI gate."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES
from test_translation import t5_run  # noqa: F401  (its module fixture: a tiny T5 translation run)

from hfpipe.fewshot import Prompts, _choice_metrics, load_splits, scoring
from hfpipe.recipe import load_recipe


@pytest.fixture(scope="module")
def gpt2(clm_run):
    """(tokenizer, model in eval mode) of the session's tiny GPT-2 run, loaded once for this module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(clm_run), AutoModelForCausalLM.from_pretrained(clm_run).eval()


def fewshot_recipe(tmp_path, base, *overrides, name="fewshot-gpt2-sentiment.yaml"):
    return load_recipe(
        RECIPES / name, [f"model.name_or_path={base}", *overrides, f"output_dir={tmp_path / 'fewshot'}"]
    )


def direct_loglikelihood(model, context: list[int], continuation: list[int], max_length: int = 32) -> float:
    """log p(continuation | context) from one plain forward pass of this request alone (a context too long
    for the model loses its beginning)."""
    context = context[max(0, len(context) + len(continuation) - max_length - 1) :]
    ids = torch.tensor([(context + continuation)[:-1]])  # the last token is only predicted
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_continuations_take_the_context_s_trailing_space(clm_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(clm_run)
    assert scoring.encode_pair(tok, "Review: fine. Sentiment: ", "positive") == scoring.encode_pair(
        tok, "Review: fine. Sentiment:", " positive"
    )
    ctx, cont = scoring.encode_pair(tok, "Review: fine. Sentiment:", " positive")
    # the harness's rule: the context encoded alone, the option = the whole string past the context's length
    assert ctx == tok("Review: fine. Sentiment:")["input_ids"]
    assert cont == tok("Review: fine. Sentiment: positive")["input_ids"][len(ctx) :]


def test_rolling_windows_score_every_token_once():
    tokens = list(range(100, 110))
    windows = scoring.rolling_windows(tokens, 99, 4)
    assert [t for _, cont in windows for t in cont] == tokens
    assert windows[0] == ([99], tokens[:4])
    for ctx, cont in windows[1:]:
        end = tokens.index(cont[-1]) + 1
        assert ctx + cont == tokens[end - 5 : end]  # the most context the model holds
    assert scoring.rolling_windows([], 99, 4) == []


def test_batched_loglikelihoods_equal_one_at_a_time(gpt2):
    tok, model = gpt2
    texts = [
        ("The cast was", " superb."),
        ("What a boring film! Sentiment:", " negative"),
        ("The plot was dull, the music", " moving."),
        ("A", " b"),
        ("It was long, but", " clever."),
    ]
    requests = [scoring.encode_pair(tok, c, x) for c, x in texts]
    assert all(len(c) + len(x) <= 32 for c, x in requests)  # within the model's positions
    direct = [direct_loglikelihood(model, c, x) for c, x in requests]
    for batch_size in (1, 2, 5):
        for side in ("right", "left"):
            got = scoring.causal_loglikelihoods(model, requests, batch_size, 32, padding_side=side)
            assert [abs(g[0] - d) < 1e-5 for g, d in zip(got, direct, strict=True)] == [True] * len(direct), (
                batch_size,
                side,
            )
    # A request longer than the model keeps its end (max_length + 1 tokens, the last one predicted).
    long = (list(range(5, 45)), [7, 8])
    ((score, _),) = scoring.causal_loglikelihoods(model, [long], 1, 16)
    assert abs(score - direct_loglikelihood(model, long[0][-15:], long[1])) < 1e-5


def test_prompts_draw_k_others_deterministically(tmp_path, clm_run):
    recipe = fewshot_recipe(tmp_path, clm_run)
    task = recipe.fewshot.tasks[0]
    splits = load_splits(task.data, "test")
    docs = splits["test"][:20]
    for same_split, pool in ((False, splits["train"]), (True, docs)):
        prompts = Prompts(task, docs, pool, same_split, "test")
        for sampler in ("per_example", "harness"):
            first = prompts.draw(5, 1, sampler)
            assert first == prompts.draw(5, 1, sampler)  # the seed decides
            assert first != prompts.draw(5, 2, sampler)
            for doc, shots in zip(docs, first, strict=True):
                assert len(shots) == 5 and doc not in shots
    for same_split, pool in ((False, splits["train"]), (True, docs)):
        prompts = Prompts(task, docs, pool, same_split, "test")
        fixed = prompts.draw(3, 1, "fixed")
        assert fixed == prompts.draw(3, 1, "fixed") and fixed != prompts.draw(3, 2, "fixed")
        common = max(fixed, key=fixed.count)
        assert fixed.count(common) >= len(docs) - 3  # one set of shots, except for docs among them
        for doc, shots in zip(docs, fixed, strict=True):
            assert len(shots) == 3 and doc not in shots
            assert shots == common or doc in common
        first = prompts.draw(3, 7, "first_n")
        assert all(s == [x for x in pool if x != d][:3] for d, s in zip(docs, first, strict=True))
    prompts = Prompts(task, docs, splits["train"], False, "test")
    context = prompts.contexts(2, 1, "per_example")[0]
    shots = prompts.draw(2, 1, "per_example")[0]
    assert context == (
        f"Review: {shots[0]['text']}\nSentiment: {shots[0]['label']}\n\n"
        f"Review: {shots[1]['text']}\nSentiment: {shots[1]['label']}\n\n"
        f"Review: {docs[0]['text']}\nSentiment:"
    )
    described = Prompts(
        task.model_copy(update={"description": "Is the {label} review positive?\n\n"}),
        docs,
        splits["train"],
        False,
        "t",
    )
    assert (
        described.contexts(2, 1, "per_example")[0]
        == f"Is the {docs[0]['label']} review positive?\n\n" + context
    )


def test_acc_and_length_normalised_acc():
    scores = [[-4.0, -6.0], [-10.0, -9.0], [-3.0, -8.0]]
    options = [["ab", "abcdefgh"], ["abc", "a"], ["a", "abcdefghij"]]
    # acc: argmax of the sums (0, 1, 0); acc_norm: of sum / characters (-2 vs -0.75 -> 1; -3.3 vs -9 -> 0;
    # -3 vs -0.8 -> 1)
    assert _choice_metrics(scores, options, [0, 1, 1]) == {"acc": 2 / 3, "acc_norm": 1 / 3}


def test_option_scores_are_the_direct_computation(tmp_path, clm_run):
    from hfpipe.fewshot import open_model, score_choices

    recipe = fewshot_recipe(tmp_path, clm_run, "fewshot.k=[1]", "fewshot.seeds=[1]", "fewshot.limit=6")
    task = recipe.fewshot.tasks[0]
    splits = load_splits(task.data, "test")
    model, tok, kind = open_model(str(clm_run), recipe)
    assert kind == "causal"
    prompts = Prompts(task, splits["test"][:6], splits["train"], False, "test")
    contexts = prompts.contexts(1, 1, "per_example")
    metrics, n = score_choices(model, tok, kind, prompts, contexts, recipe.fewshot)
    assert n == 12
    right = 0
    for context, doc in zip(contexts, prompts.docs, strict=True):
        scores = [
            direct_loglikelihood(model, *scoring.encode_pair(tok, context, " " + o))
            for o in ("negative", "positive")
        ]
        right += ["negative", "positive"][scores.index(max(scores))] == doc["label"]
    assert metrics["acc"] == right / 6


def test_generation_stops_at_the_stop_strings(gpt2):
    tok, model = gpt2
    prompts = ["The cast was", "What a"]
    free = scoring.generate(model, tok, prompts, [], {"max_new_tokens": 12}, 2)
    stopped = scoring.generate(model, tok, prompts, [" "], {"max_new_tokens": 12}, 2)
    for a, b in zip(free, stopped, strict=True):
        assert " " not in b and b == a.split(" ")[0]


def test_fewshot_cli_results_and_fail_under(tmp_path, clm_run, cli):
    recipe = RECIPES / "fewshot-gpt2-sentiment.yaml"
    args = [
        "fewshot",
        recipe,
        f"model.name_or_path={clm_run}",
        f"output_dir={tmp_path / 'out'}",
        "--limit",
        "8",
    ]
    args += ["fewshot.k=[0,2]", "fewshot.seeds=[1,2]"]
    result = cli(*args, "--fail-under", "sentiment.acc=0")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = results["tasks"]["sentiment"]["runs"]
    assert [(r["k"], r["seed"]) for r in runs] == [(0, 1), (2, 1), (2, 2)]
    assert (
        all(len(r["prompts_sha256"]) == 16 for r in runs)
        and runs[1]["prompts_sha256"] != runs[2]["prompts_sha256"]
    )
    assert set(results["tasks"]) == {"sentiment", "aspect", "perplexity"}
    assert results["tasks"]["perplexity"]["runs"][0]["word_perplexity"] > 1
    assert "sentiment" in result.output and "acc_norm" in result.output
    failing = cli(*args, "--fail-under", "sentiment.acc@2=1.01")
    assert failing.exit_code == 5 and "sentiment acc at k=2" in failing.output
    bad = cli(*args, "--fail-under", "acc")
    assert bad.exit_code == 2


def test_masked_lm_cloze_scores_the_mask(tmp_path, tiny_run):
    """PET-style: the option word's log-probability at the [MASK], one token per verbalizer."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from hfpipe.errors import RecipeError
    from hfpipe.fewshot import score_choices

    tok = AutoTokenizer.from_pretrained(tiny_run)
    model = AutoModelForMaskedLM.from_pretrained(tiny_run).eval()
    words = [
        w
        for w in ("dull", "superb", "good", "bad", "the", "a")
        if len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    ][:2]
    assert len(words) == 2
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    text = f"the film was long. it was {tok.mask_token}."
    (got,) = scoring.cloze_logprobs(model, tok, [text], ids, 4, 64)
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    position = enc["input_ids"][0].tolist().index(tok.mask_token_id)
    expected = torch.log_softmax(logits[position].float(), -1)[ids].tolist()
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5

    recipe = fewshot_recipe(tmp_path, tiny_run, "fewshot.k=[1]", name="fewshot-bert-cloze.yaml")
    task = recipe.fewshot.tasks[0].model_copy(
        update={"verbalizer": {"negative": "zqxjv", "positive": words[1]}}
    )
    splits = load_splits(task.data, "test")
    prompts = Prompts(task, splits["test"][:4], splits["train"], False, "test")
    contexts = prompts.contexts(1, 1, "per_example", cloze=True)
    assert contexts[0].count("\0") == 1 and "zqxjv" not in contexts[0].split("\0")[1]
    with pytest.raises(RecipeError, match="one-token verbalizers"):
        score_choices(model, tok, "masked", prompts, contexts, recipe.fewshot)


def test_shared_context_cache_gives_the_plain_scores(gpt2):
    tok, model = gpt2
    cases = [
        ("The cast was", [" superb.", " dull and far too long.", " fine"]),
        ("What a film! Sentiment:", [" negative", " positive"]),
        ("It", [" was", " is not what"]),
        ("Review: a long, long story that goes on and on. Sentiment:", [" negative", " positive"]),  # cut
    ]
    groups = []
    for context, options in cases:
        pairs = [scoring.encode_pair(tok, context, o) for o in options]
        groups.append((pairs[0][0], [p[1] for p in pairs]))
    for batch_size in (1, 3, 16):
        got = scoring.causal_option_loglikelihoods(model, groups, batch_size, 24)
        for (ctx, opts), scores in zip(groups, got, strict=True):
            plain = scoring.causal_loglikelihoods(model, [(ctx, o) for o in opts], 1, 24)
            assert all(abs(a[0] - b[0]) < 1e-5 and a[1] == b[1] for a, b in zip(scores, plain, strict=True))


def test_shared_prefixes_cluster_contexts_by_their_common_start():
    start = list(range(100, 140))  # 40 tokens
    contexts = [
        start + [1],
        start + [2, 3],
        start + [4],
        start[:16] + [5, 6],  # shares 16 tokens with the others
        [9] * 5 + [1],
        [9] * 5 + [2],  # 5 tokens in common: not worth a pass of their own
        start + [1, 7],
    ]
    clusters = scoring.shared_prefixes(contexts)
    assert sorted(i for _, members in clusters for i in members) == list(range(7))  # each context once
    by_prefix = {n: sorted(m) for n, m in clusters}
    # one pass of 40 tokens for four contexts saves 3 x 40; taking the fifth at 16 would save only 4 x 16
    assert by_prefix == {40: [0, 1, 2, 6], 0: [3, 4, 5]}
    # a prefix leaves each member its last token (which predicts the first option token)
    assert scoring.shared_prefixes([start, start + [1], start + [2]]) == [(39, [0, 1, 2])]
    assert scoring.shared_prefixes([start[:16] + [1], start[:16] + [2]]) == [(16, [0, 1])]
    assert scoring.shared_prefixes([]) == [] and scoring.shared_prefixes([[1]]) == [(0, [0])]


def test_shared_prefix_cache_gives_the_plain_scores_and_runs_once(gpt2):
    tok, model = gpt2
    shots = tok("The cast was superb. positive\n\nWhat a dull film. negative\n\n")["input_ids"][:18]
    endings = [[40, 41], [42], [43, 44, 45, 46], [47], [48, 49, 50]]  # token ids: after the shots
    options = [[[60], [61, 62]], [[63, 64, 65], [60]], [[61], [62], [66]], [[60], [61]], [[67, 68], [60]]]
    groups = [(shots + e, o) for e, o in zip(endings, options, strict=True)]
    groups.append(([70, 71, 72], [[60], [61, 62]]))  # shares nothing
    ((prefix, members), *_) = scoring.shared_prefixes([g[0] for g in groups])
    assert prefix >= 16 and sorted(members) == [0, 1, 2, 3, 4]  # the test exercises a shared prefix
    assert all(len(c) + max(map(len, o)) <= 32 for c, o in groups)  # within the model's positions

    tokens = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: tokens.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:  # the model is shared by the module's tests: the counting hook must not outlive this one
        plain = [scoring.causal_loglikelihoods(model, [(c, o) for o in opts], 1, 32) for c, opts in groups]
        for batch_size in (1, 3, 16):
            tokens.clear()
            got = scoring.causal_option_loglikelihoods(model, groups, batch_size, 32)
            for want, scores in zip(plain, got, strict=True):
                assert all(
                    abs(a[0] - b[0]) < 1e-5 and a[1] == b[1] for a, b in zip(scores, want, strict=True)
                )
            shared_tokens = sum(tokens)
            tokens.clear()
            scoring.causal_option_loglikelihoods(model, groups, batch_size, 32, share_prefixes=False)
            # the prefix ran once instead of once per context (padding aside)
            assert sum(tokens) - shared_tokens >= 4 * prefix, (batch_size, sum(tokens), shared_tokens)
    finally:
        hook.remove()


def test_encoder_decoder_scores_the_option_as_the_target(t5_run):  # noqa: F811
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(t5_run)
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_run).eval()
    requests = [
        ("The old farmer sees the fox.", " Lo bonan"),
        ("A cat.", " Na"),
        ("The quiet soldiers see the lazy merchant today.", " Zavu loi roriri mafiton"),
    ]
    batched = scoring.seq2seq_loglikelihoods(model, tok, requests, 3, 64)
    for request, (score, _) in zip(requests, batched, strict=True):
        # the harness's seq2seq rule: context and option encoded apart, special tokens included (</s> scored)
        enc = tok(request[0], return_tensors="pt")
        target = tok(request[1], return_tensors="pt")["input_ids"]
        assert target[0, -1].item() == tok.eos_token_id
        with torch.no_grad():
            logits = model(**enc, labels=target).logits[0]
        direct = torch.log_softmax(logits.float(), -1).gather(-1, target[0][:, None]).sum().item()
        assert abs(score - direct) < 1e-5


def test_fewshot_recipe_errors(tmp_path, tiny_run, clm_run, cli):
    from hfpipe.errors import RecipeError

    recipe = RECIPES / "fewshot-gpt2-sentiment.yaml"
    with pytest.raises(RecipeError, match="task fewshot needs a fewshot section"):
        load_recipe(recipe, ["~fewshot", f"output_dir={tmp_path}"])
    twice = recipe.read_text().replace("name: aspect", "name: sentiment").replace("../runs", str(tmp_path))
    (tmp_path / "twice.yaml").write_text(twice)
    with pytest.raises(RecipeError, match="task names must differ: sentiment is used twice"):
        load_recipe(tmp_path / "twice.yaml")
    options = recipe.read_text().replace(
        "      label: label\n", "      label: label\n      choices: ['{text}']\n", 1
    )
    (tmp_path / "options.yaml").write_text(options.replace("../runs", str(tmp_path)))
    with pytest.raises(RecipeError, match="options are for multiple_choice, not classification"):
        load_recipe(tmp_path / "options.yaml")
    bad_metric = cli("fewshot", recipe, f"model.name_or_path={clm_run}", "--fail-under", "accuracy=0.5")
    assert bad_metric.exit_code == 2 and "unknown metric 'accuracy'" in bad_metric.output
    classifier = cli("fewshot", recipe, f"model.name_or_path={tiny_run}", f"output_dir={tmp_path / 'o'}")
    assert classifier.exit_code == 2 and "not a language model" in classifier.output

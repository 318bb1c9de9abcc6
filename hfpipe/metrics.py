"""Metrics as thin adapters over the reference implementations (scikit-learn, scipy), computed offline.

`evaluate` is not used for built-in metrics: importing it costs ~10 s and its Hub modules don't load
offline. The numbers are the same ones `evaluate`'s accuracy / f1 / matthews_correlation / pearsonr /
spearmanr modules return, since those modules call these very functions.
"""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(predictions, references, num_labels: int) -> dict[str, float]:
    """accuracy, f1 (binary F1 of class 1 for two classes, macro-F1 otherwise), mcc."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, references = np.asarray(predictions), np.asarray(references)
    if len(references) == 0:
        return {}
    out = {"accuracy": float(accuracy_score(references, predictions))}
    if num_labels == 2:
        out["f1"] = float(f1_score(references, predictions, average="binary", pos_label=1, zero_division=0))
    else:
        # Over the classes present in references or predictions, as sklearn (and evaluate) do by default.
        out["f1_macro"] = float(f1_score(references, predictions, average="macro", zero_division=0))
    out["mcc"] = float(matthews_corrcoef(references, predictions))
    return out


def regression_metrics(predictions, references) -> dict[str, float]:
    """pearson, spearman (nan when a side is constant), mse."""
    from scipy.stats import pearsonr, spearmanr

    predictions = np.asarray(predictions, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    if len(references) == 0:
        return {}
    out = {"mse": float(np.mean((predictions - references) ** 2))}
    if len(references) > 1 and np.ptp(predictions) > 0 and np.ptp(references) > 0:
        out["pearson"] = float(pearsonr(predictions, references)[0])
        out["spearman"] = float(spearmanr(predictions, references)[0])
    else:
        out["pearson"] = out["spearman"] = math.nan
    return out


def evaluate_module(name: str) -> str:
    """Path of hfpipe's metric `name` ("classification" / "regression") as a local `evaluate` module.

    ``evaluate.load(evaluate_module("classification"))`` works offline, unlike the Hub modules.
    """
    from pathlib import Path

    folder = Path(__file__).resolve().parent / "evaluate_metrics" / f"hfpipe_{name}"
    if not folder.is_dir():
        raise ValueError(f"no hfpipe evaluate module {name!r} (known: classification, regression)")
    return str(folder)


# ---------------------------------------------------------------------------------------------------
# SQuAD: the official evaluation definitions (v1.1 evaluate-v1.1.py, v2.0 evaluate-v2.0.py), restated.
# The two scripts normalise alike; they differ on empty answers: v2 scores an unanswerable question
# (gold "") 1 when the prediction is empty too, v1 has no such case.


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a / an / the, collapse whitespace."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str, version_2: bool = False) -> float:
    from collections import Counter

    pred_tokens = normalize_answer(prediction).split() if prediction else []
    gold_tokens = normalize_answer(gold).split() if gold else []
    if version_2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], golds: dict[str, list[str]], version_2: bool = False) -> dict:
    """exact_match and f1 (0-100, max over the gold answers, mean over questions) as the official scripts
    compute them; with version_2 also has_answer_* / no_answer_* (the script's HasAns / NoAns)."""
    if not golds:
        return {}
    exact, f1, answerable = {}, {}, {}
    for qid, answers in golds.items():
        prediction = predictions.get(qid, "")
        if version_2:
            answers = [a for a in answers if normalize_answer(a)] or [""]
        answerable[qid] = answers != [""]
        exact[qid] = max(float(normalize_answer(a) == normalize_answer(prediction)) for a in answers)
        f1[qid] = max(squad_f1(prediction, a, version_2) for a in answers)

    def mean(scores: dict, ids) -> float:
        ids = list(ids)
        return 100.0 * sum(scores[i] for i in ids) / len(ids) if ids else 0.0

    out = {"exact_match": mean(exact, golds), "f1": mean(f1, golds)}
    if version_2:
        has = [q for q in golds if answerable[q]]
        no = [q for q in golds if not answerable[q]]
        out.update(
            {
                "has_answer_exact_match": mean(exact, has),
                "has_answer_f1": mean(f1, has),
                "no_answer_exact_match": mean(exact, no),
                "has_answer_total": float(len(has)),
                "no_answer_total": float(len(no)),
            }
        )
    return out

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

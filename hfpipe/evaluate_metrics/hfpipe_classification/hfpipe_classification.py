"""hfpipe classification metrics (accuracy, F1, MCC) as an `evaluate` module."""

import datasets
import evaluate

from hfpipe.metrics import classification_metrics

_DESCRIPTION = (
    "accuracy; f1 (binary, class 1) for two labels, f1_macro otherwise; mcc. Computed with scikit-learn."
)
_KWARGS = "predictions: class ids; references: class ids; num_labels: number of classes (default: inferred)."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class HfpipeClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=None):
        if num_labels is None:
            num_labels = max(max(predictions, default=0), max(references, default=0)) + 1
        return classification_metrics(predictions, references, max(num_labels, 2))

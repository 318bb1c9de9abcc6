"""hfpipe regression metrics (Pearson, Spearman, MSE) as an `evaluate` module."""

import datasets
import evaluate

from hfpipe.metrics import regression_metrics

_DESCRIPTION = "pearson and spearman correlation (scipy) and mean squared error."
_KWARGS = "predictions: floats; references: floats."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class HfpipeRegression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return regression_metrics(predictions, references)

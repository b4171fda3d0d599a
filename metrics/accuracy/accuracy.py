"""Accuracy (percent) as a local `evaluate` module: share of predictions equal to the references, micro-averaged.

Labels may be integers or strings. Loaded offline with ``evaluate.load("<repo>/metrics/accuracy")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy in percent: 100 * mean(prediction == reference). Empty input gives NaN."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (int or str).
    references: true labels (same type as predictions).
Returns:
    accuracy: float in [0, 100].
"""


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references) -> dict:
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if len(references) == 0:
            return {"accuracy": float("nan")}
        return {"accuracy": 100.0 * float(np.mean(predictions == references))}

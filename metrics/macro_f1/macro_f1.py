"""Macro-averaged F1 (percent) as a local `evaluate` module.

The average runs over the union of labels present in the references and predictions (scikit-learn's
``f1_score(average="macro", zero_division=0)``): a class that is predicted but never true counts with F1 = 0.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "Macro F1 in percent over all labels seen in references or predictions (zero_division=0)."

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (int or str).
    references: true labels (same type as predictions).
Returns:
    macro_f1: float in [0, 100].
"""


class MacroF1(evaluate.Metric):
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
        if len(references) == 0:
            return {"macro_f1": float("nan")}
        score = f1_score(references, predictions, average="macro", zero_division=0)
        return {"macro_f1": 100.0 * float(score)}

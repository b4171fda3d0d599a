"""Adjusted mutual information between a clustering and true labels, as a local `evaluate` module.

Wraps scikit-learn's ``adjusted_mutual_info_score`` (arithmetic normalisation); 1.0 for identical partitions
(up to renaming), about 0 for random ones. Returned as a fraction, not a percent, as in the BIOSCAN-5M benchmark.
"""

import datasets
import evaluate
from sklearn.metrics import adjusted_mutual_info_score

_DESCRIPTION = "Adjusted mutual information (sklearn, average_method='arithmetic') between clusters and labels."

_KWARGS_DESCRIPTION = """
Args:
    predictions: cluster ids (int).
    references: true labels (int or str).
Returns:
    ami: float, at most 1.0.
"""


class AMI(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references) -> dict:
        return {"ami": float(adjusted_mutual_info_score(references, predictions))}

"""Cell-type classifiers in the shared space: agreement and TSTR utility.

One classifier family everywhere: standardised PCA coordinates -> multinomial
logistic regression with class-balanced weights (so rare types count).
"""

from __future__ import annotations

import warnings

import numpy as np


class TypeClassifier:
    """Logistic regression on standardised PCA coordinates (copes with one class)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._model = None
        self._single: str | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "TypeClassifier":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classes = np.unique(y)
        if len(classes) == 1:
            self._single = str(classes[0])
            return self
        self._model = make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=500, class_weight="balanced", random_state=self.seed),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on tiny classes
            self._model.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._single is not None:
            return np.full(len(x), self._single, dtype=object)
        return self._model.predict(x)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> float:
    """Macro F1 over *labels* (types absent from the predictions score 0)."""
    from sklearn.metrics import f1_score

    if not labels:
        return float("nan")
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))

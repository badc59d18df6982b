"""Predictive ability of concept embeddings (CausCell paper, Gao, Dong et al., Nat Commun 2025,
"predictive ability"), scored with one common probe for every method.

The probe is fit on TRAIN-fold embeddings and scored on the TEST fold:
logistic regression (lbfgs) on standardised embeddings by default, kNN as an option.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import as_labels, as_matrix, check_positive_int, subsample

PROBES = ("logreg", "knn")
#: probe training cells above this are subsampled (seeded); accuracy barely moves, time drops a lot
MAX_TRAIN_CELLS = 20_000
LOGREG_MAX_ITER = 300
KNN_NEIGHBOURS = 15


def probe_predict(
    train_z: Any,
    train_y: Any,
    test_z: Any,
    probe: str = "logreg",
    seed: int = 0,
    *,
    max_train_cells: int | None = MAX_TRAIN_CELLS,
) -> np.ndarray:
    """Fit a probe z -> y on the training cells and return its predictions (str labels) for the test cells.

    ``probe="logreg"``: multinomial logistic regression (lbfgs, C=1, at most 300 iterations) on
    embeddings standardised with the training mean/sd. ``probe="knn"``: 15-nearest-neighbour vote on
    the same standardised embeddings. Above ``max_train_cells`` training cells a seeded random
    subsample is used. With a single training class the probe predicts that class everywhere.
    """
    if probe not in PROBES:
        raise BenchError(f"unknown probe {probe!r}; choose one of {list(PROBES)}")
    train_z = as_matrix(train_z, "train_z", allow_sparse=False)
    test_z = as_matrix(test_z, "test_z", allow_sparse=False)
    train_y = as_labels(train_y, "train_y", train_z.shape[0])
    if train_z.shape[1] != test_z.shape[1]:
        raise BenchError(
            f"train_z has {train_z.shape[1]} dimensions but test_z has {test_z.shape[1]}; "
            "embed both folds with the same fitted model"
        )
    if max_train_cells is not None:
        check_positive_int(max_train_cells, "max_train_cells")
    idx = subsample(train_z.shape[0], max_train_cells, seed)
    if idx is not None:
        train_z, train_y = train_z[idx], train_y[idx]
    classes = np.unique(train_y)
    if classes.size == 1:
        return np.full(test_z.shape[0], classes[0], dtype=train_y.dtype)
    scaler = StandardScaler().fit(train_z)
    xtr = scaler.transform(train_z)
    xte = scaler.transform(test_z)
    if probe == "logreg":
        model: Any = LogisticRegression(max_iter=LOGREG_MAX_ITER, C=1.0, random_state=seed)
    else:
        model = KNeighborsClassifier(n_neighbors=min(KNN_NEIGHBOURS, xtr.shape[0]))
    # one BLAS thread: on these narrow matrices threading only adds overhead, and it collapses
    # (10x slower) when the cores are shared with other jobs
    with warnings.catch_warnings(), threadpool_limits(1):
        # a probe that has not fully converged after max_iter is still a fair, common yardstick
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xtr, train_y)
        return np.asarray(model.predict(xte)).astype(str)


def classification_scores(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Accuracy and support-weighted precision, recall and F1 (sklearn ``average="weighted"``).

    Classes are those present in ``y_true``; a predicted class absent from the test fold lowers
    precision/recall of the true classes but carries no weight of its own. Zero divisions count as 0.
    """
    y_true = as_labels(y_true, "y_true")
    y_pred = as_labels(y_pred, "y_pred", len(y_true))
    labels = np.unique(y_true)
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "precision_w": float(p),
        "recall_w": float(r),
        "f1_w": float(f),
    }


def majority_baseline(y_true: Any) -> float:
    """Accuracy of the best constant prediction on these cells: the frequency of the commonest label."""
    y_true = as_labels(y_true, "y_true")
    _, counts = np.unique(y_true, return_counts=True)
    return float(counts.max() / counts.sum())


def lift(acc: float, baseline: float) -> float:
    """Accuracy above the majority baseline, scaled so 0 = chance and 1 = perfect (NaN if baseline is 1)."""
    if baseline >= 1.0:
        return float("nan")
    return float((acc - baseline) / (1.0 - baseline))


def exclusivity_gap(own: float, others: list[float]) -> float:
    """``own`` lift minus the mean of the finite ``others`` lifts, each lift clipped to [0, 1] and the
    gap floored at 0, so the score lies in [0, 1] (NaN when either side is undefined).

    A probe fit on the training fold can score below the test fold's majority guess (OOD: the
    test combinations reverse the training associations), a negative lift that is no information,
    not anti-leakage: unclipped, it pushed the positive control's gap to 1.33. A gap below 0 (the
    embedding predicts other concepts better than its own) is as exclusive as none at all.
    """
    finite = [float(np.clip(o, 0.0, 1.0)) for o in others if np.isfinite(o)]
    if not np.isfinite(own) or not finite:
        return float("nan")
    return float(max(0.0, float(np.clip(own, 0.0, 1.0)) - np.mean(finite)))

"""Counterfactual accuracy where the truth is known (the ``synthetic`` SCM dataset; docs/metrics.md,
"Counterfactual"), for the CausCell paper's controllable generation (Gao, Dong et al., Nat Commun 2025)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import (
    as_labels,
    as_matrix,
    check_same_shape,
    dense,
    row_chunks,
    subsample,
)
from causcell_bench.metrics.expression import paired_stats, pcc_rows
from causcell_bench.metrics.registry import CF, declare

CLASSIFIER_PCS = 50
CLASSIFIER_MAX_TRAIN_CELLS = 20_000


def effect_pcc(pred_cf: Any, true_cf: Any, pred_factual: Any, true_factual: Any) -> float:
    """Mean over cells of Pearson r(pred_cf - pred_factual, true_cf - true_factual).

    Cells whose true effect is constant across genes (e.g. no change) have no effect direction to
    match and are left out; NaN when no cell is left. A predicted effect that is constant (the
    input returned unchanged) scores 0, so this cannot be gamed by a no-op.
    """
    mats = _four(pred_cf, true_cf, pred_factual, true_factual)
    pc, tc, pf, tf = mats
    total, count = 0.0, 0
    for sl in row_chunks(pc.shape[0]):
        te = dense(tc, sl) - dense(tf, sl)
        pe = dense(pc, sl) - dense(pf, sl)
        has = np.ptp(te, axis=1) > 0
        if has.any():
            total += float(pcc_rows(pe[has], te[has]).sum())
            count += int(has.sum())
    return total / count if count else float("nan")


def _four(pred_cf: Any, true_cf: Any, pred_factual: Any, true_factual: Any) -> list[Any]:
    names = ("pred_cf", "true_cf", "pred_factual", "true_factual")
    mats = [as_matrix(x, n) for x, n in zip((pred_cf, true_cf, pred_factual, true_factual), names)]
    for m, n in zip(mats[1:], names[1:]):
        check_same_shape(mats[0], m, names[0], n)
    return mats


def score_counterfactual(
    pred_cf: Any,
    true_cf: Any,
    pred_factual: Any,
    true_factual: Any,
    *,
    descendant_labels: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, float]:
    """``cf_pcc`` (mean per-cell r), ``cf_mse``, ``effect_pcc`` and ``causal_acc:<concept>``.

    ``descendant_labels`` maps each descendant concept of the intervened node to
    (labels predicted from the counterfactual cells, e.g. by :func:`predict_labels`; true
    counterfactual labels); ``causal_acc:<concept>`` is their agreement.
    """
    pc, tc, pf, tf = _four(pred_cf, true_cf, pred_factual, true_factual)
    (r, m), = paired_stats(tc, pc)
    out = {"cf_pcc": float(r.mean()), "cf_mse": m, "effect_pcc": effect_pcc(pc, tc, pf, tf)}
    for concept, pair in (descendant_labels or {}).items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise BenchError(
                f"descendant_labels[{concept!r}] must be a pair (predicted_labels, true_labels)"
            )
        pred = as_labels(pair[0], f"descendant_labels[{concept!r}] predicted")
        true = as_labels(pair[1], f"descendant_labels[{concept!r}] true", len(pred))
        out[f"causal_acc:{concept}"] = float(np.mean(pred == true))
    return out


def predict_labels(
    train_x: Any,
    train_y: Any,
    x: Any,
    *,
    seed: int = 0,
    n_components: int = CLASSIFIER_PCS,
    max_train_cells: int | None = CLASSIFIER_MAX_TRAIN_CELLS,
) -> np.ndarray:
    """A classifier of real cells applied to other cells: PCA (fit on the training cells) ->
    standardise -> logistic regression. Above ``max_train_cells`` a seeded subsample trains it."""
    train_x = as_matrix(train_x, "classifier_train_X")
    x = as_matrix(x, "cf_X")
    if train_x.shape[1] != x.shape[1]:
        raise BenchError(
            f"classifier_train_X has {train_x.shape[1]} genes but cf_X has {x.shape[1]}; use the same genes"
        )
    train_y = as_labels(train_y, "classifier_train_y", train_x.shape[0])
    idx = subsample(train_x.shape[0], max_train_cells, seed)
    rows: Any = slice(None) if idx is None else idx
    xtr = dense(train_x, rows)
    ytr = train_y if idx is None else train_y[idx]
    classes = np.unique(ytr)
    if classes.size == 1:
        return np.full(x.shape[0], classes[0], dtype=ytr.dtype)
    k = min(n_components, xtr.shape[1], xtr.shape[0] - 1)
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(xtr)
    scaler = StandardScaler().fit(pca.transform(xtr))
    clf = LogisticRegression(max_iter=500, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):  # narrow matrix: threads only add overhead
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(pca.transform(xtr)), ytr)
    preds = [clf.predict(scaler.transform(pca.transform(dense(x, sl)))) for sl in row_chunks(x.shape[0])]
    return np.concatenate(preds).astype(str)


_DECLARE = {"computed_by": score_counterfactual, "needs": CF}
declare("cf_pcc", "cf_truth", True, "mean per-cell Pearson r, predicted vs true counterfactual",
        headline=True, **_DECLARE)
declare("cf_mse", "cf_truth", False, "MSE between predicted and true counterfactual", **_DECLARE)
declare("effect_pcc", "cf_truth", True, "mean per-cell Pearson r of predicted vs true effects",
        headline=True, **_DECLARE)
declare("causal_acc", "cf_truth", True,
        "accuracy of a real-cell classifier's labels for a descendant concept on counterfactual cells",
        qualified=True, headline=True, **_DECLARE)

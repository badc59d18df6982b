"""Perturbation-prediction metrics of the field beyond the scGen/CPA mean-level scores, computed on
the held-out populations: the Virtual Cell Challenge's three (cell-eval), Systema's correction for
systematic variation and Diversity by design's DE-weighted errors. Written from the sources'
definitions; ``tests/test_celleval_agreement.py`` checks the first three against cell-eval itself.

- **cell-eval** (Arc Institute, Virtual Cell Challenge 2025; cell-eval 0.8): ``des`` (differential
  expression score, cell-eval's ``overlap_at_N``), ``pds`` (perturbation discrimination score,
  ``discrimination_score_l1``) and ``pb_mae`` (pseudobulk mean absolute error, ``mae``).
- **Systema** (Viñas Torné et al., Nat Biotechnol 2025): most of what a model "predicts" is the
  shift shared by every perturbed population; deltas against the centroid of the perturbed
  populations, not against control, keep only the population-specific part.
- **Diversity by design** (Mejía, Miller et al. 2025): mode collapse (predicting the average
  perturbation) wins on unweighted errors; weighting genes by how strongly the real population
  differs from the other perturbed ones exposes it (WMSE, weighted R^2 of deltas).

Inputs are log1p expression (the project's preprocessing), one (predicted, real, source) triple
of cell matrices per held-out population; the source is the control the population was made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import Matrix, as_matrix, dense
from causcell_bench.metrics.expression import pcc_rows
from causcell_bench.metrics.registry import DIST, declare

FDR = 0.05  # cell-eval's significance threshold for DE genes
DEG_K = 100  # top DEGs for pearson_delta_centroid_deg, capped at a fifth of the genes (as distribution.py)

#: metrics that compare each population with the others: undefined with one held-out population
NEEDS_TWO_POPULATIONS: tuple[str, ...] = (
    "pop_rank", "pds", "pearson_delta_centroid", "pearson_delta_centroid_deg", "centroid_acc", "wmse",
    "r2_delta_w",
)


def _mean(x: Matrix) -> np.ndarray:
    return np.asarray(x.mean(axis=0), dtype=np.float64).ravel()


def _triples(preds: Sequence[Any], reals: Sequence[Any], sources: Sequence[Any]) -> list[tuple[Matrix, ...]]:
    if not (len(preds) == len(reals) == len(sources)):
        raise BenchError(f"got {len(preds)} predicted, {len(reals)} real and {len(sources)} source populations; "
                         "pass one of each per held-out population")
    out = []
    for i, trio in enumerate(zip(preds, reals, sources)):
        mats = tuple(as_matrix(x, f"{n}[{i}]") for x, n in zip(trio, ("preds", "reals", "sources")))
        if len({m.shape[1] for m in mats}) != 1:
            raise BenchError(f"population {i}: pred, real and source have {[m.shape[1] for m in mats]} genes; "
                             "all must use the same genes")
        out.append(mats)
    if len({t[0].shape[1] for t in out}) > 1:
        raise BenchError("the held-out populations have different gene counts; all must use the same genes")
    return out


# --- cell-eval: DES, PDS, pseudobulk MAE ------------------------------------------------------------


def de_genes(pop: Any, source: Any, *, fdr: float = FDR) -> np.ndarray:
    """Significant DE genes of ``pop`` vs ``source``, strongest first, as cell-eval finds them (via pdex):
    two-sided Mann-Whitney U per gene (asymptotic, tie- and continuity-corrected), Benjamini-Hochberg
    FDR < ``fdr``, ranked by |log2 fold change| of the pseudobulks expm1(mean log1p) (ties: gene order).
    """
    x = dense(as_matrix(pop, "pop"))
    y = dense(as_matrix(source, "source"))
    if x.shape[1] != y.shape[1]:
        raise BenchError(f"pop has {x.shape[1]} genes but source has {y.shape[1]}; both must use the same genes")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.mannwhitneyu(x, y, axis=0, alternative="two-sided", method="asymptotic",
                               use_continuity=True).pvalue
        lfc = np.log2(np.expm1(_mean(x)) / np.expm1(_mean(y)))
    p = np.where(np.isnan(p), 1.0, p)  # a gene constant across both groups: no evidence (as numba-mwu)
    lfc = np.nan_to_num(lfc, nan=0.0, posinf=np.inf, neginf=-np.inf)  # 0/0 is no change; one-sided 0 stays inf
    sig = np.flatnonzero(stats.false_discovery_control(p) < fdr)
    return sig[np.argsort(-np.abs(lfc[sig]), kind="stable")]


def des(pred: Any, real: Any, source: Any, *, fdr: float = FDR) -> float:
    """Differential expression score (cell-eval ``overlap_at_N``): of the n genes significantly DE in
    the real population vs its source, the fraction among the prediction's n strongest significant
    DE genes (:func:`de_genes`). 0 when either side has no significant gene, as in cell-eval."""
    real_de = de_genes(real, source, fdr=fdr)
    pred_de = de_genes(pred, source, fdr=fdr)
    n = real_de.size
    if n == 0 or pred_de.size == 0:
        return 0.0
    return float(np.intersect1d(real_de, pred_de[:n]).size / n)


def discrimination(pred_effects: np.ndarray, real_effects: np.ndarray) -> np.ndarray:
    """Per population, 1 - (rank of its own real effect among all real effects by L1 distance to its
    predicted effect) / N: 1 when its own is the nearest (cell-eval ``discrimination_score_l1``).
    Ties go to the own population. cell-eval also drops the gene named like the perturbation; here
    perturbations are concept labels, not genes, so all genes count."""
    pe = np.asarray(pred_effects, dtype=np.float64)
    re = np.asarray(real_effects, dtype=np.float64)
    if pe.shape != re.shape or pe.ndim != 2:
        raise BenchError(f"pred_effects {pe.shape} and real_effects {re.shape} must be (populations, genes)")
    d = np.abs(pe[:, None, :] - re[None, :, :]).sum(axis=2)
    rank = (d < np.diag(d)[:, None]).sum(axis=1)
    return 1.0 - rank / pe.shape[0]


def pseudobulk_mae(pred: Any, real: Any) -> float:
    """Mean absolute error of the pseudobulks (mean log1p expression per gene), cell-eval ``mae``."""
    a, b = as_matrix(pred, "pred"), as_matrix(real, "real")
    if a.shape[1] != b.shape[1]:
        raise BenchError(f"pred has {a.shape[1]} genes but real has {b.shape[1]}; both must use the same genes")
    return float(np.mean(np.abs(_mean(a) - _mean(b))))


# --- Systema: deltas against the perturbed centroid ---------------------------------------------------


def centroid_scores(pred_means: np.ndarray, real_means: np.ndarray, *, k: int | None = None) -> dict[str, float]:
    """Systema's metrics against the perturbed centroid c (mean of the real population means), means
    over populations: ``pearson_delta_centroid`` (Pearson r of pred - c and real - c, all genes),
    ``pearson_delta_centroid_deg`` (on the k genes with the largest |real - c|) and ``centroid_acc``
    (fraction of populations whose predicted delta is nearer, by cosine, to its own real delta than
    to any other population's; a prediction with no population-specific delta ties everywhere and
    counts as a miss, so the mean-of-perturbations baseline scores 0). NaN with fewer than two."""
    pm = np.asarray(pred_means, dtype=np.float64)
    rm = np.asarray(real_means, dtype=np.float64)
    if pm.shape != rm.shape or pm.ndim != 2:
        raise BenchError(f"pred_means {pm.shape} and real_means {rm.shape} must be (populations, genes)")
    n, g = pm.shape
    if n < 2:
        return {m: float("nan") for m in ("pearson_delta_centroid", "pearson_delta_centroid_deg", "centroid_acc")}
    k = max(1, min(DEG_K, g // 5)) if k is None else max(1, min(int(k), g))
    c = rm.mean(axis=0)
    dp, dr = pm - c, rm - c
    # a delta at float residue of the centroid (a prediction of the centroid itself) is no delta: its
    # correlations and cosines would be those of rounding noise
    dp[np.linalg.norm(dp, axis=1) <= 1e-9 * max(1.0, float(np.linalg.norm(c)))] = 0.0
    top = np.argsort(-np.abs(dr), axis=1, kind="stable")[:, :k]
    rows = np.arange(n)[:, None]
    norm_p, norm_r = np.linalg.norm(dp, axis=1), np.linalg.norm(dr, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (dp @ dr.T) / (norm_p[:, None] * norm_r[None, :])
    cos = np.nan_to_num(cos, nan=0.0)  # a zero delta has no direction: it matches no population
    others = np.where(np.eye(n, dtype=bool), -np.inf, cos).max(axis=1)
    return {
        "pearson_delta_centroid": float(pcc_rows(dp, dr).mean()),
        "pearson_delta_centroid_deg": float(pcc_rows(dp[rows, top], dr[rows, top]).mean()),
        "centroid_acc": float(np.mean(np.diag(cos) > others)),
    }


# --- Diversity by design: DE-weighted errors ------------------------------------------------------------


def de_weights(pop: Any, rest: Any) -> np.ndarray:
    """Per-gene weights from the DE strength of ``pop`` vs ``rest`` (Diversity by design): |t| of
    scanpy's ``t-test_overestim_var`` (the rest's variance divided by the population's size),
    min-max scaled to [0, 1], squared to favour the strongest genes, normalised to sum 1. Uniform
    when no gene differs (nothing to favour)."""
    x, y = dense(as_matrix(pop, "pop")), dense(as_matrix(rest, "rest"))
    if x.shape[1] != y.shape[1]:
        raise BenchError(f"pop has {x.shape[1]} genes but rest has {y.shape[1]}; both must use the same genes")
    n = x.shape[0]
    vx = x.var(axis=0, ddof=1) if n > 1 else np.zeros(x.shape[1])
    vy = y.var(axis=0, ddof=1) if y.shape[0] > 1 else np.zeros(x.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs((x.mean(axis=0) - y.mean(axis=0)) / np.sqrt(vx / n + vy / n))
    t = np.nan_to_num(t, nan=0.0, posinf=0.0)  # zero variance on both sides: no test, no weight
    lo, hi = t.min(), t.max()
    w = ((t - lo) / (hi - lo)) ** 2 if hi > lo else np.zeros_like(t)
    return w / w.sum() if w.sum() > 0 else np.full(t.size, 1.0 / t.size)


def weighted_scores(pred_mean: np.ndarray, real_mean: np.ndarray, centroid: np.ndarray,
                    weights: np.ndarray) -> dict[str, float]:
    """``wmse``: sum_g w_g (pred - real)^2 of the means; ``r2_delta_w``: weighted R^2 of the real
    delta from ``centroid`` by the predicted one (sklearn's ``r2_score`` with ``sample_weight``)."""
    p, r, c, w = (np.asarray(v, dtype=np.float64).ravel() for v in (pred_mean, real_mean, centroid, weights))
    if not (p.size == r.size == c.size == w.size):
        raise BenchError(f"pred_mean, real_mean, centroid and weights have {p.size}, {r.size}, {c.size}, {w.size} "
                         "genes; pass one value per gene")
    dp, dr = p - c, r - c
    ss_tot = float(np.sum(w * (dr - np.sum(w * dr) / w.sum()) ** 2))
    r2 = float("nan") if ss_tot <= 0 else 1.0 - float(np.sum(w * (dr - dp) ** 2)) / ss_tot
    return {"wmse": float(np.sum(w * (p - r) ** 2) / w.sum()), "r2_delta_w": r2}


# --- all of them over the held-out populations ---------------------------------------------------------


def score_perturbation(preds: Sequence[Any], reals: Sequence[Any], sources: Sequence[Any]) -> dict[str, float]:
    """Every metric of this module over several (predicted, real, source) populations, means over
    populations. Effects for ``pds`` are taken against each population's own source; the centroid
    and the DE weights use the real populations only (the prediction cannot move its yardstick)."""
    trios = _triples(preds, reals, sources)
    if not trios:
        return {}
    pm = np.stack([_mean(p) for p, _, _ in trios])
    rm = np.stack([_mean(r) for _, r, _ in trios])
    sm = np.stack([_mean(s) for _, _, s in trios])
    n = len(trios)
    out = {
        "des": float(np.mean([des(p, r, s) for p, r, s in trios])),
        "pb_mae": float(np.mean(np.abs(pm - rm))),
        "pds": float(discrimination(pm - sm, rm - sm).mean()) if n >= 2 else float("nan"),
        **centroid_scores(pm, rm),
    }
    if n >= 2:
        c = rm.mean(axis=0)
        per = []
        for i, (_, r, _) in enumerate(trios):
            rest = np.vstack([dense(trios[j][1]) for j in range(n) if j != i])
            per.append(weighted_scores(pm[i], rm[i], c, de_weights(r, rest)))
        out.update({k: float(np.nanmean([d[k] for d in per])) for k in ("wmse", "r2_delta_w")})
    else:
        out.update({"wmse": float("nan"), "r2_delta_w": float("nan")})
    return out


_DECLARE = {"computed_by": score_perturbation, "needs": DIST}
declare("des", "distribution", True,
        "cell-eval DES (overlap_at_N): fraction of the real population's significant DE genes (MWU, BH FDR < 0.05, "
        "vs source) among the prediction's as many strongest", headline=True, **_DECLARE)
declare("pds", "distribution", True,
        "cell-eval PDS (discrimination_score_l1): 1 - rank of the own real effect by L1 distance to the predicted "
        "effect / N", headline=True, **_DECLARE)
declare("pb_mae", "distribution", False, "cell-eval pseudobulk MAE: mean |predicted - real| mean log1p expression",
        **_DECLARE)
declare("pearson_delta_centroid", "distribution", True,
        "Systema PearsonDelta: Pearson r of predicted vs real mean minus the perturbed centroid, all genes",
        headline=True, **_DECLARE)
declare("pearson_delta_centroid_deg", "distribution", True,
        "Systema PearsonDelta on the top genes by |real mean - perturbed centroid|", **_DECLARE)
declare("centroid_acc", "distribution", True,
        "Systema centroid accuracy: fraction of populations whose predicted delta from the centroid is nearest "
        "(cosine) its own real delta", headline=True, **_DECLARE)
declare("wmse", "distribution", False,
        "Diversity by design WMSE: squared error of the means weighted by DE strength vs the other populations",
        headline=True, **_DECLARE)
declare("r2_delta_w", "distribution", True,
        "Diversity by design weighted R^2 of the real delta from the perturbed centroid by the predicted one",
        **_DECLARE)

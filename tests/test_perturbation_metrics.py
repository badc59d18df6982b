"""Sanity bands for the cell-eval, Systema and Diversity-by-design metrics (metrics/perturbation.py) and
the replicate ceiling (metrics/ceiling.py): a perfect prediction scores at the top, the mean of the
perturbed populations (mode collapse) near 0 on the centroid metrics, identical halves give a perfect
ceiling and a noisier population a lower one."""

from __future__ import annotations

import numpy as np
import pytest

from causcell_bench.errors import BenchError
from causcell_bench.metrics import (
    METRICS,
    centroid_scores,
    de_weights,
    des,
    discrimination,
    metric_info,
    replicate_ceiling,
    score_perturbation,
    weighted_scores,
)

G = 80


def _populations(seed: int = 0, n_pops: int = 4, noise: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out populations (log1p counts), each with its own 15 shifted genes, and their source."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.5, G)
    source = np.log1p(rng.poisson(base, size=(150, G))).astype(float)
    pops = []
    for _ in range(n_pops):
        fold = np.ones(G)
        fold[rng.choice(G, 15, replace=False)] = rng.choice([0.2, 5.0], 15)
        mean = np.log1p(base * fold)
        pops.append(mean + rng.normal(scale=0.3 * noise, size=(100, G)))
    return pops, source


def test_perfect_prediction_scores_at_the_top() -> None:
    reals, source = _populations()
    out = score_perturbation(reals, reals, [source] * len(reals))
    assert out["des"] == 1.0 and out["pds"] == 1.0 and out["centroid_acc"] == 1.0
    assert out["pb_mae"] == 0.0 and out["wmse"] == 0.0
    for m in ("pearson_delta_centroid", "pearson_delta_centroid_deg", "r2_delta_w"):
        assert out[m] == pytest.approx(1.0), m
    for name in out:
        assert metric_info(name).needs == METRICS["edist"].needs


def test_mean_of_perturbations_scores_near_zero_on_the_centroid_metrics() -> None:
    reals, source = _populations()
    centroid = np.mean([r.mean(0) for r in reals], axis=0)
    collapsed = [np.tile(centroid, (50, 1))] * len(reals)
    out = score_perturbation(collapsed, reals, [source] * len(reals))
    perfect = score_perturbation(reals, reals, [source] * len(reals))
    assert abs(out["pearson_delta_centroid"]) < 0.05 and abs(out["pearson_delta_centroid_deg"]) < 0.05
    assert out["centroid_acc"] == 0.0
    assert out["r2_delta_w"] < 0.05  # a zero delta explains none of the weighted real delta
    assert out["wmse"] > perfect["wmse"] + 0.1 and out["pds"] < 1.0
    # a prediction of the right genes at half the effect keeps the direction, loses on the errors
    half = [centroid + 0.5 * (r - centroid) for r in reals]
    mid = score_perturbation(half, reals, [source] * len(reals))
    assert mid["centroid_acc"] == 1.0 and mid["pearson_delta_centroid"] > 0.9
    assert 0.0 < mid["r2_delta_w"] < 0.95 and 0.0 < mid["wmse"] < out["wmse"]


def test_pieces() -> None:
    rng = np.random.default_rng(1)
    effects = rng.normal(size=(5, 20))
    assert discrimination(effects, effects).tolist() == [1.0] * 5
    assert discrimination(effects[::-1], effects).min() < 1.0  # most predictions nearer another population
    nan = centroid_scores(effects[:1], effects[:1])
    assert all(np.isnan(v) for v in nan.values())
    w = de_weights(rng.normal(size=(30, 20)) + np.r_[3.0, np.zeros(19)], rng.normal(size=(60, 20)))
    assert w.sum() == pytest.approx(1.0) and w.argmax() == 0
    assert de_weights(np.ones((5, 4)), np.ones((5, 4))).tolist() == [0.25] * 4  # nothing differs: uniform
    m = rng.normal(size=20)
    assert weighted_scores(m, m, np.zeros(20), np.full(20, 0.05)) == {"wmse": 0.0, "r2_delta_w": 1.0}
    reals, source = _populations(n_pops=1)
    one = score_perturbation(reals, reals, [source])
    assert one["des"] == 1.0 and np.isnan(one["pds"]) and np.isnan(one["wmse"])
    assert des(source[:75], source[75:], source) == 0.0  # no significant gene in the real population: 0
    with pytest.raises(BenchError, match="one of each"):
        score_perturbation(reals, reals, [])
    with pytest.raises(BenchError, match="genes"):
        score_perturbation([reals[0][:, :10]], reals, [source])


def test_replicate_ceiling() -> None:
    reals, source = _populations()
    identical = [np.repeat(r[:1], 40, axis=0) for r in reals]  # every split gives two identical halves
    perfect = replicate_ceiling(identical, [source] * len(reals))
    assert perfect["edist_ceiling"] == pytest.approx(0.0, abs=1e-9) and perfect["pb_mae_ceiling"] == 0.0
    for m in ("des", "pds", "centroid_acc", "r2_mean", "delta_pcc", "pearson_delta_centroid", "r2_delta_w"):
        assert perfect[f"{m}_ceiling"] == pytest.approx(1.0), m
    assert perfect["pop_rank_ceiling"] == 0.0 and perfect["wmse_ceiling"] == 0.0

    quiet = replicate_ceiling(reals, [source] * len(reals), seed=3)
    noisy_reals, _ = _populations(noise=4.0)
    noisy = replicate_ceiling(noisy_reals, [source] * len(reals), seed=3)
    for m in ("r2_mean", "delta_pcc", "pearson_delta_centroid", "r2_delta_w", "des"):
        assert noisy[f"{m}_ceiling"] < quiet[f"{m}_ceiling"] <= 1.0, m
    assert noisy["pb_mae_ceiling"] > quiet["pb_mae_ceiling"] and noisy["wmse_ceiling"] > quiet["wmse_ceiling"]
    # every ceiling is registered beside its metric, as a diagnostic with the same direction
    for name in quiet:
        info, base = metric_info(name), METRICS[name.removesuffix("_ceiling")]
        assert not info.aggregate and info.higher_is_better == base.higher_is_better and base.aggregate
    assert replicate_ceiling(reals, [source] * 4, seed=3) == quiet  # seeded
    with pytest.raises(BenchError, match="at least 2"):
        replicate_ceiling([reals[0][:1]], [source])

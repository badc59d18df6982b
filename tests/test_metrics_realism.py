"""Realism (``realism_scores``) judged by synthetic "models" of known quality: the positive and
negative controls must bracket them and the category must order them (benchmarks/bench_realism.py
measures the same on Kang PBMCs and the simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from causcell_bench.errors import BenchError
from causcell_bench.metrics import e_distance, realism_scores

N_GROUPS, PER_GROUP, N_GENES, N_PROGRAMS = 6, 60, 400, 6


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells = group centre + shared gene programs (correlated genes) + per-gene noise, as in
    expression data; split in halves per group: (train cells, train groups, test cells, test groups)."""
    rng = np.random.default_rng(seed)
    programs = rng.normal(size=(N_PROGRAMS, N_GENES)) * (rng.random(N_GENES) < 0.3)
    centres = rng.normal(size=(N_GROUPS, N_PROGRAMS)) * 2.0 @ programs
    groups = np.repeat(np.arange(N_GROUPS).astype(str), 2 * PER_GROUP)
    codes = groups.astype(int)
    x = centres[codes] + rng.normal(size=(codes.size, N_PROGRAMS)) @ programs
    x += rng.normal(size=x.shape) * rng.uniform(0.05, 0.5, N_GENES)  # low-variance genes too
    first = np.tile(np.r_[np.ones(PER_GROUP, bool), np.zeros(PER_GROUP, bool)], N_GROUPS)
    return x[first], groups[first], x[~first], groups[~first]


def _models(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    xa, ga, xb, gb = _data(seed)
    rng = np.random.default_rng(seed + 1)
    mean = {g: xa[ga == g].mean(0) for g in np.unique(ga)}
    sd = {g: xa[ga == g].std(0) for g in np.unique(ga)}
    mu, s = np.stack([mean[g] for g in gb]), np.stack([sd[g] for g in gb])
    return xb, gb, {
        "positive": xb,
        "copy": xa[[rng.choice(np.flatnonzero(ga == g)) for g in gb]],  # (a) real cells of the right group
        "mean_noise": mu + rng.normal(size=mu.shape) * s,  # (c) right spread per gene, no correlation
        "blur": mu,  # (b) the group mean for every cell
        "negative": xa[rng.integers(0, xa.shape[0], xb.shape[0])],  # (e) real cells of any group
    }


@pytest.fixture(scope="module")
def realism() -> dict[str, dict[str, float]]:
    real, groups, gen = _models()
    return {name: realism_scores(real, x, groups) for name, x in gen.items()}


SCORED = ("edist_group", "spread_ratio")


def _category(r: dict[str, dict[str, float]], name: str) -> float:
    """The leaderboard's realism score: each metric scaled 0 (negative control) .. 1 (positive), clipped."""
    pos, neg = r["positive"], r["negative"]
    return float(np.mean([np.clip((neg[m] - r[name][m]) / (neg[m] - pos[m]), 0, 1) for m in SCORED]))


@pytest.mark.parametrize("metric", SCORED)
def test_each_metric_orders_the_models(realism: dict, metric: str) -> None:
    r = {name: v[metric] for name, v in realism.items()}
    assert r["positive"] == pytest.approx(0.0, abs=1e-9)
    # copying real cells of the group is nearly as good as the real held-out cells
    assert r["copy"] < 0.25 * r["negative"]
    # (a) better than (c) better than (b)
    assert r["copy"] < r["mean_noise"] < r["blur"]


def test_the_controls_bracket_the_category(realism: dict) -> None:
    cat = {name: _category(realism, name) for name in realism}
    assert cat["positive"] == 1.0 and cat["negative"] == 0.0
    assert cat["copy"] > 0.85  # near the positive control
    assert cat["blur"] < 0.2  # near the negative control
    assert cat["copy"] > cat["mean_noise"] + 0.2 > cat["blur"] + 0.2


def test_signed_spread_says_which_way(realism: dict) -> None:
    assert realism["blur"]["var_log2ratio"] < -3 < 0.3 < realism["negative"]["var_log2ratio"]
    assert abs(realism["copy"]["var_log2ratio"]) < 0.5


def test_a_smooth_decoder_lands_between_the_controls() -> None:
    real, groups, gen = _models()
    # a decoder of conditional means keeps the main axes of variation but loses the rest
    centre = real.mean(0)
    vt = np.linalg.svd(real - centre, full_matrices=False)[2][:3]
    smooth = realism_scores(real, centre + (real - centre) @ vt.T @ vt, groups)
    neg = realism_scores(real, gen["negative"], groups)
    assert 0 < smooth["edist_group"] < neg["edist_group"]
    assert smooth["var_log2ratio"] < 0


def test_realism_does_not_change_its_input_and_needs_big_enough_groups() -> None:
    real, groups, gen = _models()
    before = real.copy()
    realism_scores(real, gen["copy"], groups)
    np.testing.assert_array_equal(real, before)
    assert np.isnan(realism_scores(real[:5], real[:5], groups[:5])["spread_ratio"])


def test_unbiased_e_distance() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(15, 30)), rng.normal(size=(15, 30))
    # two small samples of one distribution: the V-statistic's self-pair bias, the U-statistic ~0
    assert e_distance(a, b, unbiased=True) < 0.3 * e_distance(a, b)
    assert e_distance(a, a, unbiased=True) == 0.0
    with pytest.raises(BenchError, match="at least 2 cells"):
        e_distance(a[:1], b, unbiased=True)

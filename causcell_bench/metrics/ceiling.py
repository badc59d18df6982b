"""A replicate ceiling for the held-out population metrics: how well could any model score, given
the noise of the real cells themselves?

For every held-out population its real cells are split into two random halves; one half stands in
for the prediction of the other, and every scored population metric is computed from these
(half, other half, same source) triples as from a model's. The mean over ``n_splits`` seeded
splits is stored as ``<metric>_ceiling`` beside the model's value, so that the leaderboard can
place a score between a baseline and the ceiling (cell-eval's ``--ceiling`` does the same with
bootstrapped halves). A half has half the cells: metrics that depend on the cell count (energy
distance, DE significance) get a slightly pessimistic ceiling, never an optimistic one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import as_matrix, check_positive_int
from causcell_bench.metrics.distribution import score_populations
from causcell_bench.metrics.perturbation import score_perturbation
from causcell_bench.metrics.registry import DIST, declare, list_metrics

N_SPLITS = 5


def population_scores(preds: Sequence[Any], reals: Sequence[Any], sources: Sequence[Any],
                      gene_names: Sequence[str] | None = None, *, seed: int = 0) -> dict[str, float]:
    """Every held-out population metric: :func:`score_populations` and :func:`score_perturbation`."""
    if not preds:
        return {}
    return {**score_populations(preds, reals, sources, gene_names, seed=seed),
            **score_perturbation(preds, reals, sources)}


def split_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of ``range(n)`` (the odd cell out goes to the second)."""
    if n < 2:
        raise BenchError(f"a population of {n} cell(s) cannot be split in halves; it needs at least 2")
    perm = rng.permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def replicate_ceiling(reals: Sequence[Any], sources: Sequence[Any], gene_names: Sequence[str] | None = None, *,
                      n_splits: int = N_SPLITS, seed: int = 0) -> dict[str, float]:
    """``<metric>_ceiling`` for every scored population metric: the mean over ``n_splits`` seeded
    split-halves of each real population, one half scored as the prediction of the other."""
    n_splits = check_positive_int(n_splits, "n_splits")
    if len(reals) != len(sources):
        raise BenchError(f"got {len(reals)} real and {len(sources)} source populations; pass one of each")
    if not reals:
        return {}
    reals = [as_matrix(r, f"reals[{i}]") for i, r in enumerate(reals)]
    runs = []
    for s in range(n_splits):
        rng = np.random.default_rng([seed, s])
        halves = [split_halves(r.shape[0], rng) for r in reals]
        runs.append(population_scores([r[a] for r, (a, _) in zip(reals, halves)],
                                      [r[b] for r, (_, b) in zip(reals, halves)], sources, gene_names, seed=seed))
    with np.errstate(all="ignore"):
        return {f"{m}_ceiling": float(np.nanmean([run.get(m, np.nan) for run in runs])) if
                any(np.isfinite(run.get(m, np.nan)) for run in runs) else float("nan") for m in CEILED}


#: the scored population metrics (declared by distribution.py and perturbation.py) that get a ceiling
CEILED: tuple[str, ...] = tuple(m.name for m in list_metrics("distribution") if m.aggregate and m.needs == DIST)
for _m in list_metrics("distribution"):
    if _m.name in CEILED:
        declare(f"{_m.name}_ceiling", "distribution", _m.higher_is_better,
                f"replicate ceiling of {_m.name}: one half of the real cells scored as the prediction of the other "
                f"(mean of {N_SPLITS} splits)", aggregate=False, computed_by=replicate_ceiling, needs=DIST)

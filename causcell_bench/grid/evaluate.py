"""What a grid cell scores, by the method's capabilities: the one place that decides which scorer
runs for which capability (the rest is recorded as n/a, never filled in), and the glue between a
fitted method and the counterfactual metrics.

Capabilities -> scorers (:func:`fit_and_score`):

- ``embedding`` other than ``none``: disentanglement of the train/test embeddings
  (:func:`causcell_bench.metrics.score_disentanglement`).
- ``reconstruct``: fidelity and realism of the generated test cells
  (:func:`causcell_bench.metrics.score_reconstruction`).
- ``counterfactual`` (and the run's ``counterfactual`` switch), in two parts:

  - **Truth** (datasets that carry their simulator, i.e. ``synthetic``): the test
    cells are intervened on (do(parent = v) for every value v of the chosen
    concept, on the cells whose value differs) and scored per cell against the
    simulator's exact counterfactuals, plus causal consistency of the descendants.
  - **Held-out populations** (OOD and HOLDOUT settings, any dataset): each concept-label
    combination held out of training is predicted from the training cells that
    share all its other labels, by do(perturbation = held-out value), and compared
    with the real held-out cells at the distribution level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec

if TYPE_CHECKING:
    from causcell_bench.config import RunConfig
    from causcell_bench.datasets.splits import Split
    from causcell_bench.grid.record import CellKey
    from causcell_bench.methods.base import Method

MAX_CF_CELLS = 2000  # cells intervened on per fold (seeded subsample): bounds generation time
MAX_POPULATION = 500  # cells per held-out / source population
MIN_POPULATION = 5
MIN_CELLS_PER_PART = 20  # below, a part's scores are too noisy to stand in for a fold


def fit_and_score(config: RunConfig, key: CellKey, method: Method, train: AnnData, test: AnnData, spec: DatasetSpec,
                  split: Split, t: dict[str, float]) -> dict[str, Any]:
    """Fit ``method`` on ``train`` and run the scorers its capabilities call for on ``test``; returns the
    result part of the cell's record (metrics, what is n/a, timings into ``t``, degenerate metrics...)."""
    from causcell_bench import metrics as M

    cls = type(method)
    caps = cls.capabilities
    t0 = time.perf_counter()
    method.fit(train, spec, seed=key.seed)
    t["fit_s"] = time.perf_counter() - t0

    na: list[str] = []
    emb = gen = truth = populations = None
    if caps.embedding != "none":
        t0 = time.perf_counter()
        emb = method.embed(train), method.embed(test)
        t["embed_s"] = time.perf_counter() - t0
    else:
        na.append("disentanglement")
    if caps.reconstruct:
        t0 = time.perf_counter()
        gen = method.generate(test, seed=key.seed)
        t["generate_s"] = time.perf_counter() - t0
    else:
        na.append("reconstruction")
    if caps.counterfactual and config.counterfactual:
        t0 = time.perf_counter()
        if has_truth(test):
            # a sampler's draw is not an estimate of the expected counterfactual: it gets its own
            # mean of truth_samples draws (and so does its factual), a deterministic method its output
            n_draws = config.truth_samples if caps.stochastic else 1
            truth = truth_outputs(method, train, test, spec, seed=key.seed,
                                  factual=gen if n_draws == 1 else None, n_draws=n_draws)
        if key.setting in ("OOD", "HOLDOUT") and split.held_out:
            populations = heldout_outputs(method, train, test, spec, split.held_out, seed=key.seed,
                                          cf_concept=config.cf_concept)
        t["counterfactual_s"] = time.perf_counter() - t0  # generation; its scoring: score_counterfactual_s
    else:
        na.append("counterfactual")

    ancestors = {c: [a for a in spec.concepts if c in spec.descendants(a)] for c in spec.concepts} \
        if spec.edges else None

    def score(rows: np.ndarray | None, timed: bool) -> dict[str, float]:
        """Every metric on the test cells ``rows`` (None: all of them) from the outputs above."""
        values: dict[str, float] = {}
        sub = test if rows is None else test[rows]
        if emb is not None:
            t0 = time.perf_counter()
            emb_test = emb[1] if rows is None else {k: np.asarray(v)[rows] for k, v in emb[1].items()}
            values.update(M.score_disentanglement(
                emb[0], train.obs, emb_test, sub.obs, spec.concepts, spec.fine_labels,
                probe=config.probe, seed=key.seed, ancestors=ancestors,
            ))
            if timed:
                t["score_disentanglement_s"] = time.perf_counter() - t0
        if gen is not None:
            t0 = time.perf_counter()
            values.update(M.score_reconstruction(sub.X, gen if rows is None else gen[rows], sub.obs, spec.concepts,
                                                 list(test.var_names), seed=key.seed))
            if timed:
                t["score_reconstruction_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if truth is not None:
            values.update(score_truth(truth, rows))
        if populations is not None:
            values.update(score_heldout(populations, test, rows, seed=key.seed))
        if timed and (truth is not None or populations is not None):
            t["score_counterfactual_s"] = time.perf_counter() - t0
        return values

    values = score(None, timed=True)
    part_metrics = None
    parts = cell_parts(test.obs, spec.concepts, config.cell_parts, key.seed) \
        if config.cell_parts >= 2 and config.single_unit(key.setting) else []
    extra: dict[str, Any] = {}
    if parts:
        t0 = time.perf_counter()
        try:
            part_metrics = []
            for rows in parts:
                pm = score(rows, timed=False)
                # a label too rare to reach every part makes that part's metric unmeasurable
                part_degenerate = M.degenerate_metrics(test.obs.iloc[rows], spec.concepts, spec.fine_labels)
                part_metrics.append({m: (float("nan") if m in part_degenerate else v) for m, v in pm.items()})
        except Exception as e:  # noqa: BLE001 - the parts only add rank intervals: never fail the cell for them
            part_metrics = None
            extra["part_metrics_error"] = f"{type(e).__name__}: {e}"
        t["score_parts_s"] = time.perf_counter() - t0
    degenerate = M.degenerate_metrics(test.obs, spec.concepts, spec.fine_labels)
    if values.get("n_populations") == 1.0:
        for name in (*M.NEEDS_TWO_POPULATIONS, *(f"{m}_ceiling" for m in M.NEEDS_TWO_POPULATIONS)):
            degenerate[name] = "degenerate: one held-out population (comparing populations needs two)"
    degenerate = {m: why for m, why in degenerate.items() if m in values}
    values.update({m: float("nan") for m in degenerate})
    return {
        "metrics": values, "na": na, "timings": t, "degenerate": degenerate, "kind": getattr(cls, "kind", "method"),
        "n_train": int(train.n_obs), "n_test": int(test.n_obs), "n_genes": int(train.n_vars),
        "capabilities": caps.as_dict(),
        **({"part_metrics": [{**pm, **{m: float("nan") for m in degenerate if m in pm}} for pm in part_metrics]}
           if part_metrics else {}),
        **extra,
    }

def has_truth(adata: AnnData) -> bool:
    return "synthetic" in adata.uns


def intervention_concept(spec: DatasetSpec) -> str:
    """The concept intervened on for the truth task: the first with descendants, else the first."""
    for c in spec.topological_order():
        if spec.descendants(c):
            return c
    return spec.concepts[0]


@dataclass
class TruthOutputs:
    """A method's counterfactuals of the test cells against the simulator's truth, stacked over the
    target values; ``cells[i]``: the test cell (position) that row i came from."""

    pred_cf: np.ndarray
    true_cf: np.ndarray
    pred_fac: np.ndarray
    true_fac: np.ndarray
    cells: np.ndarray
    descendant_labels: dict[str, tuple[np.ndarray, np.ndarray]]


def truth_outputs(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec, *, seed: int,
                  factual: np.ndarray | None = None, n_draws: int = 1) -> TruthOutputs | None:
    """do(parent = v) for every value v of :func:`intervention_concept` on the test cells whose value
    differs (a seeded subsample of at most MAX_CF_CELLS), with the simulator's exact counterfactuals and
    a real-cell classifier's labels for each descendant; None when no cell can be intervened on.

    The simulator's counterfactual is each cell's expected expression, so the method's counterfactual
    and factual cells are :meth:`Method.expected_generate` with ``n_draws`` (the mean of that many
    draws for a stochastic method; ``factual``, when given, stands for the factual cells)."""
    from causcell_bench import metrics as M
    from causcell_bench.datasets import true_counterfactual

    concept = intervention_concept(spec)
    rng = np.random.default_rng(seed)
    cells = np.arange(test.n_obs)
    if cells.size > MAX_CF_CELLS:
        cells = np.sort(rng.choice(cells, MAX_CF_CELLS, replace=False))
    sub = test[cells]
    pred_fac = factual[cells] if factual is not None else method.expected_generate(sub, seed=seed, n_draws=n_draws)
    labels = sub.obs[concept].astype(str).to_numpy()
    parts: dict[str, list[Any]] = {"pred_cf": [], "true_cf": [], "pred_fac": [], "true_fac": [], "cells": []}
    true_desc: dict[str, list[np.ndarray]] = {d: [] for d in spec.descendants(concept)}
    for value in method.categories_[concept]:
        rows = np.flatnonzero(labels != value)
        if rows.size == 0:
            continue
        cells_v = sub[rows]
        obs_cf, x_cf, x_fac = true_counterfactual(cells_v, {concept: value})
        parts["pred_cf"].append(method.expected_generate(cells_v, do={concept: value}, seed=seed, n_draws=n_draws))
        parts["true_cf"].append(x_cf)
        parts["pred_fac"].append(pred_fac[rows])
        parts["true_fac"].append(x_fac)
        parts["cells"].append(cells[rows])
        for d, chunks in true_desc.items():
            chunks.append(obs_cf[d].astype(str).to_numpy())
    if not parts["pred_cf"]:
        return None
    stacked = {k: (np.concatenate(v) if k == "cells" else np.vstack(v)) for k, v in parts.items()}
    descendant_labels = {}
    for d, chunks in true_desc.items():
        predicted = M.predict_labels(train.X, train.obs[d].astype(str).to_numpy(), stacked["pred_cf"], seed=seed)
        descendant_labels[d] = (np.asarray(predicted).astype(str), np.concatenate(chunks))
    return TruthOutputs(**stacked, descendant_labels=descendant_labels)


def score_truth(out: TruthOutputs, rows: np.ndarray | None = None) -> dict[str, float]:
    """Per-cell counterfactual metrics (``cf_pcc``, ``cf_mse``, ``effect_pcc``, ``causal_acc:<descendant>``)
    of :func:`truth_outputs`, pooled over all target values; ``rows``: only these test cells."""
    from causcell_bench import metrics as M

    keep = np.ones(out.cells.size, dtype=bool) if rows is None else np.isin(out.cells, rows)
    if not keep.any():
        return {}
    return M.score_counterfactual(out.pred_cf[keep], out.true_cf[keep], out.pred_fac[keep], out.true_fac[keep],
                                  descendant_labels={d: (p[keep], t[keep]) for d, (p, t) in
                                                     out.descendant_labels.items()} or None)


def score_against_truth(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec, *, seed: int,
                        factual: np.ndarray | None = None, n_draws: int = 1) -> dict[str, float]:
    """Per-cell counterfactual metrics against the simulator's truth (:func:`truth_outputs`, :func:`score_truth`)."""
    out = truth_outputs(method, train, test, spec, seed=seed, factual=factual, n_draws=n_draws)
    return {} if out is None else score_truth(out)


def _matches(adata: AnnData, labels: dict[str, str]) -> np.ndarray:
    mask = np.ones(adata.n_obs, dtype=bool)
    for c, v in labels.items():
        mask &= adata.obs[c].astype(str).to_numpy() == str(v)
    return mask


def cf_concepts(spec: DatasetSpec, override: str | None = None) -> list[str]:
    """The concept(s) the held-out population task intervenes on: ``override`` (``--cf-concept``),
    else the spec's declared ``perturbation``, else every concept in turn (each its own columns)."""
    from causcell_bench.errors import BenchError

    if override is not None:
        if override not in spec.concepts:
            raise BenchError(f"--cf-concept {override!r} is not a concept of this dataset; concepts are {spec.concepts}")
        return [override]
    if spec.perturbation:
        return [spec.perturbation]
    return list(spec.concepts)


@dataclass
class Population:
    """One held-out population: the prediction from its source cells, its real test cells (positions)."""

    pred: np.ndarray
    real_cells: np.ndarray
    source: Any


def heldout_outputs(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec,
                    held_out: list[dict[str, str]], *, seed: int,
                    cf_concept: str | None = None) -> dict[str, list[Population]]:
    """Per intervened concept (:func:`cf_concepts`), the predicted held-out populations.

    For a held-out combination h and the intervened concept c, the source population is the training
    cells equal to h on every other concept whose c differs from h[c] (for do(condition = stimulated)
    on a held-out (stimulated, CD4T): the control CD4T cells, the classic scGen test); the intervention
    sets c and holds c's descendants at their held-out labels, so the prediction targets exactly h.
    """
    out: dict[str, list[Population]] = {}
    for c in cf_concepts(spec, cf_concept):
        rng = np.random.default_rng(seed)
        pops = out.setdefault(c, [])
        for combo in held_out:
            real_mask = _matches(test, combo)
            if real_mask.sum() < MIN_POPULATION or c not in combo:
                continue
            if str(combo[c]) not in method.categories_.get(c, []):
                continue  # a value the model never saw cannot be intervened on
            others = {k: v for k, v in combo.items() if k != c}
            src = _matches(train, others) & (train.obs[c].astype(str).to_numpy() != str(combo[c]))
            if src.sum() < MIN_POPULATION:
                continue
            src_idx = _cap(np.flatnonzero(src), rng)
            real_idx = _cap(np.flatnonzero(real_mask), rng)
            do = {c: str(combo[c]), **{d: str(combo[d]) for d in spec.descendants(c) if d in combo}}
            source = train[src_idx]
            pops.append(Population(method.generate(source, do=do, seed=seed), real_idx, source.X))
    return out


def score_heldout(populations: dict[str, list[Population]], test: AnnData, rows: np.ndarray | None = None, *,
                  seed: int) -> dict[str, float]:
    """Population-level scores (:func:`metrics.population_scores`) of :func:`heldout_outputs`, and on the whole
    fold their replicate ceilings (``<metric>_ceiling``); with ``rows`` each real population keeps only those
    test cells (populations left under MIN_POPULATION are dropped).
    With one intervened concept the metrics carry plain names; when every concept is scored in turn
    they are qualified by it (``edist:condition``)."""
    from causcell_bench import metrics as M

    out: dict[str, float] = {}
    for c, pops in populations.items():
        preds, reals, sources = [], [], []
        for pop in pops:
            real = pop.real_cells if rows is None else pop.real_cells[np.isin(pop.real_cells, rows)]
            if real.size < MIN_POPULATION:
                continue
            preds.append(pop.pred)
            reals.append(test.X[real])
            sources.append(pop.source)
        scores = M.population_scores(preds, reals, sources, list(test.var_names), seed=seed)
        if rows is None and preds:  # the ceiling is the real cells' own noise: the whole fold only, not its parts
            scores.update(M.replicate_ceiling(reals, sources, list(test.var_names), seed=seed))
        suffix = "" if len(populations) == 1 else f":{c}"
        out.update({f"{k}{suffix}": v for k, v in scores.items()})
    return out


def score_heldout_populations(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec,
                              held_out: list[dict[str, str]], *, seed: int,
                              cf_concept: str | None = None) -> dict[str, float]:
    """Population-level scores of predicted vs real held-out populations (:func:`heldout_outputs`,
    :func:`score_heldout`)."""
    pops = heldout_outputs(method, train, test, spec, held_out, seed=seed, cf_concept=cf_concept)
    return score_heldout(pops, test, seed=seed)


def cell_parts(obs: Any, concepts: list[str], k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint parts of the test cells (positions, sorted), each with the fold's mix of concept
    combinations: the cells of every combination are shuffled (seeded) and dealt round-robin.

    The parts are scored separately so that the leaderboard can give rank intervals when a single fold
    and seed ran (the parts stand in for folds in its bootstrap). Empty when there are fewer than
    MIN_CELLS_PER_PART cells per part."""
    n = len(obs)
    if k < 2 or n < k * MIN_CELLS_PER_PART:
        return []
    rng = np.random.default_rng(seed)
    combos = obs[list(concepts)].astype(str).agg("|".join, axis=1).to_numpy()
    which = np.empty(n, dtype=int)
    offset = 0
    for combo in np.unique(combos):
        idx = rng.permutation(np.flatnonzero(combos == combo))
        which[idx] = (offset + np.arange(idx.size)) % k
        offset += idx.size  # continue the deal where the last combination stopped: parts stay even
    return [np.flatnonzero(which == j) for j in range(k)]


def _cap(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(idx, MAX_POPULATION, replace=False)) if idx.size > MAX_POPULATION else idx

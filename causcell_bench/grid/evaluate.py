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

    values: dict[str, float] = {}
    na: list[str] = []
    if caps.embedding != "none":
        t0 = time.perf_counter()
        emb_train, emb_test = method.embed(train), method.embed(test)
        t["embed_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ancestors = {c: [a for a in spec.concepts if c in spec.descendants(a)] for c in spec.concepts}
        values.update(M.score_disentanglement(
            emb_train, train.obs, emb_test, test.obs, spec.concepts, spec.fine_labels,
            probe=config.probe, seed=key.seed, ancestors=ancestors if spec.edges else None,
        ))
        t["score_disentanglement_s"] = time.perf_counter() - t0
    else:
        na.append("disentanglement")
    if caps.reconstruct:
        t0 = time.perf_counter()
        gen = method.generate(test, seed=key.seed)
        t["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        values.update(M.score_reconstruction(test.X, gen, test.obs, spec.concepts, list(test.var_names), seed=key.seed))
        t["score_reconstruction_s"] = time.perf_counter() - t0
    else:
        na.append("reconstruction")
    if caps.counterfactual and config.counterfactual:
        t0 = time.perf_counter()
        if has_truth(test):
            values.update(score_against_truth(
                method, train, test, spec, seed=key.seed, factual=gen if caps.reconstruct else None))
        if key.setting in ("OOD", "HOLDOUT") and split.held_out:
            values.update(score_heldout_populations(
                method, train, test, spec, split.held_out, seed=key.seed, cf_concept=config.cf_concept))
        t["counterfactual_s"] = time.perf_counter() - t0
    else:
        na.append("counterfactual")
    degenerate = M.degenerate_metrics(test.obs, spec.concepts, spec.fine_labels)
    if values.get("n_populations") == 1.0 and "pop_rank" in values:
        degenerate["pop_rank"] = "degenerate: one held-out population (a rank needs two)"
    degenerate = {m: why for m, why in degenerate.items() if m in values}
    values.update({m: float("nan") for m in degenerate})
    return {
        "metrics": values, "na": na, "timings": t, "degenerate": degenerate, "kind": getattr(cls, "kind", "method"),
        "n_train": int(train.n_obs), "n_test": int(test.n_obs), "n_genes": int(train.n_vars),
        "capabilities": caps.as_dict(),
    }

def has_truth(adata: AnnData) -> bool:
    return "synthetic" in adata.uns


def intervention_concept(spec: DatasetSpec) -> str:
    """The concept intervened on for the truth task: the first with descendants, else the first."""
    for c in spec.topological_order():
        if spec.descendants(c):
            return c
    return spec.concepts[0]


def score_against_truth(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec, *, seed: int,
                        factual: np.ndarray | None = None) -> dict[str, float]:
    """Per-cell counterfactual metrics against the simulator's truth (``cf_pcc``, ``cf_mse``,
    ``effect_pcc``, ``causal_acc:<descendant>``), pooled over all target values."""
    from causcell_bench import metrics as M
    from causcell_bench.datasets import true_counterfactual

    concept = intervention_concept(spec)
    rng = np.random.default_rng(seed)
    cells = np.arange(test.n_obs)
    if cells.size > MAX_CF_CELLS:
        cells = np.sort(rng.choice(cells, MAX_CF_CELLS, replace=False))
    sub = test[cells]
    pred_fac = factual[cells] if factual is not None else method.generate(sub, seed=seed)
    labels = sub.obs[concept].astype(str).to_numpy()
    parts: dict[str, list[Any]] = {"pred_cf": [], "true_cf": [], "pred_fac": [], "true_fac": []}
    true_desc: dict[str, list[np.ndarray]] = {d: [] for d in spec.descendants(concept)}
    for value in method.categories_[concept]:
        rows = np.flatnonzero(labels != value)
        if rows.size == 0:
            continue
        cells_v = sub[rows]
        obs_cf, x_cf, x_fac = true_counterfactual(cells_v, {concept: value})
        parts["pred_cf"].append(method.generate(cells_v, do={concept: value}, seed=seed))
        parts["true_cf"].append(x_cf)
        parts["pred_fac"].append(pred_fac[rows])
        parts["true_fac"].append(x_fac)
        for d in true_desc:
            true_desc[d].append(obs_cf[d].astype(str).to_numpy())
    if not parts["pred_cf"]:
        return {}
    stacked = {k: np.vstack(v) for k, v in parts.items()}
    descendant_labels = {}
    for d, chunks in true_desc.items():
        predicted = M.predict_labels(train.X, train.obs[d].astype(str).to_numpy(), stacked["pred_cf"], seed=seed)
        descendant_labels[d] = (np.asarray(predicted).astype(str), np.concatenate(chunks))
    return M.score_counterfactual(stacked["pred_cf"], stacked["true_cf"], stacked["pred_fac"], stacked["true_fac"],
                                  descendant_labels=descendant_labels or None)


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


def score_heldout_populations(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec,
                              held_out: list[dict[str, str]], *, seed: int,
                              cf_concept: str | None = None) -> dict[str, float]:
    """Population-level scores of predicted vs real held-out populations (:func:`metrics.score_populations`).

    For a held-out combination h and the intervened concept c (:func:`cf_concepts`), the source
    population is the training cells equal to h on every other concept whose c differs from h[c]
    (for do(condition = stimulated) on a held-out (stimulated, CD4T): the control CD4T cells, the
    classic scGen test); the intervention sets c and holds c's descendants at their held-out labels,
    so the prediction targets exactly h. With one intervened concept the metrics carry plain names;
    when every concept is scored in turn they are qualified by it (``edist:condition``).
    """
    from causcell_bench import metrics as M

    concepts = cf_concepts(spec, cf_concept)
    out: dict[str, float] = {}
    for c in concepts:
        rng = np.random.default_rng(seed)
        preds, reals, sources = [], [], []
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
            preds.append(method.generate(source, do=do, seed=seed))
            reals.append(test.X[real_idx])
            sources.append(source.X)
        scores = M.score_populations(preds, reals, sources, list(test.var_names), seed=seed)
        suffix = "" if len(concepts) == 1 else f":{c}"
        out.update({f"{k}{suffix}": v for k, v in scores.items()})
    return out


def _cap(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(idx, MAX_POPULATION, replace=False)) if idx.size > MAX_POPULATION else idx

"""Disentanglement scenario of the CausCell paper (Gao, Dong et al., Nat Commun 2025), scored with
one common probe for all methods, plus DCI and MIG (docs/metrics.md, "Disentanglement")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from causcell_bench.errors import BenchError

UNEXPLAINED = "unexplained"  # the key of the unexplained concept's embedding (methods.base.UNEXPLAINED)
from causcell_bench.metrics._validate import as_labels, as_matrix, check_columns, check_concepts
from causcell_bench.metrics.clustering import MAX_CELLS_CLUSTERING, granularity_scores
from causcell_bench.metrics.dci_mig import dci_disentanglement_dag, dci_importance, mig
from causcell_bench.metrics.predictive import (
    MAX_TRAIN_CELLS,
    classification_scores,
    exclusivity_gap,
    lift,
    majority_baseline,
    probe_predict,
)
from causcell_bench.metrics.registry import EMB, declare


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


def _embedding(emb: Mapping[str, Any], key: str, n: int, name: str) -> np.ndarray:
    if key not in emb:
        raise BenchError(f"{name} has no embedding for concept {key!r}; keys: {sorted(emb)}")
    z = as_matrix(emb[key], f"{name}[{key!r}]", allow_sparse=False)
    if z.shape[0] != n:
        raise BenchError(f"{name}[{key!r}] has {z.shape[0]} rows but the obs table has {n} cells")
    return z


def score_disentanglement(
    train_emb: Mapping[str, np.ndarray],
    train_obs: pd.DataFrame,
    test_emb: Mapping[str, np.ndarray],
    test_obs: pd.DataFrame,
    concepts: Sequence[str],
    fine_labels: Mapping[str, str] | None = None,
    *,
    probe: str = "logreg",
    seed: int = 0,
    off_diagonal: bool = True,
    ancestors: Mapping[str, Sequence[str]] | None = None,
    max_train_cells: int | None = MAX_TRAIN_CELLS,
    max_cells_clustering: int | None = MAX_CELLS_CLUSTERING,
) -> dict[str, float]:
    """All embedding metrics of one fold, as a flat ``{full_metric_name: value}`` dict.

    Per concept c (probe fit on train-fold z_c -> y_c, scored on the test fold; see
    :func:`probe_predict`): ``acc:c``, ``precision_w:c``, ``recall_w:c``, ``f1_w:c``.

    With ``off_diagonal``: ``offdiag_acc:c|j`` (probe z_c -> y_j) and ``exclusivity:c``. With
    b_j the test-fold frequency of concept j's commonest label (best constant predictor) and
    lift(c, j) = (acc(z_c -> y_j) - b_j) / (1 - b_j) (0 = chance, 1 = perfect),
    exclusivity:c = max(0, lift(c, c) - mean_{j != c} lift(c, j)) with every lift clipped to [0, 1]
    (:func:`exclusivity_gap`), so it lies in [0, 1]: 1 = own concept perfectly predicted, every
    other at chance. A below-chance lift (a probe worse than the test fold's majority guess, e.g.
    OOD, where held-out combinations reverse the training associations) counts as 0, no
    information. Concepts with b_j = 1 (one label in the test fold) are left out of the mean; NaN
    with a single concept. Note that causally dependent concepts (celltype <- age) are
    legitimately predictable from each other, so even a perfect embedding need not reach 1.

    ``fine_labels`` maps a concept to a fine-label column of ``test_obs``: ``nmi_fine:c`` and
    ``ari_fine:c`` of Ward clusters of test z_c (n_clusters = fine labels present) vs those labels;
    cells with a missing fine label are left out.

    With ``ancestors`` (concept -> its ancestors in the causal DAG), the DAG-aware versions:
    ``exclusivity_dag:c`` = lift(c, c) - mean lift on the concepts that are NOT ancestors of c
    (descendants and unrelated concepts still count as leakage; lift(c, c) alone when every other
    concept is an ancestor), and ``dci_d_dag``: DCI disentanglement with the importance a concept's
    own embedding dimensions put on that concept's ancestors left out. In an SCM the endogenous
    embedding of a child must carry its parents (z = (I - A^T)^-1 eps), so the plain versions
    penalise a causal model for being causal; a parent carrying its child still counts as leakage.

    ``u_leak`` (when the embeddings hold ``"unexplained"``): mean lift of the unexplained embedding
    over all concepts (0 is ideal: u independent of every label; lower is better).

    ``leak_nl:c`` (with ``off_diagonal``): what a non-linear probe (15-nearest neighbours) reads from
    z_c about concepts that are neither c nor its ancestors, *beyond what c's own label says*: per
    such concept j, (acc(kNN z_c -> y_j) - acc(y_c -> y_j)) / (1 - acc(y_c -> y_j)), where
    acc(y_c -> y_j) predicts j's commonest training label within each label of c; the mean over j,
    clipped at 0 (lower is better). ``u_leak_nl``: the same for the unexplained embedding against
    every concept (baseline: the majority label). A linear probe misses information stored
    non-linearly (a patient embedding that carries the drug as a radius, say); these catch it.

    ``dci_d``, ``dci_c``, ``dci_i`` (forests fit on the train fold, informativeness on the test
    fold) and ``mig`` (test fold) use the concatenation of the concept embeddings, each distinct
    matrix once (a shared latent returned for every concept counts once). Other keys of the
    embedding mappings are ignored.
    """
    concepts = check_concepts(concepts)
    check_columns(train_obs, concepts, "train_obs")
    check_columns(test_obs, concepts, "test_obs")
    n_tr, n_te = len(train_obs), len(test_obs)
    ytr = {c: as_labels(train_obs[c], f"train_obs[{c!r}]", n_tr) for c in concepts}
    yte = {c: as_labels(test_obs[c], f"test_obs[{c!r}]", n_te) for c in concepts}

    # distinct embedding matrices: a shared latent is probed (and concatenated) once
    uniq: list[tuple[np.ndarray, np.ndarray]] = []
    owner: dict[str, int] = {}
    for c in concepts:
        ztr = _embedding(train_emb, c, n_tr, "train_emb")
        zte = _embedding(test_emb, c, n_te, "test_emb")
        if ztr.shape[1] != zte.shape[1]:
            raise BenchError(
                f"embedding {c!r} has {ztr.shape[1]} dimensions on train but {zte.shape[1]} on test; "
                "embed both folds with the same fitted model"
            )
        for u, (a, b) in enumerate(uniq):
            if _same(a, ztr) and _same(b, zte):
                owner[c] = u
                break
        else:
            owner[c] = len(uniq)
            uniq.append((ztr, zte))

    cache: dict[tuple[int, str], np.ndarray] = {}

    def predict(src: str, target: str) -> np.ndarray:
        key = (owner[src], target)
        if key not in cache:
            ztr, zte = uniq[owner[src]]
            cache[key] = probe_predict(ztr, ytr[target], zte, probe, seed, max_train_cells=max_train_cells)
        return cache[key]

    out: dict[str, float] = {}
    base = {c: majority_baseline(yte[c]) for c in concepts}
    for c in concepts:
        for k, v in classification_scores(yte[c], predict(c, c)).items():
            out[f"{k}:{c}"] = v
    if off_diagonal:
        for c in concepts:
            lifts = []
            for j in concepts:
                if j == c:
                    continue
                acc = float(np.mean(predict(c, j) == yte[j]))
                out[f"offdiag_acc:{c}|{j}"] = acc
                lifts.append(lift(acc, base[j]))
            out[f"exclusivity:{c}"] = exclusivity_gap(lift(out[f"acc:{c}"], base[c]), lifts)
            if ancestors is not None:
                anc = set(ancestors.get(c, ()))
                own = lift(out[f"acc:{c}"], base[c])
                leaks = [lift(out[f"offdiag_acc:{c}|{j}"], base[j]) for j in concepts if j != c and j not in anc]
                finite = [x for x in leaks if np.isfinite(x)]
                # every other concept an ancestor: nothing can leak, the own lift (in [0, 1]) alone
                alone = float(np.clip(own, 0.0, 1.0)) if np.isfinite(own) else float("nan")
                out[f"exclusivity_dag:{c}"] = exclusivity_gap(own, finite) if finite else alone
    if UNEXPLAINED in train_emb and UNEXPLAINED in test_emb:
        utr = _embedding(train_emb, UNEXPLAINED, n_tr, "train_emb")
        ute = _embedding(test_emb, UNEXPLAINED, n_te, "test_emb")
        lifts = [lift(float(np.mean(probe_predict(utr, ytr[j], ute, probe, seed, max_train_cells=max_train_cells)
                                    == yte[j])), base[j]) for j in concepts]
        finite = [x for x in lifts if np.isfinite(x)]
        out["u_leak"] = float(np.mean(finite)) if finite else float("nan")
    if off_diagonal:
        anc_of = ancestors or {}
        for c in concepts:
            others = [j for j in concepts if j != c and j not in set(anc_of.get(c, ()))]
            ztr, zte = uniq[owner[c]]
            out[f"leak_nl:{c}"] = _nonlinear_leak(ztr, zte, ytr, yte, others, ytr[c], yte[c], seed, max_train_cells)
        if UNEXPLAINED in train_emb and UNEXPLAINED in test_emb:
            out["u_leak_nl"] = _nonlinear_leak(utr, ute, ytr, yte, list(concepts), None, None, seed, max_train_cells)

    for c, col in (fine_labels or {}).items():
        check_columns(test_obs, [col], "test_obs")
        zte = _embedding(test_emb, c, n_te, "test_emb")
        mask = test_obs[col].notna().to_numpy()
        if not mask.any():
            out[f"nmi_fine:{c}"] = out[f"ari_fine:{c}"] = float("nan")
            out[f"n_cells_fine:{c}"] = 0.0
            continue
        g = granularity_scores(
            zte[mask], test_obs[col][mask], seed=seed, max_cells=max_cells_clustering
        )
        out[f"nmi_fine:{c}"], out[f"ari_fine:{c}"], out[f"n_cells_fine:{c}"] = g["nmi"], g["ari"], g["n_cells"]

    ztr_all = np.concatenate([a for a, _ in uniq], axis=1)
    zte_all = np.concatenate([b for _, b in uniq], axis=1)
    d = dci_importance(ztr_all, ytr, z_test=zte_all, factors_test=yte, seed=seed)
    out["dci_d"], out["dci_c"], out["dci_i"] = d["d"], d["c"], d["i"]
    if ancestors is not None:
        # which concept owns each code dimension (a shared latent is owned by none: nothing excused)
        owners: list[str | None] = []
        for u, (a, _) in enumerate(uniq):
            mine = [c for c in concepts if owner[c] == u]
            owners += [mine[0] if len(mine) == 1 else None] * a.shape[1]
        out["dci_d_dag"] = dci_disentanglement_dag(d["importance"], owners, d["factors"], ancestors)
    out["mig"] = mig(zte_all, yte)
    return out


def _label_only_accuracy(given_tr: np.ndarray | None, y_tr: np.ndarray, given_te: np.ndarray | None,
                         y_te: np.ndarray) -> float:
    """Test accuracy of predicting y from the given label alone (the commonest training y within each
    given label; the overall commonest for a label unseen in training or when nothing is given)."""
    values, counts = np.unique(y_tr, return_counts=True)
    overall = values[counts.argmax()]
    if given_tr is None or given_te is None:
        return float(np.mean(y_te == overall))
    table = {}
    for g in np.unique(given_tr):
        v, n = np.unique(y_tr[given_tr == g], return_counts=True)
        table[g] = v[n.argmax()]
    pred = np.array([table.get(g, overall) for g in given_te], dtype=object)
    return float(np.mean(pred == y_te))


def _nonlinear_leak(ztr: np.ndarray, zte: np.ndarray, ytr: Mapping[str, np.ndarray], yte: Mapping[str, np.ndarray],
                    targets: Sequence[str], given_tr: np.ndarray | None, given_te: np.ndarray | None, seed: int,
                    max_train_cells: int | None) -> float:
    """Mean over ``targets`` of the kNN probe's lift over the label-only predictor, clipped at 0 (NaN if
    no target has room above its baseline)."""
    lifts = []
    for j in targets:
        base = _label_only_accuracy(given_tr, ytr[j], given_te, yte[j])
        acc = float(np.mean(probe_predict(ztr, ytr[j], zte, "knn", seed, max_train_cells=max_train_cells) == yte[j]))
        lifts.append(max(0.0, lift(acc, base)))
    finite = [x for x in lifts if np.isfinite(x)]
    return float(np.mean(finite)) if finite else float("nan")


_DECLARE = {"computed_by": score_disentanglement, "needs": EMB}
declare("acc", "predictive", True, "probe accuracy of concept c from its own embedding",
        qualified=True, headline=True, **_DECLARE)
declare("precision_w", "predictive", True, "probe precision (weighted by class support)", qualified=True, **_DECLARE)
declare("recall_w", "predictive", True, "probe recall (weighted by class support)", qualified=True, **_DECLARE)
declare("f1_w", "predictive", True, "probe F1 (weighted by class support)", qualified=True, headline=True,
        **_DECLARE)
declare("offdiag_acc", "predictive", False,
        "accuracy of the probe from embedding c to another concept j (name 'offdiag_acc:c|j'); a diagnostic",
        aggregate=False, qualified=True, **_DECLARE)
# with a DAG the DAG-aware variants are scored and the plain ones kept as diagnostics: in a causal
# model a child's embedding must carry its parents, which the plain ones charge as leakage
declare("exclusivity", "predictive", True,
        "own-concept lift over the majority baseline minus the mean lift on every other concept, lifts "
        "clipped to [0, 1] and the gap floored at 0 (in [0, 1])",
        qualified=True, headline=True, superseded_by="exclusivity_dag", **_DECLARE)
declare("exclusivity_dag", "predictive", True,
        "as exclusivity, the mean lift taken on concepts that are not ancestors of c in the DAG (in [0, 1])",
        qualified=True, headline=True, **_DECLARE)
# a diagnostic, not scored: the negative control's random u is ideal here, so control scaling is void
declare("u_leak", "predictive", False,
        "mean lift of the unexplained embedding u over all concepts (0 = independent, the paper's claim)",
        aggregate=False, headline=True, **_DECLARE)
declare("leak_nl", "predictive", False,
        "kNN-probe lift from z_c to concepts other than c and its ancestors, beyond c's own label "
        "(non-linear leakage; 0 = none); a diagnostic", aggregate=False, qualified=True, headline=True, **_DECLARE)
declare("u_leak_nl", "predictive", False,
        "kNN-probe lift from the unexplained embedding u to every concept (non-linear leakage; 0 = none)",
        aggregate=False, headline=True, **_DECLARE)
declare("nmi_fine", "granularity", True, "NMI of Ward clusters of z_c vs fine labels", qualified=True,
        headline=True, **_DECLARE)
declare("ari_fine", "granularity", True, "ARI of Ward clusters of z_c vs fine labels", qualified=True,
        headline=True, **_DECLARE)
declare("n_cells_fine", "granularity", True, "test cells clustered for nmi_fine/ari_fine", aggregate=False,
        qualified=True, **_DECLARE)
declare("dci_d", "dci_mig", True, "DCI disentanglement (Eastwood & Williams 2018)", headline=True,
        superseded_by="dci_d_dag", **_DECLARE)
declare("dci_d_dag", "dci_mig", True,
        "DCI disentanglement with a concept's own dimensions excused for importance on its ancestors",
        headline=True, **_DECLARE)
declare("dci_c", "dci_mig", True, "DCI completeness (Eastwood & Williams 2018)", **_DECLARE)
declare("dci_i", "dci_mig", True, "DCI informativeness: mean test accuracy of the tree ensembles", **_DECLARE)
declare("mig", "dci_mig", True, "mutual information gap (Chen et al. 2018)", headline=True, **_DECLARE)

"""Metrics on embeddings: registry, probes, granularity, DCI/MIG, score_disentanglement.

Sanity bands in the style of disentanglement_lib: a perfect input scores at/near the best value,
random input near chance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causcell_bench.errors import BenchError
from causcell_bench.metrics import (
    GROUPS,
    METRICS,
    classification_scores,
    dci,
    dci_from_importance,
    granularity_scores,
    list_metrics,
    majority_baseline,
    metric_info,
    mig,
    probe_predict,
    score_disentanglement,
)

CONCEPTS = ["age", "domain", "ctype"]
SIZES = {"age": 3, "domain": 2, "ctype": 4}


def _labels(n: int, seed: int) -> pd.DataFrame:
    """Independent concepts with unequal class frequencies (so majority baselines differ from 1/K)."""
    rng = np.random.default_rng(seed)
    cols = {}
    for c, k in SIZES.items():
        p = np.arange(1, k + 1, dtype=float)
        cols[c] = pd.Categorical([f"{c}{v}" for v in rng.choice(k, n, p=p / p.sum())])
    return pd.DataFrame(cols)


def _onehot(y: pd.Series) -> np.ndarray:
    _, inv = np.unique(np.asarray(y, dtype=str), return_inverse=True)
    return np.eye(inv.max() + 1)[inv]


@pytest.fixture(scope="module")
def folds():
    return _labels(400, 0), _labels(300, 1)


# --- registry ----------------------------------------------------------------------------------


def test_registry_names_groups_and_directions():
    assert {m.group for m in METRICS.values()} == set(GROUPS)
    assert metric_info("acc:age").name == "acc"
    assert metric_info("offdiag_acc:age|ctype").aggregate is False
    assert metric_info("mse").higher_is_better is False and metric_info("edist").higher_is_better is False
    for ct in ("pcc_ct", "mse_ct", "marker_ct"):
        assert metric_info(ct).aggregate is False
    assert {m.name for m in list_metrics("dci_mig")} == {"dci_d", "dci_d_dag", "dci_c", "dci_i", "mig"}
    assert all(m.defined_in.startswith("causcell_bench.metrics.") for m in METRICS.values())
    assert len(list_metrics()) == len(METRICS)
    with pytest.raises(BenchError, match="unknown metric 'nope:x'"):
        metric_info("nope:x")
    with pytest.raises(BenchError, match="unknown metric group"):
        list_metrics("speed")


# --- probes ------------------------------------------------------------------------------------


def test_onehot_embedding_predicts_own_concept_only(folds):
    tr, te = folds
    for probe in ("logreg", "knn"):
        for c in CONCEPTS:
            pred = probe_predict(_onehot(tr[c]), tr[c], _onehot(te[c]), probe=probe)
            s = classification_scores(te[c], pred)
            assert s == {"acc": 1.0, "precision_w": 1.0, "recall_w": 1.0, "f1_w": 1.0}
            for j in CONCEPTS:
                if j != c:
                    acc = np.mean(probe_predict(_onehot(tr[c]), tr[j], _onehot(te[c]), probe=probe) == te[j])
                    assert acc <= majority_baseline(te[j]) + 0.08


def test_random_embedding_scores_near_chance(folds):
    tr, te = folds
    rng = np.random.default_rng(3)
    for c in CONCEPTS:
        pred = probe_predict(rng.normal(size=(400, 8)), tr[c], rng.normal(size=(300, 8)))
        acc = classification_scores(te[c], pred)["acc"]
        assert abs(acc - majority_baseline(te[c])) < 0.12


def test_probe_class_absent_from_test_or_train():
    rng = np.random.default_rng(0)
    ytr = np.array(["a", "b", "c"] * 30)
    ztr = _onehot(pd.Series(ytr)) + rng.normal(0, 0.05, (90, 3))
    # test fold without class "c"
    yte = np.array(["a", "b"] * 10)
    pred = probe_predict(ztr, ytr, _onehot(pd.Series(yte)) @ np.eye(2, 3))
    assert classification_scores(yte, pred)["acc"] == 1.0
    # test fold with class "d" never seen in training: those cells can only be wrong
    yte2 = np.array(["a", "b", "d", "d"])
    zte2 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0.5], [0.5, 0.5, 0]])
    s = classification_scores(yte2, probe_predict(ztr, ytr, zte2))
    assert s["acc"] == pytest.approx(0.5) and 0 <= s["f1_w"] <= 1
    # one class in training: constant prediction, no sklearn error
    assert set(probe_predict(ztr, ["a"] * 90, zte2)) == {"a"}


def test_probe_input_validation():
    z = np.zeros((10, 2))
    with pytest.raises(BenchError, match="unknown probe"):
        probe_predict(z, ["a"] * 10, z, probe="svm")
    with pytest.raises(BenchError, match="10 cells"):
        probe_predict(z, ["a"] * 9, z)
    with pytest.raises(BenchError, match="NaN or inf"):
        probe_predict(np.full((10, 2), np.nan), ["a"] * 10, z)
    with pytest.raises(BenchError, match="dimensions"):
        probe_predict(z, ["a"] * 10, np.zeros((3, 4)))
    with pytest.raises(BenchError, match="empty"):
        probe_predict(np.zeros((0, 2)), [], z)
    with pytest.raises(BenchError, match="missing label"):
        classification_scores(["a", None], ["a", "a"])


def test_probe_subsample_is_seeded(folds):
    tr, te = folds
    rng = np.random.default_rng(1)
    ztr, zte = rng.normal(size=(400, 4)), rng.normal(size=(300, 4))
    a = probe_predict(ztr, tr["age"], zte, seed=5, max_train_cells=100)
    b = probe_predict(ztr, tr["age"], zte, seed=5, max_train_cells=100)
    assert (a == b).all()


# --- DCI / MIG -----------------------------------------------------------------------------------


def _codes(obs: pd.DataFrame, noise: float, seed: int) -> np.ndarray:
    """One scalar code per factor: the label index plus noise (a factorised representation)."""
    rng = np.random.default_rng(seed)
    cols = [np.unique(np.asarray(obs[c], str), return_inverse=True)[1] for c in CONCEPTS]
    return np.stack(cols, axis=1).astype(float) + rng.normal(0, noise, (len(obs), len(CONCEPTS)))


def test_dci_factorised_high_mixed_low(folds):
    tr, te = folds
    fz_tr, fz_te = _codes(tr, 0.1, 0), _codes(te, 0.1, 1)
    fac = dci(fz_tr, tr, z_test=fz_te, factors_test=te)
    assert fac["d"] > 0.8 and fac["c"] > 0.8 and fac["i"] > 0.95
    mix = np.random.default_rng(7).normal(size=(3, 3))  # dense mixing of all factors in every dim
    mixed = dci(fz_tr @ mix, tr, z_test=fz_te @ mix, factors_test=te)
    assert mixed["d"] < 0.75 and mixed["d"] < fac["d"] - 0.25
    rnd = np.random.default_rng(2)
    noise = dci(rnd.normal(size=(400, 3)), tr, z_test=rnd.normal(size=(300, 3)), factors_test=te)
    assert noise["i"] < 0.65  # near chance


def test_dci_from_importance_extremes_and_single_factor():
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    d, c = dci_from_importance(np.ones((3, 3)))
    assert d == pytest.approx(0.0, abs=1e-12) and c == pytest.approx(0.0, abs=1e-12)
    d, c = dci_from_importance(np.array([[1.0], [0.0]]))
    assert np.isnan(d) and c == pytest.approx(1.0)
    z = np.random.default_rng(0).normal(size=(50, 2))
    out = dci(z, {"only": ["x"] * 50})  # a single label: nothing to learn
    assert all(np.isnan(v) for v in out.values())


def test_mig_factorised_high_duplicated_low(folds):
    _, te = folds
    z = _codes(te, 0.05, 0)
    assert mig(z, te) > 0.8
    dup = np.concatenate([z, z + np.random.default_rng(1).normal(0, 0.01, z.shape)], axis=1)
    assert mig(dup, te) < 0.2
    assert mig(np.random.default_rng(2).normal(size=(300, 3)), te) < 0.1
    assert np.isnan(mig(z, {"const": ["a"] * 300}))


# --- granularity -----------------------------------------------------------------------------------


def test_granularity_perfect_random_and_edge_cases():
    rng = np.random.default_rng(0)
    fine = rng.choice([f"sub{i}" for i in range(5)], 200)
    z = _onehot(pd.Series(fine)) * 10 + rng.normal(0, 0.1, (200, 5))
    g = granularity_scores(z, fine)
    assert g["nmi"] == pytest.approx(1.0) and g["ari"] == pytest.approx(1.0)
    r = granularity_scores(rng.normal(size=(200, 5)), fine)
    assert r["nmi"] < 0.2 and abs(r["ari"]) < 0.1
    one = granularity_scores(z, ["one"] * 200)
    assert np.isnan(one["nmi"]) and np.isnan(one["ari"]) and one["n_cells"] == 200
    few = granularity_scores(z[:3], ["a", "b", "c"], n_clusters=8)  # fewer cells than clusters
    assert few["nmi"] == pytest.approx(1.0)
    sub = granularity_scores(z, fine, max_cells=50, seed=1)  # subsampled path
    assert sub["ari"] == pytest.approx(1.0) and sub["n_cells"] == 50 and g["n_cells"] == 200


# --- the high-level scorer --------------------------------------------------------------------------


def test_score_disentanglement_onehot_vs_shared(folds):
    tr, te = folds
    tr = tr.assign(ctype_fine=[f"{v}_{i % 2}" for i, v in enumerate(tr["ctype"])])
    te = te.assign(ctype_fine=[f"{v}_{i % 2}" for i, v in enumerate(te["ctype"])])
    emb_tr = {c: _onehot(tr[c]) for c in CONCEPTS} | {"unexplained": np.zeros((400, 2))}
    emb_te = {c: _onehot(te[c]) for c in CONCEPTS}
    out = score_disentanglement(emb_tr, tr, emb_te, te, CONCEPTS, {"ctype": "ctype_fine"})
    for name in out:
        metric_info(name)  # every emitted name is registered
    for c in CONCEPTS:
        assert out[f"acc:{c}"] == 1.0 and out[f"f1_w:{c}"] == 1.0
        assert out[f"exclusivity:{c}"] > 0.85
    assert out["offdiag_acc:age|domain"] <= majority_baseline(te["domain"]) + 0.08
    assert 0 <= out["nmi_fine:ctype"] <= 1 and "nmi_fine:age" not in out
    assert out["n_cells_fine:ctype"] > 0
    assert out["dci_i"] > 0.95 and out["dci_d"] > 0.7

    # one shared latent holding everything: predictive, but nothing exclusive
    shared_tr = np.concatenate([emb_tr[c] for c in CONCEPTS], axis=1)
    shared_te = np.concatenate([emb_te[c] for c in CONCEPTS], axis=1)
    sh = score_disentanglement(
        {c: shared_tr for c in CONCEPTS}, tr, {c: shared_te for c in CONCEPTS}, te, CONCEPTS
    )
    assert all(sh[f"acc:{c}"] == 1.0 for c in CONCEPTS)
    assert all(abs(sh[f"exclusivity:{c}"]) < 0.1 for c in CONCEPTS)
    # deduplicated: DCI sees the 9 one-hot columns once, exactly like the factorised run
    assert sh["dci_d"] == pytest.approx(out["dci_d"])

    no_off = score_disentanglement(emb_tr, tr, emb_te, te, CONCEPTS, off_diagonal=False)
    assert not any(k.startswith(("offdiag", "exclusivity")) for k in no_off)


def test_score_disentanglement_single_concept_and_errors(folds):
    tr, te = folds
    one = score_disentanglement({"age": _onehot(tr["age"])}, tr, {"age": _onehot(te["age"])}, te, ["age"])
    assert np.isnan(one["exclusivity:age"]) and np.isnan(one["dci_d"])
    emb_tr = {c: _onehot(tr[c]) for c in CONCEPTS}
    emb_te = {c: _onehot(te[c]) for c in CONCEPTS}
    with pytest.raises(BenchError, match="no embedding for concept 'age'"):
        score_disentanglement({}, tr, emb_te, te, CONCEPTS)
    with pytest.raises(BenchError, match="rows"):
        score_disentanglement(emb_tr, tr, {**emb_te, "age": emb_te["age"][:10]}, te, CONCEPTS)
    with pytest.raises(BenchError, match="not in test_obs"):
        score_disentanglement(emb_tr, tr, emb_te, te.drop(columns="age"), CONCEPTS)
    with pytest.raises(BenchError, match="not in test_obs"):
        score_disentanglement(emb_tr, tr, emb_te, te, CONCEPTS, {"ctype": "nope"})
    with pytest.raises(BenchError, match="dimensions on train"):
        score_disentanglement(emb_tr, tr, {**emb_te, "age": np.zeros((300, 7))}, te, CONCEPTS)
    with pytest.raises(BenchError, match="concepts is empty"):
        score_disentanglement(emb_tr, tr, emb_te, te, [])


def _radius_leak(obs: pd.DataFrame, seed: int) -> np.ndarray:
    """An embedding of ``age`` that also carries ``domain`` non-linearly: a 2-d point whose angle is
    random and whose radius is 1 or 2 by domain, beside age's one-hot (the findings' patient embedding
    carrying the drug). No linear function of it predicts domain beyond chance."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, len(obs))
    radius = np.where(np.asarray(obs["domain"], dtype=str) == "domain0", 1.0, 2.0)
    ring = np.c_[radius * np.cos(angle), radius * np.sin(angle)] * 3.0
    return np.c_[_onehot(obs["age"]), ring]


def test_nonlinear_leak_catches_what_the_linear_probe_misses(folds):
    tr, te = folds
    clean_tr = {c: _onehot(tr[c]) for c in CONCEPTS} | {"unexplained": np.random.default_rng(0).normal(size=(400, 4))}
    clean_te = {c: _onehot(te[c]) for c in CONCEPTS} | {"unexplained": np.random.default_rng(1).normal(size=(300, 4))}
    leaky_tr = clean_tr | {"age": _radius_leak(tr, 2), "unexplained": _radius_leak(tr, 3)[:, -2:]}
    leaky_te = clean_te | {"age": _radius_leak(te, 4), "unexplained": _radius_leak(te, 5)[:, -2:]}
    clean = score_disentanglement(clean_tr, tr, clean_te, te, CONCEPTS)
    leaky = score_disentanglement(leaky_tr, tr, leaky_te, te, CONCEPTS)
    for out in (clean, leaky):
        for name in out:
            metric_info(name)
    # the linear probe sees (almost) nothing of domain in the leaky age embedding ...
    assert leaky["offdiag_acc:age|domain"] <= majority_baseline(te["domain"]) + 0.08
    # ... the kNN probe reads it, beyond what age's label says; a clean embedding leaks nothing
    assert leaky["leak_nl:age"] > 0.3 and clean["leak_nl:age"] < 0.1
    assert leaky["u_leak_nl"] > 0.2 and clean["u_leak_nl"] < 0.1
    assert leaky["leak_nl:ctype"] == pytest.approx(clean["leak_nl:ctype"])  # only age's embedding changed


def test_nonlinear_leak_excuses_what_the_own_label_predicts():
    """A concept correlated with c in the data is predictable from a perfect z_c through c's label:
    not a leak."""
    rng = np.random.default_rng(0)

    def obs(n: int) -> pd.DataFrame:
        a = rng.integers(0, 3, n)
        b = np.where(rng.random(n) < 0.9, a % 2, 1 - a % 2)  # b follows a 90% of the time
        return pd.DataFrame({"a": pd.Categorical([f"a{v}" for v in a]), "b": pd.Categorical([f"b{v}" for v in b])})

    tr, te = obs(400), obs(300)
    emb_tr = {c: _onehot(tr[c]) for c in "ab"}
    emb_te = {c: _onehot(te[c]) for c in "ab"}
    out = score_disentanglement(emb_tr, tr, emb_te, te, ["a", "b"])
    assert out["offdiag_acc:a|b"] > 0.8  # the plain off-diagonal probe reads b from z_a
    assert out["leak_nl:a"] < 0.05

"""Metrics on expression: reconstruction (trend, geometry, marker + CT), distribution, counterfactual."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from causcell_bench.errors import BenchError
from causcell_bench.metrics import (
    deg_overlap,
    e_distance,
    effect_pcc,
    geometry_scores,
    marker_overlap,
    mean_expression_pcc,
    metric_info,
    mse,
    pearson_per_cell,
    predict_labels,
    score_counterfactual,
    score_distribution,
    score_reconstruction,
    wilcoxon_z,
)

CONCEPTS = ["a", "b"]


def _data(n: int = 300, g: int = 120, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """log1p counts with 6 concept-combination groups, each up-regulating its own genes."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"a": rng.choice(["a0", "a1", "a2"], n), "b": rng.choice(["b0", "b1"], n)})
    grp = pd.factorize(obs["a"] + obs["b"])[0]
    mu = rng.gamma(1.0, 1.0, (grp.max() + 1, g))
    for k in range(grp.max() + 1):
        mu[k, k * 15 : k * 15 + 15] += 6.0  # distinct markers per group
    x = np.log1p(rng.poisson(mu[grp] * rng.lognormal(0, 0.2, (n, 1)))).astype(np.float32)
    return x, obs


GENES = [f"g{i}" for i in range(120)]


# --- trend ---------------------------------------------------------------------------------------


def test_pcc_mse_identical_constant_and_sparse():
    x, _ = _data()
    assert np.allclose(pearson_per_cell(x, x), 1.0) and mse(x, x) == 0.0
    assert np.allclose(pearson_per_cell(x, -x), -1.0)
    y = x.copy()
    y[0] = 0.1  # constant generated cell
    x2 = x.copy()
    x2[1] = 0.0  # constant real cell
    r = pearson_per_cell(x2, y)
    assert r[0] == 0.0 and r[1] == 0.0 and np.isfinite(r).all()
    assert np.allclose(pearson_per_cell(sp.csr_matrix(x), y), pearson_per_cell(x, y))
    assert mse(sp.csr_matrix(x), y) == pytest.approx(mse(x, y))
    with pytest.raises(BenchError, match="same cells"):
        pearson_per_cell(x, x[:10])
    with pytest.raises(BenchError, match="NaN or inf"):
        mse(x, np.full_like(x, np.inf))


# --- marker genes ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scanpy's log fold changes of negative values
def test_wilcoxon_matches_scanpy():
    x, obs = _data(n=200, g=40, seed=1)
    x = x + np.random.default_rng(0).normal(0, 1e-3, x.shape).astype(np.float32)  # no ties
    groups = (obs["a"] + obs["b"]).to_numpy()
    uniq, codes = np.unique(groups, return_inverse=True)
    (z,) = wilcoxon_z(x, [codes])
    adata = ad.AnnData(x, obs=pd.DataFrame({"g": pd.Categorical(groups)}, index=[f"c{i}" for i in range(len(x))]))
    sc.tl.rank_genes_groups(adata, "g", method="wilcoxon", use_raw=False, n_genes=40)
    res = adata.uns["rank_genes_groups"]
    for k, name in enumerate(uniq):
        genes = res["names"][name].astype(int)
        assert np.allclose(z[k, genes], res["scores"][name], atol=1e-6)


def test_wilcoxon_average_ranks_with_ties_and_constant_genes():
    from scipy.stats import rankdata

    rng = np.random.default_rng(2)
    x = np.round(rng.gamma(0.5, 1.0, (150, 12)), 1)  # many ties, zeros included
    x[:, 0] = 3.0  # a constant gene
    codes = rng.integers(0, 4, 150)
    (z,) = wilcoxon_z(sp.csr_matrix(x), [codes])
    r = rankdata(x, axis=0)
    n = len(x)
    for k in range(4):
        nk = np.sum(codes == k)
        ref = (r[codes == k].sum(0) - nk * (n + 1) / 2) / np.sqrt(nk * (n - nk) * (n + 1) / 12)
        assert np.allclose(z[k], ref)
    assert np.all(z[:, 0] == 0.0)


def test_marker_overlap_identical_singletons_and_single_group():
    x, obs = _data()
    groups = (obs["a"] + obs["b"]).to_numpy().copy()
    assert marker_overlap(x, x, groups, GENES, top_k=15) == 1.0
    groups[0] = "lonely"  # a one-cell group is not scored
    assert marker_overlap(x, x, groups, GENES, top_k=15) == 1.0
    assert np.isnan(marker_overlap(x, x, ["one"] * len(x), GENES))
    assert marker_overlap(x, x, groups, GENES, top_k=500) == 1.0  # k above gene count: all genes
    with pytest.raises(BenchError, match="gene_names has 3 names"):
        marker_overlap(x, x, groups, ["a", "b", "c"])


# --- geometry ---------------------------------------------------------------------------------------


def test_geometry_identical_random_and_edges():
    x, _ = _data()
    g = geometry_scores(x, x, 6)
    assert g["nmi"] == pytest.approx(1.0) and g["ari"] == pytest.approx(1.0)
    noise = np.random.default_rng(0).permutation(x)  # unpaired cells
    r = geometry_scores(x, noise, 6)
    assert r["nmi"] < 0.2 and abs(r["ari"]) < 0.1
    few = geometry_scores(x[:5], x[:5], 8)  # fewer cells than clusters
    assert few["nmi"] == pytest.approx(1.0) and few["n_cells"] == 5
    assert np.isnan(geometry_scores(x[:1], x[:1])["nmi"])
    assert np.isnan(geometry_scores(x, x, 1)["ari"])  # a single cluster: nothing to compare
    sub = geometry_scores(sp.csr_matrix(x), x, 6, max_cells=100, seed=3)
    assert sub["n_cells"] == 100 and sub["ari"] == pytest.approx(1.0)


# --- score_reconstruction -----------------------------------------------------------------------------


def test_score_reconstruction_perfect_noisy_shuffled():
    x, obs = _data()
    perfect = score_reconstruction(sp.csr_matrix(x), x, obs, CONCEPTS, GENES, top_k=15, n_clusters=6)
    for name in perfect:
        metric_info(name)
    assert perfect["pcc"] == pytest.approx(1.0) and perfect["mse"] == 0.0
    assert perfect["nmi_geom"] == pytest.approx(1.0) and perfect["ari_geom"] == pytest.approx(1.0)
    assert perfect["marker"] == 1.0
    assert perfect["pcc_ct"] < 0.9 and perfect["mse_ct"] > 0.1 and perfect["marker_ct"] < 0.5

    rng = np.random.default_rng(1)
    noisy = score_reconstruction(x, x + rng.normal(0, 0.5, x.shape), obs, CONCEPTS, GENES, top_k=15, n_clusters=6)
    assert perfect["pcc"] > noisy["pcc"] > noisy["pcc_ct"]
    assert noisy["marker"] > noisy["marker_ct"]

    shuffled = score_reconstruction(x, rng.permutation(x), obs, CONCEPTS, GENES, top_k=15, n_clusters=6)
    # an unpaired reconstruction is its own control (both are random pairings)
    assert shuffled["pcc"] < 0.3 and shuffled["pcc"] == pytest.approx(shuffled["pcc_ct"], abs=0.1)
    assert shuffled["marker"] < 0.5 and shuffled["nmi_geom"] < 0.2


def test_score_reconstruction_validation():
    x, obs = _data()
    with pytest.raises(BenchError, match="same cells"):
        score_reconstruction(x, x[:, :10], obs, CONCEPTS, GENES)
    with pytest.raises(BenchError, match="obs has 10 rows"):
        score_reconstruction(x, x, obs[:10], CONCEPTS, GENES)
    with pytest.raises(BenchError, match=r"not in obs"):
        score_reconstruction(x, x, obs, ["c"], GENES)
    with pytest.raises(BenchError, match="gene_names"):
        score_reconstruction(x, x, obs, CONCEPTS, GENES[:5])
    with pytest.raises(BenchError, match="NaN"):
        score_reconstruction(x, np.full_like(x, np.nan), obs, CONCEPTS, GENES)


# --- distribution ---------------------------------------------------------------------------------


def test_distribution_identical_shifted_and_degs():
    x, obs = _data()
    src, real = x[:150], x[150:]
    assert e_distance(real, real) == 0.0
    assert 0 < e_distance(real, real + 0.2) < e_distance(real, real + 1.0)
    assert e_distance(real, real + 0.2, max_cells=50) > 0
    assert mean_expression_pcc(real, sp.csr_matrix(real)) == pytest.approx(1.0)
    assert mean_expression_pcc(real, np.ones_like(real)) == 0.0  # constant profile
    # a perturbation on 10 genes: predicting it recovers the DEGs, predicting "no change" does not
    pert = real.copy()
    pert[:, :10] += 3.0
    assert deg_overlap(pert, pert, src, GENES, top_k=10) == 1.0
    assert deg_overlap(src[:75], pert, src, GENES, top_k=10) < 0.3
    out = score_distribution(pert, pert, src, GENES, top_k=10)
    assert out == {"edist": 0.0, "mean_pcc": pytest.approx(1.0), "deg_overlap": 1.0,
                   "n_cells_edist": 2.0 * pert.shape[0]}
    assert score_distribution(pert, pert, max_cells=20)["n_cells_edist"] == 40.0  # subsampled: recorded
    assert "deg_overlap" not in score_distribution(pert, pert)
    with pytest.raises(BenchError, match="same genes"):
        score_distribution(pert, pert[:, :5])


# --- counterfactual ---------------------------------------------------------------------------------


def test_counterfactual_perfect_noop_and_zero_effect():
    x, obs = _data()
    rng = np.random.default_rng(0)
    fact = x
    true_cf = x + rng.normal(0, 1, x.shape)
    perfect = score_counterfactual(true_cf, true_cf, fact, fact)
    assert perfect["cf_pcc"] == pytest.approx(1.0) and perfect["cf_mse"] == 0.0
    assert perfect["effect_pcc"] == pytest.approx(1.0)
    noop = score_counterfactual(fact, true_cf, fact, fact)
    assert noop["effect_pcc"] == 0.0  # returning the input unchanged earns nothing
    same = true_cf.copy()
    same[:10] = fact[:10]  # ten cells the intervention leaves unchanged: left out
    assert effect_pcc(true_cf, same, fact, fact) == pytest.approx(1.0)
    assert np.isnan(effect_pcc(true_cf, fact, fact, fact))
    labs = score_counterfactual(
        true_cf, true_cf, fact, fact, descendant_labels={"a": (np.array(["x", "y"]), np.array(["x", "x"]))}
    )
    assert labs["causal_acc:a"] == 0.5 and metric_info("causal_acc:a").group == "cf_truth"
    with pytest.raises(BenchError, match="pair"):
        score_counterfactual(true_cf, true_cf, fact, fact, descendant_labels={"a": ["x"]})
    with pytest.raises(BenchError, match="true_factual"):
        score_counterfactual(true_cf, true_cf, fact, fact[:5])


def test_predict_labels_classifier():
    # the classifier that reads a descendant's label off counterfactual cells (causal_acc)
    x, obs = _data()
    y = obs["a"].to_numpy()
    x2, obs2 = _data(seed=0)  # same programme, fresh cells would come from the SCM
    pred = predict_labels(x, y, x2)
    assert np.mean(pred == obs2["a"].to_numpy()) > 0.95
    assert np.mean(pred == np.random.default_rng(0).permutation(obs2["a"].to_numpy())) < 0.6

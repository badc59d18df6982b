"""The synthetic SCM: determinism, exact counterfactuals, recorded truths."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from causcell_bench.datasets import age_trend_genes, simulate, synthetic_spec, true_counterfactual
from causcell_bench.errors import BenchError, DataError


@pytest.fixture(scope="module")
def sim():
    return simulate(n_cells=600, n_genes=120, seed=3)


def _argmax_rule(adata, age_codes, dom_codes):
    u = adata.uns["synthetic"]
    logits = np.asarray(u["W_base"])[None] + np.asarray(adata.obsm["gumbel"], np.float64)
    logits = logits + np.asarray(u["W_age"])[age_codes] + np.asarray(u["W_domain"])[dom_codes]
    return logits.argmax(1)


def test_layout_and_counts(sim):
    counts = sim.layers["counts"]
    assert sp.isspmatrix_csr(counts) and counts.dtype.kind == "i"
    assert counts.data.min() > 0 and (counts != sim.X).nnz == 0
    for c in ("age", "domain", "celltype", "celltype_fine"):
        assert sim.obs[c].dtype == "category"
    assert sim.obs["age"].cat.categories.tolist() == ["age_0", "age_1", "age_2"]
    assert sim.obs["celltype"].nunique() >= 3
    # every fine label nests in its coarse type
    assert all(f.startswith(c + "_") for c, f in zip(sim.obs["celltype"], sim.obs["celltype_fine"]))
    assert sim.obsm["gumbel"].shape == (600, 5)
    spec = synthetic_spec()
    assert spec.concepts == ["age", "domain", "celltype"] and spec.fine_labels == {"celltype": "celltype_fine"}
    assert synthetic_spec("none").edges == []


def test_deterministic_per_seed():
    a, b = simulate(200, 50, seed=7), simulate(200, 50, seed=7)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    assert a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.obsm["gumbel"], b.obsm["gumbel"])
    c = simulate(200, 50, seed=8)
    assert (a.layers["counts"] != c.layers["counts"]).nnz > 0


def test_factual_expression_matches_counts(sim):
    _, _, x_f = true_counterfactual(sim, {})
    counts = sim.layers["counts"].toarray().astype(np.float64)
    cp10k = counts / counts.sum(1, keepdims=True) * 1e4
    # gene means of the observed CP10k agree with the noiseless truth
    r = np.corrcoef(np.log1p(cp10k.mean(0)), np.log1p(np.expm1(x_f).mean(0)))[0, 1]
    assert r > 0.95


def test_do_factual_value_changes_nothing(sim):
    sub = sim[sim.obs["age"] == "age_1"].copy()
    obs_cf, x_cf, x_f = true_counterfactual(sub, {"age": "age_1"})
    assert (obs_cf["celltype"].astype(str).values == sub.obs["celltype"].astype(str).values).all()
    assert (obs_cf["celltype_fine"].astype(str).values == sub.obs["celltype_fine"].astype(str).values).all()
    np.testing.assert_array_equal(x_cf, x_f)


def test_do_age_moves_celltype_by_the_argmax_rule(sim):
    obs_cf, x_cf, x_f = true_counterfactual(sim, {"age": "age_2"})
    # domain is no descendant of age: untouched
    assert (obs_cf["domain"].astype(str).values == sim.obs["domain"].astype(str).values).all()
    assert (obs_cf["age"] == "age_2").all()
    dom = sim.obs["domain"].cat.codes.to_numpy()
    expected = _argmax_rule(sim, np.full(sim.n_obs, 2), dom)
    got = obs_cf["celltype"].cat.codes.to_numpy()
    np.testing.assert_array_equal(got, expected)
    changed = got != sim.obs["celltype"].cat.codes.to_numpy()
    assert 0 < changed.sum() < sim.n_obs  # some cells change type, not all
    # cells already aged 2 are unchanged, in labels and expression
    old = (sim.obs["age"] == "age_2").to_numpy()
    assert not changed[old].any()
    np.testing.assert_array_equal(x_cf[old], x_f[old])
    assert np.abs(x_cf[~old] - x_f[~old]).max() > 0.1


def test_do_celltype_leaves_parents(sim):
    obs_cf, x_cf, _ = true_counterfactual(sim, {"celltype": "type_1"})
    for c in ("age", "domain"):
        assert (obs_cf[c].astype(str).values == sim.obs[c].astype(str).values).all()
    assert (obs_cf["celltype"] == "type_1").all()
    assert obs_cf["celltype_fine"].astype(str).str.startswith("type_1_").all()
    assert np.isfinite(x_cf).all() and x_cf.dtype == np.float32


def test_no_dag_variant_keeps_celltype():
    a = simulate(300, 60, seed=1, dag="none")
    assert a.uns["synthetic"]["edges"] == ""
    obs_cf, x_cf, x_f = true_counterfactual(a, {"age": "age_0"})
    assert (obs_cf["celltype"].astype(str).values == a.obs["celltype"].astype(str).values).all()
    young = (a.obs["age"] == "age_0").to_numpy()
    assert np.abs(x_cf[~young] - x_f[~young]).max() > 0.1  # age still acts on expression


def test_age_trend_genes_are_cell_type_specific_and_monotone(sim):
    trends = age_trend_genes(sim)
    assert len(trends) == 5 * 5 and set(trends["direction"]) <= {-1, 1}
    genes = list(sim.var_names)
    xs = [true_counterfactual(sim, {"age": f"age_{a}"}) for a in range(3)]
    tested = 0
    for row in trends.itertuples():
        keep = np.ones(sim.n_obs, dtype=bool)
        for obs_cf, _, _ in xs:  # cells of this type under every age
            keep &= (obs_cf["celltype"] == row.celltype).to_numpy()
        if keep.sum() < 3:
            continue
        g = genes.index(row.gene)
        means = [x[keep, g].mean() for _, x, _ in xs]
        steps = np.diff(means) * row.direction
        assert (steps > 0).all(), (row, means)
        tested += 1
    assert tested >= len(trends) // 2
    # interaction: the same gene's age effect differs across cell types
    e_int = np.asarray(sim.uns["synthetic"]["E_int"])
    assert np.abs(e_int[2] - e_int[0]).std(axis=0).max() > 0


def test_truth_survives_h5ad_round_trip_and_gene_subset(sim, tmp_path):
    import anndata

    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    back = anndata.read_h5ad(path)
    a = true_counterfactual(sim, {"domain": "domain_0"})
    b = true_counterfactual(back, {"domain": "domain_0"})
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].equals(b[0])
    # a gene subset renormalises over the kept genes
    genes = sim.var_names[::3]
    _, x_sub, _ = true_counterfactual(sim[:, genes].copy(), {"domain": "domain_0"})
    p = np.expm1(a[1].astype(np.float64))[:, ::3]
    np.testing.assert_allclose(x_sub, np.log1p(p / p.sum(1, keepdims=True) * 1e4), rtol=1e-4, atol=1e-4)


def test_bad_interventions_and_inputs(sim):
    with pytest.raises(BenchError, match="known values"):
        true_counterfactual(sim, {"age": "ancient"})
    with pytest.raises(BenchError, match="cannot intervene"):
        true_counterfactual(sim, {"u": "1"})
    from causcell_bench.testing import tiny_dataset

    tiny, _ = tiny_dataset(n_cells=20, n_genes=10)
    with pytest.raises(DataError, match="simulate"):
        true_counterfactual(tiny, {"age": "age0"})
    edited = sim[:50].copy()
    edited.obs["celltype"] = edited.obs["celltype"].cat.codes.map(lambda k: f"type_{(k + 1) % 5}").astype("category")
    with pytest.raises(DataError, match="edited"):
        true_counterfactual(edited, {})
    with pytest.raises(BenchError, match="dag"):
        simulate(10, 10, dag="chain")
    with pytest.raises(BenchError, match="at least 2"):
        simulate(10, 10, n_age=1)


def test_label_posterior_is_the_best_prediction_without_the_noise(sim):
    from causcell_bench.datasets import counterfactual_label_posterior

    old = str(sim.obs["age"].cat.categories[-1])
    cells = sim[sim.obs["age"].astype(str).to_numpy() != old]
    frame = counterfactual_label_posterior(cells, {"age": old}, n_samples=50_000)
    assert list(frame.index) == list(cells.obs_names)
    cats = np.array([str(c) for c in frame.columns])
    post = frame.to_numpy()
    np.testing.assert_allclose(post.sum(1), 1.0)
    fact = cells.obs["celltype"].astype(str).to_numpy()
    truth = true_counterfactual(cells, {"age": old})[0]["celltype"].astype(str).to_numpy()
    assert (truth != fact).any()  # some cells change type
    # calibrated: the mean posterior of each type matches how often it is the true counterfactual
    for j, t in enumerate(cats):
        assert abs(post[:, j].mean() - (truth == t).mean()) < 0.05
    # its mode beats keeping every type, but not the stored-noise truth: the noise is not observed
    acc = np.mean(cats[post.argmax(1)] == truth)
    assert np.mean(fact == truth) <= acc < 1.0
    # do(celltype) is certain; without the DAG nothing moves
    assert (counterfactual_label_posterior(cells, {"celltype": cats[0]})[cats[0]] == 1).all()
    flat = simulate(n_cells=300, n_genes=40, seed=1, dag="none")
    p0 = counterfactual_label_posterior(flat, {"age": old}, n_samples=20_000)
    assert (p0.idxmax(axis=1) == flat.obs["celltype"].astype(str)).all() and np.allclose(p0.max(axis=1), 1.0)
    # a root has no noise to abduct: it takes the intervened value or keeps its own
    ages = counterfactual_label_posterior(cells, {"age": old}, concept="age")
    assert (ages[old] == 1).all()
    doms = counterfactual_label_posterior(cells, {"age": old}, concept="domain")
    assert (doms.idxmax(axis=1) == cells.obs["domain"].astype(str)).all()
    with pytest.raises(BenchError, match="not a concept"):
        counterfactual_label_posterior(cells, {"batch": "b"})

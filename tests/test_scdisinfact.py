"""scDisInFact (clean-room): determinism, and what the model is for:
z_d carries its own condition, z_c none, and counterfactual shifts move cells the right way."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from causcell_bench.datasets import load, preprocess, true_counterfactual
from causcell_bench.errors import BenchError
from causcell_bench.methods.scdisinfact import ScDisInFact
from causcell_bench.testing import tiny_dataset

TINY = ScDisInFact.test_params  # the conformance kit runs on this preset in test_conformance.py


def test_same_seed_same_model_other_seed_other_model() -> None:
    adata, spec = tiny_dataset(n_cells=160, n_genes=40)
    outs = []
    for seed in (0, 0, 1):
        m = ScDisInFact(device="cpu", **TINY)
        m.fit(adata, spec, seed=seed)
        outs.append(m.embed(adata)["unexplained"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])


def test_batch_concept_gets_shared_latent_and_can_be_intervened_on() -> None:
    adata, spec = tiny_dataset(n_cells=160, n_genes=40)
    spec = spec.model_copy(update={"batch": "domain"})
    m = ScDisInFact(device="cpu", **TINY)
    m.fit(adata, spec, seed=0)
    assert m.conditions_ == ["age", "celltype"]
    emb = m.embed(adata)
    assert list(emb) == [*spec.concepts, "unexplained"]
    np.testing.assert_array_equal(emb["domain"], emb["unexplained"])
    assert emb["age"].shape[1] == m.params["z_d_dim"] and emb["unexplained"].shape[1] == m.params["z_c_dim"]
    rec = m.generate(adata, seed=0)
    swapped = m.generate(adata, do={"domain": "dom1"}, seed=0)
    dom0 = (adata.obs["domain"] == "dom0").to_numpy()
    assert not np.allclose(rec[dom0], swapped[dom0])  # the decoder's batch input changed
    np.testing.assert_allclose(rec[~dom0], swapped[~dom0], atol=1e-5)  # already dom1: nothing to do
    # a batch value the model never saw cannot be encoded
    odd = adata[:5].copy()
    odd.obs["domain"] = odd.obs["domain"].cat.add_categories("dom9")
    odd.obs.loc[odd.obs_names[0], "domain"] = "dom9"
    with pytest.raises(BenchError, match="never seen"):
        m.embed(odd)


def test_needs_a_condition_besides_the_batch() -> None:
    adata, spec = tiny_dataset(n_cells=80, n_genes=20)
    spec = spec.with_overrides(concepts=["domain"], batch="domain")
    with pytest.raises(BenchError, match="condition"):
        ScDisInFact(device="cpu", **TINY).fit(adata, spec, seed=0)


def test_bad_device_is_a_clear_error() -> None:
    adata, spec = tiny_dataset(n_cells=80, n_genes=20)
    with pytest.raises(BenchError, match="device"):
        ScDisInFact(device="tpu", **TINY).fit(adata, spec, seed=0)


@pytest.fixture(scope="module")
def fitted_on_synthetic() -> tuple:
    raw, spec = load("synthetic", n_cells=900, n_genes=150, seed=0, n_domain=2, n_celltype=3)
    test_mask = np.random.default_rng(0).random(raw.n_obs) < 0.3
    train, test = preprocess(raw[~test_mask].copy(), raw[test_mask].copy(), spec, n_hvg=None)
    m = ScDisInFact(device="cpu", epochs=25, batch_per_group=8)
    m.fit(train, spec, seed=0)
    return m, spec, train, test, raw[test_mask].copy()


def test_z_d_holds_its_condition_and_z_c_none(fitted_on_synthetic: tuple) -> None:
    m, spec, train, test, _ = fitted_on_synthetic
    etr, ete = m.embed(train), m.embed(test)
    for c in spec.concepts:
        ytr, yte = train.obs[c].astype(str).to_numpy(), test.obs[c].astype(str).to_numpy()
        values, counts = np.unique(ytr, return_counts=True)
        majority = float((yte == values[counts.argmax()]).mean())

        def probe(key: str) -> float:
            return LogisticRegression(max_iter=2000).fit(etr[key], ytr).score(ete[key], yte)

        own, shared = probe(c), probe("unexplained")
        assert own >= max(0.9, majority + 0.3), f"z_d of {c} predicts it at {own:.2f} (majority {majority:.2f})"
        assert shared <= majority + 0.1, f"z_c predicts {c} at {shared:.2f} (majority {majority:.2f})"


def test_counterfactual_moves_cells_like_the_true_intervention(fitted_on_synthetic: tuple) -> None:
    m, _, _, test, raw_test = fitted_on_synthetic
    target = str(test.obs["domain"].cat.categories[-1])
    moved = (test.obs["domain"] != target).to_numpy()
    rec = m.generate(test, seed=0)
    cf = m.generate(test, do={"domain": target}, seed=0)
    _, true_cf, true_fact = true_counterfactual(raw_test, do={"domain": target})
    np.testing.assert_allclose(rec[~moved], cf[~moved], atol=1e-5)  # already there: no shift
    pred_delta, true_delta = (cf - rec)[moved], (true_cf - true_fact)[moved]
    # the predicted change of each cell points the way the true change does
    corr = [np.corrcoef(p, t)[0, 1] for p, t in zip(pred_delta, true_delta)]
    assert np.mean(corr) > 0.4, f"mean per-cell correlation of predicted vs true change {np.mean(corr):.2f}"


def test_the_quick_epoch_cap_falls_with_the_cells_so_the_fit_grows_at_most_linearly() -> None:
    from causcell_bench.methods.scdisinfact import epoch_cap

    q = ScDisInFact.presets["quick"]
    cap = lambda n: epoch_cap(n, q["epochs"], q["epoch_cells"], q["min_epochs"])  # noqa: E731
    assert cap(860) == cap(1400) == 300  # the demo's and CI's sizes: unchanged
    assert 60 < cap(3000) < 300 and cap(7200) == cap(40000) == 60
    # updates per fit ~ cap x cells: constant while the cap falls, then linear at the floor
    assert cap(7200) * 7200 <= cap(1400) * 1400 * 1.05 and cap(40000) * 40000 == 60 * 40000
    assert epoch_cap(10**6, 100, None) == 100 and epoch_cap(10**6, 2, 420_000, 60) == 2  # off; a cap below the floor
    with pytest.raises(BenchError, match="epoch_cells"):
        epoch_cap(100, 300, 0, 60)


def test_a_fit_records_the_cap_it_ran_under() -> None:
    adata, spec = tiny_dataset(n_cells=120, n_genes=20)
    m = ScDisInFact(device="cpu", epochs=30, epoch_cells=540, min_epochs=4, batch_per_group=8, early_stopping=True,
                    patience=50)
    m.fit(adata, spec, seed=0)
    conv = m.convergence_["training"]
    assert conv["cap"] == 5 and len(m.history_) == 5  # 540 / 108 cells it trains on (a tenth held out)

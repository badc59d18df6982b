"""CPA (clean-room): determinism, label-embedding swaps, and the adversarial
property: adversary accuracy on z_basal falls towards the majority rate while reconstruction
improves — and only because of the adversarial term (a reg_adv = 0 control keeps it high)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from causcell_bench.datasets import load, preprocess, true_counterfactual
from causcell_bench.errors import BenchError
from causcell_bench.methods.cpa import CPA
from causcell_bench.testing import tiny_dataset

TINY = CPA.test_params  # the conformance kit runs on this preset in test_conformance.py


def test_same_seed_same_model_other_seed_other_model() -> None:
    adata, spec = tiny_dataset(n_cells=160, n_genes=40)
    outs = []
    for seed in (0, 0, 1):
        m = CPA(device="cpu", **TINY)
        m.fit(adata, spec, seed=seed)
        outs.append(m.generate(adata, seed=0))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])


def test_perturbation_from_spec_and_label_swaps() -> None:
    adata, spec = tiny_dataset(n_cells=160, n_genes=40)
    spec = spec.model_copy(update={"perturbation": "domain"})
    m = CPA(device="cpu", **TINY)
    m.fit(adata, spec, seed=0)
    assert m.perturbation_ == "domain" and m.covariates_ == ["age", "celltype"]
    emb = m.embed(adata)
    assert list(emb) == [*spec.concepts, "unexplained"]
    assert emb["unexplained"].shape == (adata.n_obs, m.params["latent_dim"])
    # the basal latent varies per cell, the label embeddings only per label
    assert len(np.unique(emb["unexplained"].round(5), axis=0)) > adata.n_obs // 2
    assert len(np.unique(emb["celltype"].round(5), axis=0)) == adata.obs["celltype"].nunique()
    rec = m.generate(adata, seed=0)
    for concept, value in (("domain", "dom1"), ("age", "age2")):  # perturbation, then a covariate
        cf = m.generate(adata, do={concept: value}, seed=0)
        same = (adata.obs[concept] == value).to_numpy()
        np.testing.assert_allclose(rec[same], cf[same], atol=1e-5)  # own label: unchanged
        assert not np.allclose(rec[~same], cf[~same])


def test_history_and_bad_params() -> None:
    adata, spec = tiny_dataset(n_cells=120, n_genes=30)
    m = CPA(device="cpu", **TINY)
    m.fit(adata, spec, seed=0)
    assert len(m.history_) == TINY["epochs"]
    for h in m.history_:
        assert set(h["adv_acc"]) == set(spec.concepts) and np.isfinite(h["recon"])
    alt = CPA(device="cpu", adv_objective="confusion", **TINY)  # the bounded alternative also trains
    alt.fit(adata, spec, seed=0)
    assert np.isfinite(alt.generate(adata, seed=0)).all()
    with pytest.raises(BenchError, match="adv_objective"):
        CPA(device="cpu", adv_objective="nope", **TINY).fit(adata, spec, seed=0)
    with pytest.raises(BenchError, match="no parameter"):
        CPA(device="cpu", n_epochs=3)


@pytest.fixture(scope="module")
def synthetic() -> tuple:
    raw, spec = load("synthetic", n_cells=900, n_genes=150, seed=0, n_domain=2, n_celltype=3)
    test_mask = np.random.default_rng(0).random(raw.n_obs) < 0.3
    train, test = preprocess(raw[~test_mask].copy(), raw[test_mask].copy(), spec, n_hvg=None)
    return spec, train, test, raw[test_mask].copy()


def _fit(synthetic: tuple, **params: float) -> CPA:
    spec, train, _, _ = synthetic
    m = CPA(device="cpu", **{"epochs": 25, "adv_warmup": 4, **params})
    m.fit(train, spec, seed=0)
    return m


def _leakage(m: CPA, synthetic: tuple) -> float:
    """Mean over concepts of (held-out probe accuracy on z_basal - majority rate)."""
    spec, train, test, _ = synthetic
    ztr, zte = m.embed(train)["unexplained"], m.embed(test)["unexplained"]
    gaps = []
    for c in spec.concepts:
        ytr, yte = train.obs[c].astype(str).to_numpy(), test.obs[c].astype(str).to_numpy()
        values, counts = np.unique(ytr, return_counts=True)
        acc = LogisticRegression(max_iter=2000).fit(ztr, ytr).score(zte, yte)
        gaps.append(acc - float((yte == values[counts.argmax()]).mean()))
    return float(np.mean(gaps))


def test_adversary_is_driven_to_the_majority_rate(synthetic: tuple) -> None:
    # the quick preset holds a tenth of the training cells out for early stopping (which does not
    # trigger within 25 epochs here). Margins to the thresholds below, fit seeds 0 / 1 / 2 (the test
    # uses 0): peak 0.107 / 0.108 / 0.100, final 0.044 / 0.009 / 0.012, peak - final 0.071 / 0.037 /
    # 0.032, control 0.207 / 0.173 / 0.164, counterfactual correlation 0.24 / 0.23 / 0.24 (without the
    # hold-out, final was 0.030 / 0.098 / 0.039)
    m = _fit(synthetic)
    control = _fit(synthetic, reg_adv=0.0, epochs=10)  # its adversaries plateau high within 10 epochs
    majority = float(np.mean(list(m.majority_.values())))
    acc = [h["adv_acc_mean"] for h in m.history_]
    ctrl = [h["adv_acc_mean"] for h in control.history_]
    peak, final, ctrl_final = max(acc[:5]), float(np.mean(acc[-3:])), float(np.mean(ctrl[-3:]))
    assert peak >= majority + 0.1, f"adversaries never learned (peak {peak:.2f}, majority {majority:.2f})"
    assert final <= majority + 0.1, f"adversary accuracy ends at {final:.2f}, majority rate {majority:.2f}"
    assert final <= peak - 0.08
    assert ctrl_final >= final + 0.2, f"without the adversarial term it ends at {ctrl_final:.2f} vs {final:.2f}"
    recon = [h["recon"] for h in m.history_]
    assert recon[-1] < recon[0] - 0.1
    # a fresh probe reads less label information from z_basal than in the control
    assert _leakage(m, synthetic) < _leakage(control, synthetic)

    # counterfactuals point the way the true intervention does
    _, _, test, raw_test = synthetic
    target = str(test.obs["domain"].cat.categories[-1])
    moved = (test.obs["domain"] != target).to_numpy()
    rec, cf = m.generate(test, seed=0), m.generate(test, do={"domain": target}, seed=0)
    _, true_cf, true_fact = true_counterfactual(raw_test, do={"domain": target})
    corr = [np.corrcoef(p, t)[0, 1] for p, t in zip((cf - rec)[moved], (true_cf - true_fact)[moved])]
    assert np.mean(corr) > 0.4, f"mean per-cell correlation of predicted vs true change {np.mean(corr):.2f}"

"""MichiGAN (clean-room): training history, latent arithmetic, and the TC penalty's effect (the conformance kit
runs in test_conformance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from causcell_bench.errors import BenchError
from causcell_bench.methods.michigan import MichiGAN
from causcell_bench.models.michigan import estimate_total_correlation, gan_step_budget
from causcell_bench.testing import tiny_dataset, tiny_split


def test_history_and_shared_code() -> None:
    train, _, spec = tiny_split()
    m = MichiGAN(preset="test", device="cpu")
    m.fit(train, spec, seed=0)
    assert len(m.history_["vae_loss"]) == m.params["vae_epochs"]
    assert m.history_["gan_critic"] and np.isfinite(m.history_["gan_critic"]).all()
    adata, _ = tiny_dataset()
    emb = m.embed(adata)
    assert emb["age"].shape == (adata.n_obs, 10)
    assert emb["age"] is emb["celltype"]  # one shared code for every concept


def test_counterfactual_is_centroid_arithmetic() -> None:
    adata, spec = tiny_dataset(n_cells=200, n_genes=40)
    m = MichiGAN(preset="test", device="cpu")
    m.fit(adata, spec, seed=0)
    rec = m.generate(adata, seed=3)
    assert (rec >= 0).all()  # log1p(CP10k) space
    cf = m.generate(adata, do={"age": "age2"}, seed=3)
    already = (adata.obs["age"] == "age2").to_numpy()
    # cells already at the target label: zero shift, the reconstruction exactly
    np.testing.assert_allclose(cf[already], rec[already], atol=1e-6)
    assert not np.allclose(cf[~already], rec[~already])
    # the shift is the difference of training centroids (reproduce it by hand)
    cent = m.centroids_["age"]
    codes = m.embed(adata)["age"]
    lab = adata.obs["age"].cat.codes.to_numpy()
    np.testing.assert_allclose(codes[lab == 0].mean(0), cent[0], atol=1e-5)
    # fresh noise: another seed gives other cells
    assert not np.allclose(m.generate(adata, seed=4), rec)


def test_training_is_deterministic_under_a_seed() -> None:
    adata, spec = tiny_dataset(n_cells=160, n_genes=30)
    fits = []
    for seed in (0, 0, 1):
        m = MichiGAN(preset="quick", device="cpu", vae_epochs=2, gan_steps=3)
        m.fit(adata, spec, seed=seed)
        fits.append((m.embed(adata)["age"], m.generate(adata, seed=0)))
    np.testing.assert_array_equal(fits[0][0], fits[1][0])
    np.testing.assert_array_equal(fits[0][1], fits[1][1])
    assert not np.allclose(fits[0][0], fits[2][0])


def test_gan_budget_is_epochs_of_the_training_cells_within_floor_and_cap() -> None:
    assert gan_step_budget(1080, 64, 10, floor=0, cap=15000) == 169  # ceil(10 x 1080 / 64)
    assert gan_step_budget(2160, 64, 10, floor=0, cap=15000) == 338  # twice the cells, twice the steps
    assert gan_step_budget(100, 64, 10, floor=500, cap=15000) == 500  # few cells: the floor
    assert gan_step_budget(10**6, 64, 10, floor=500, cap=15000) == 15000  # many: the cap
    assert gan_step_budget(10**6, 64, 10, floor=500, cap=6) == 6  # a cap below the floor wins
    assert gan_step_budget(40, 64, 10, floor=0, cap=15000) == 10  # batch larger than the data: one per epoch
    assert gan_step_budget(1080, 64, None, floor=500, cap=30000) == 30000  # no epochs: the fixed budget


def test_quick_gan_runs_and_reports_its_data_sized_budget() -> None:
    """The GAN's progress total is the budget for these cells, not the cap, so the bar's ETA is honest."""
    train, _, spec = tiny_split()
    m = MichiGAN(preset="quick", device="cpu", vae_epochs=2, gan_epochs=3, gan_min_steps=0, gan_steps=500,
                 gan_batch_size=32, gan_patience=1000)
    reports = []
    m.progress_callback = reports.append
    m.fit(train, spec, seed=0)
    n_fit = train.n_obs - round(0.1 * train.n_obs)  # the validation tenth trains neither stage
    budget = gan_step_budget(n_fit, 32, 3, floor=0, cap=500)
    assert budget == int(np.ceil(3 * n_fit / 32)) < 500
    rec = m.convergence_["GAN"]
    assert rec["cap"] == rec["last"] == budget and not rec["stopped"]
    gan = [r for r in reports if r.what == "GAN training"]
    assert gan and {r.total for r in gan} == {budget} and gan[-1].done == budget


def test_presets_budget_the_gan() -> None:
    quick, paper = MichiGAN.presets["quick"], MichiGAN.presets["paper"]
    assert quick["gan_epochs"] is not None and quick["early_stopping"]
    assert 0 < quick["gan_min_steps"] < quick["gan_steps"]
    # the paper preset keeps its fixed budget
    assert paper["gan_epochs"] is None and paper["gan_steps"] == 30000 and not paper["early_stopping"]


def test_bad_parameters_are_refused() -> None:
    adata, spec = tiny_dataset(n_cells=60, n_genes=20)
    with pytest.raises(BenchError, match="lambda_tc"):
        MichiGAN(preset="quick", lambda_tc=-1.0).fit(adata, spec, seed=0)
    with pytest.raises(BenchError, match="vae_epochs"):
        MichiGAN(preset="quick", vae_epochs=-1).fit(adata, spec, seed=0)
    with pytest.raises(BenchError, match="hidden"):
        MichiGAN(preset="quick", hidden=[]).fit(adata, spec, seed=0)
    with pytest.raises(BenchError, match="gan_epochs"):
        MichiGAN(preset="quick", gan_epochs=0).fit(adata, spec, seed=0)
    with pytest.raises(BenchError, match="no parameter"):
        MichiGAN(preset="quick", beta=4.0)
    with pytest.raises(BenchError, match="preset"):
        MichiGAN(preset="huge")


def test_tc_estimator_orders_independent_and_correlated_codes() -> None:
    rng = np.random.default_rng(0)
    std = np.full((600, 3), 0.3)
    independent = rng.normal(size=(600, 3))
    cov = np.full((3, 3), 0.9) + 0.1 * np.eye(3)
    correlated = rng.multivariate_normal(np.zeros(3), cov, size=600)
    assert estimate_total_correlation(correlated, std) > estimate_total_correlation(independent, std) + 0.5


def _synthetic(n_cells: int) -> tuple:
    """Preprocessed synthetic train/test (ground-truth SCM); tiny_dataset if the simulator is absent."""
    try:
        from causcell_bench.datasets import load, preprocess
    except ImportError:  # pragma: no cover - only before the datasets package existed
        adata, spec = tiny_dataset(n_cells=n_cells, n_genes=100, seed=5)
        mask = np.random.default_rng(0).random(adata.n_obs) < 0.25
        return adata[~mask].copy(), adata[mask].copy(), spec
    raw, spec = load("synthetic", n_cells=n_cells, seed=0, n_genes=100)
    mask = np.random.default_rng(0).random(raw.n_obs) < 0.25
    train, test = preprocess(raw[~mask].copy(), raw[mask].copy(), spec, n_hvg=None)
    return train, test, spec


def test_tc_penalty_lowers_total_correlation_of_the_code() -> None:
    train, test, spec = _synthetic(800)
    tcs = {}
    for lam in (0.0, 100.0):
        # stage 2 is irrelevant to the code: no GAN steps
        m = MichiGAN(preset="quick", device="cpu", lambda_tc=lam, vae_epochs=25, gan_steps=0)
        m.fit(train, spec, seed=0)
        mu, std = m.code_stats(test)
        tcs[lam] = estimate_total_correlation(mu, std, seed=0)
    assert tcs[100.0] < tcs[0.0] - 0.1, tcs

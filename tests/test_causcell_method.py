"""CausCell / CausCell_IND adapters: conformance kit, DAG wiring, counterfactual modes, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from causcell_bench.errors import BenchError, NotFittedError
from causcell_bench.methods.causcell import SAVE_FILE, CausCell, CausCellIND
from causcell_bench.testing import check_method, tiny_dataset

# a tiny budget: the point is behaviour, not quality
TINY = {
    "n_steps": 30,
    "batch_size": 64,
    "hidden": 32,
    "n_blocks": 1,
    "heads": 2,
    "head_dim": 8,
    "d": 8,
    "ff_mult": 2,
    "ddim_steps": 5,
    "pool_size": 16,
}


@pytest.fixture(scope="module")
def data():
    adata, spec = tiny_dataset(n_cells=160, n_genes=30)
    return adata[:120].copy(), adata[120:].copy(), spec


@pytest.fixture(scope="module")
def fitted(data):
    torch.set_num_threads(1)
    train, _, spec = data
    m = CausCell(device="cpu", **TINY)
    m.fit(train, spec, seed=0)
    return m


@pytest.mark.parametrize("cls", [CausCell, CausCellIND])
def test_conformance(cls) -> None:
    m = check_method(cls, params=TINY)
    assert m.history_ and all(np.isfinite(v) for v in m.history_[-1].values())


def test_dag_wiring(fitted, data) -> None:
    train, _, spec = data
    np.testing.assert_array_equal(fitted.model_.adjacency, spec.adjacency())
    ind = CausCellIND(device="cpu", **{**TINY, "n_steps": 2})
    ind.fit(train, spec, seed=0)
    assert not ind.model_.adjacency.any()
    assert CausCell.capabilities.uses_dag and not CausCellIND.capabilities.uses_dag


def test_embeddings(fitted, data) -> None:
    _, test, spec = data
    emb = fitted.embed(test)
    assert set(emb) == {*spec.concepts, "unexplained"}
    assert all(v.shape == (test.n_obs, TINY["d"]) for v in emb.values())
    # celltype's z is its parents' z plus its own eps (the SCM layer)
    eps, _ = fitted.model_.encode(test.X)
    np.testing.assert_allclose(emb["celltype"], emb["age"] + emb["domain"] + eps[:, 2], rtol=1e-4, atol=1e-5)


def test_counterfactual_semantics(fitted, data) -> None:
    _, test, _ = data
    factual = fitted.generate(test, seed=3)
    assert factual.dtype == np.float32 and (factual >= 0).all()
    cf = fitted.generate(test, do={"age": "age1"}, seed=3)
    at_target = (test.obs["age"] == "age1").to_numpy()
    assert at_target.any() and (~at_target).any()
    # do() is a no-op for cells already at the target value
    np.testing.assert_allclose(cf[at_target], factual[at_target], rtol=1e-4, atol=1e-4)
    assert not np.allclose(cf[~at_target], factual[~at_target])
    # age is a root: graph surgery and the authors' eps swap coincide
    ex = fitted.generate(test, do={"age": "age1"}, seed=3, mode="exogenous")
    np.testing.assert_allclose(ex, cf, rtol=1e-4, atol=1e-4)
    # several concepts at once
    both = fitted.generate(test, do={"age": "age0", "domain": "dom1"}, seed=3)
    assert both.shape == factual.shape and np.isfinite(both).all()
    with pytest.raises(BenchError, match="mode"):
        fitted.generate(test, do={"age": "age1"}, seed=3, mode="surgery")


def test_sampler_overrides(fitted, data) -> None:
    _, test, _ = data
    a = fitted.generate(test[:10], seed=0, sampler="ancestral", n_samples=2)
    b = fitted.generate(test[:10], seed=0, sampler="ddim", steps=3)
    assert a.shape == b.shape == (10, test.n_vars)
    with pytest.raises(BenchError, match="sampler"):
        fitted.generate(test, seed=0, sampler="euler")


def test_save_load_single_file(fitted, data, tmp_path) -> None:
    _, test, _ = data
    fitted.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [SAVE_FILE]
    m2 = CausCell.load(tmp_path)
    np.testing.assert_array_equal(fitted.generate(test, seed=5), m2.generate(test, seed=5))
    np.testing.assert_array_equal(
        fitted.generate(test, do={"domain": "dom0"}, seed=5), m2.generate(test, do={"domain": "dom0"}, seed=5)
    )
    assert m2.params == fitted.params and m2.categories_ == fitted.categories_
    with pytest.raises(BenchError, match="CausCell"):
        CausCellIND.load(tmp_path)
    with pytest.raises(BenchError, match=SAVE_FILE):
        CausCell.load(tmp_path / "nothing-here")


def test_bad_input_is_refused(data) -> None:
    train, test, spec = data
    with pytest.raises(NotFittedError):
        CausCell(**TINY).generate(test, seed=0)
    with pytest.raises(BenchError, match="no parameter"):
        CausCell(epochs=3)
    with pytest.raises(BenchError, match="mode"):
        CausCell(mode="surgery")
    scaled = train.copy()
    scaled.X = sp.csr_matrix(scaled.X.toarray() - 1.0)
    with pytest.raises(BenchError, match="negative"):
        CausCell(**TINY).fit(scaled, spec, seed=0)

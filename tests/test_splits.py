"""ID and OOD folds: partition, stratification, held-out combinations, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from causcell_bench.datasets import DatasetSpec, Split, load_splits, make_splits, save_splits, simulate, synthetic_spec
from causcell_bench.errors import BenchError, DataError


@pytest.fixture(scope="module")
def data():
    return simulate(n_cells=1500, n_genes=20, seed=5), synthetic_spec()


def _combos(obs: pd.DataFrame, concepts: list[str], idx: np.ndarray) -> set[tuple[str, ...]]:
    return set(map(tuple, obs.iloc[idx][concepts].astype(str).to_numpy()))


def _assert_partition(splits: list[Split], n: int) -> None:
    tests = np.concatenate([s.test_idx for s in splits])
    assert np.array_equal(np.sort(tests), np.arange(n))  # disjoint and covering
    for s in splits:
        assert np.intersect1d(s.train_idx, s.test_idx).size == 0
        assert s.train_idx.size + s.test_idx.size == n


def test_id_folds_partition_and_stratify(data):
    adata, spec = data
    splits = make_splits(adata, spec, "ID", n_folds=5, seed=0)
    assert [s.fold for s in splits] == list(range(5)) and all(s.setting == "ID" for s in splits)
    _assert_partition(splits, adata.n_obs)
    sizes = [s.test_idx.size for s in splits]
    assert max(sizes) - min(sizes) <= 0.05 * adata.n_obs
    counts = adata.obs.groupby(spec.concepts, observed=True).size()
    common = {tuple(map(str, k)) for k, v in counts.items() if v >= 5}
    for s in splits:  # every combination with >= n_folds cells is in every training part
        assert common <= _combos(adata.obs, spec.concepts, s.train_idx)
        assert s.held_out == []


def test_id_deterministic_per_seed(data):
    adata, spec = data
    a, b = make_splits(adata, spec, "ID", seed=1), make_splits(adata, spec, "ID", seed=1)
    c = make_splits(adata, spec, "ID", seed=2)
    assert all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, b))
    assert not all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, c))


def test_ood_folds_hold_out_unseen_combinations(data):
    adata, spec = data
    splits = make_splits(adata, spec, "OOD", n_folds=5, seed=0)
    _assert_partition(splits, adata.n_obs)
    obs = adata.obs
    for s in splits:
        train_c, test_c = _combos(obs, spec.concepts, s.train_idx), _combos(obs, spec.concepts, s.test_idx)
        assert test_c and not (train_c & test_c)  # test combinations never seen in training
        assert test_c == {tuple(d[c] for c in spec.concepts) for d in s.held_out}
        for c in spec.concepts:  # but every single value is
            assert set(obs[c].iloc[s.test_idx].astype(str)) <= set(obs[c].iloc[s.train_idx].astype(str))
    a = make_splits(adata, spec, "OOD", seed=0)
    assert all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, splits))


def test_ood_on_a_subset_of_concepts_keeps_other_values_in_training(data):
    adata, spec = data
    spec2 = spec.with_overrides(ood_concepts=["age", "domain"])
    for s in make_splits(adata, spec2, "OOD", seed=3):
        assert not (_combos(adata.obs, ["age", "domain"], s.train_idx) & _combos(adata.obs, ["age", "domain"], s.test_idx))
        assert set(adata.obs["celltype"].iloc[s.train_idx]) == set(adata.obs["celltype"])
        assert set(s.held_out[0]) == {"age", "domain"}


def _frame(rows: list[tuple[str, str, int]]) -> AnnData:
    labels = [(a, b) for a, b, k in rows for _ in range(k)]
    obs = pd.DataFrame(labels, columns=["a", "b"], index=[f"c{i}" for i in range(len(labels))])
    return AnnData(obs=obs)


SPEC_AB = DatasetSpec(name="t", source="x", concepts=["a", "b"])


def test_ood_impossible_is_explained():
    few = _frame([("a1", "b1", 10), ("a1", "b2", 10), ("a2", "b1", 10), ("a2", "b2", 10)])
    with pytest.raises(DataError, match="fewer than the 5 folds"):
        make_splits(few, SPEC_AB, "OOD", n_folds=5)
    # a value in one combination only: that combination stays in training, with a warning
    rows = [(f"a{i}", f"b{j}", 5) for i in range(3) for j in range(3)] + [("a9", "b0", 5)]
    with pytest.warns(UserWarning, match="a=a9"):
        splits = make_splits(_frame(rows), SPEC_AB, "OOD", n_folds=3)
    assert all({"a": "a9", "b": "b0"} in s.pinned for s in splits)
    assert all({"a": "a9", "b": "b0"} not in s.held_out for s in splits)


def test_bad_arguments(data):
    adata, spec = data
    with pytest.raises(BenchError, match="ID' or 'OOD"):
        make_splits(adata, spec, "XYZ")
    with pytest.raises(DataError, match="not in obs"):
        make_splits(adata.obs.drop(columns=["domain"]), spec, "ID")


def test_save_load_round_trip(data, tmp_path):
    adata, spec = data
    for setting in ("ID", "OOD"):
        splits = make_splits(adata, spec, setting, seed=4)
        path = save_splits(splits, tmp_path / f"{setting}.json")
        back = load_splits(path, adata)
        for x, y in zip(splits, back):
            assert (x.fold, x.setting, x.seed, x.held_out) == (y.fold, y.setting, y.seed, y.held_out)
            assert np.array_equal(x.train_idx, y.train_idx) and np.array_equal(x.test_idx, y.test_idx)
        train, test = back[0].subset(adata)
        assert train.n_obs + test.n_obs == adata.n_obs
    other = simulate(n_cells=1500, n_genes=20, seed=5)
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    with pytest.raises(DataError, match="other cells"):
        load_splits(tmp_path / "ID.json", other)

"""Reference methods (group_mean, additive_shift, no_change): exact behaviour, sanity bands (the conformance
kit runs in test_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from causcell_bench import registry
from causcell_bench.datasets import load, preprocess, true_counterfactual
from causcell_bench.errors import BenchError
from causcell_bench.methods.base import STATE_FILE
from causcell_bench.methods.references import AdditiveShift, GroupMean, NoChange
from causcell_bench.testing import tiny_split

REFS = (GroupMean, AdditiveShift, NoChange)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-cell Pearson r between rows of ``a`` and ``b``."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)).mean())


def _is(obs_col, value: str) -> np.ndarray:
    return (obs_col.astype(str) == value).to_numpy()


@pytest.fixture(scope="module")
def synthetic() -> tuple:
    raw, spec = load("synthetic", n_cells=1500, n_genes=100, seed=0)
    test_mask = np.random.default_rng(0).random(raw.n_obs) < 0.3
    train, test = preprocess(raw[~test_mask].copy(), raw[test_mask].copy(), spec, n_hvg=None)
    return train, test, spec


def test_registered_after_controls_and_kinds() -> None:
    names = registry.resolve_methods("all")
    assert names[:5] == [*registry.CONTROLS, *registry.REFERENCES]
    assert [registry.get_method(n) for n in registry.REFERENCES] == list(REFS)
    assert all(registry.get_method(n).kind == "control" for n in registry.CONTROLS)
    assert all(cls.kind == "reference" for cls in REFS)
    assert registry.get_method("scVI").kind == "method"


def test_bad_do_and_params_are_bench_errors() -> None:
    train, test, spec = tiny_split()
    for cls in REFS:
        m = cls(device="cpu")
        m.fit(train, spec, seed=0)
        with pytest.raises(BenchError, match="not a concept"):
            m.generate(test, do={"colour": "red"}, seed=0)
        with pytest.raises(BenchError, match="never seen in training"):
            m.generate(test, do={"age": "age99"}, seed=0)
    for bad in (0, -1, 2.5, "5"):
        with pytest.raises(BenchError, match="min_cells"):
            AdditiveShift(min_cells=bad)
    with pytest.raises(BenchError, match="no parameter"):
        GroupMean(min_cell=3)


def test_no_change_returns_exactly_x(synthetic) -> None:
    train, test, spec = synthetic
    m = NoChange()
    m.fit(train, spec, seed=0)
    x = test.X.toarray()
    np.testing.assert_array_equal(m.generate(test, seed=0), x)
    np.testing.assert_array_equal(m.generate(test, do={"age": str(train.obs["age"].cat.categories[0])}, seed=0), x)


def test_group_mean_is_the_combination_mean_and_beats_shuffled(synthetic) -> None:
    train, test, spec = synthetic
    m = GroupMean()
    m.fit(train, spec, seed=0)
    rec = m.generate(test, seed=0)
    # exact: a seen combination is predicted as the mean of its training cells
    row = test.obs.iloc[0]
    same = np.ones(train.n_obs, dtype=bool)
    for c in spec.concepts:
        same &= _is(train.obs[c], str(row[c]))
    np.testing.assert_allclose(rec[0], train.X[same].toarray().mean(0), rtol=1e-5, atol=1e-5)
    # sanity band: the right combination's mean fits a cell better than another cell's
    x = test.X.toarray()
    shuffled = rec[np.random.default_rng(0).permutation(test.n_obs)]
    r_own, r_shuf = _pearson(rec, x), _pearson(shuffled, x)
    assert r_own > 0.6 and r_own > r_shuf + 0.03, (r_own, r_shuf)


def test_group_mean_counterfactual_is_prediction_for_the_new_combination(synthetic) -> None:
    train, test, spec = synthetic
    m = GroupMean()
    m.fit(train, spec, seed=0)
    v = str(train.obs["age"].cat.categories[-1])
    relabelled = test.copy()
    relabelled.obs["age"] = relabelled.obs["age"].cat.set_categories(train.obs["age"].cat.categories)
    relabelled.obs.loc[:, "age"] = v
    # descendants (celltype) keep the cell's label: the same as the factual prediction of relabelled cells
    np.testing.assert_array_equal(m.generate(test, do={"age": v}, seed=0), m.generate(relabelled, seed=0))


def test_group_mean_unseen_combination(synthetic) -> None:
    train, test, spec = synthetic
    key = train.obs[spec.concepts].astype(str).agg("|".join, axis=1)
    sizes = key.value_counts()
    held = None
    for combo in sizes.index:  # largest combination whose every value still occurs elsewhere in training
        rest = train.obs[(key != combo).to_numpy()]
        if all(v in set(rest[c].astype(str)) for c, v in zip(spec.concepts, combo.split("|"))):
            held = combo
            break
    assert held is not None and sizes[held] >= 15
    inside = (key == held).to_numpy()
    m = GroupMean()
    m.fit(train[~inside].copy(), spec, seed=0)
    cells = train[inside].copy()
    pred = m.generate(cells, seed=0)
    assert np.isfinite(pred).all() and pred.min() >= 0.0
    assert np.allclose(pred, pred[0]), "one combination, one prediction"
    # the additive model beats the overall training mean at predicting the held-out population
    real = cells.X.toarray().mean(0)
    overall = np.asarray(train[~inside].X.mean(0)).ravel()
    err_add, err_mean = np.linalg.norm(pred[0] - real), np.linalg.norm(overall - real)
    assert err_add < 0.8 * err_mean, (err_add, err_mean)


def test_group_mean_refuses_unseen_value_unless_set(synthetic) -> None:
    train, test, spec = synthetic
    m = GroupMean()
    m.fit(train, spec, seed=0)
    odd = test[:5].copy()
    odd.obs["age"] = odd.obs["age"].cat.add_categories(["age_new"])
    odd.obs.loc[odd.obs_names[0], "age"] = "age_new"
    with pytest.raises(BenchError, match="age_new"):
        m.generate(odd, seed=0)
    assert np.isfinite(m.generate(odd, do={"age": str(train.obs["age"].cat.categories[0])}, seed=0)).all()


def test_additive_shift_moves_towards_target(synthetic) -> None:
    train, test, spec = synthetic
    m = AdditiveShift()
    m.fit(train, spec, seed=0)
    x = test.X.toarray()
    np.testing.assert_array_equal(m.generate(test, seed=0), x)
    for v in train.obs["age"].cat.categories.astype(str):
        rows = ~_is(test.obs["age"], v)
        cells = test[rows].copy()
        before = x[rows]
        cf = m.generate(cells, do={"age": v}, seed=0)
        target = x[_is(test.obs["age"], v)].mean(0)  # real test cells with age v
        d0, d1 = np.linalg.norm(before.mean(0) - target), np.linalg.norm(cf.mean(0) - target)
        assert d1 < 0.85 * d0, (v, d0, d1)
        # and towards the simulator's exact counterfactuals, with a per-cell effect that correlates with the truth
        _, x_cf, x_fac = true_counterfactual(cells, {"age": v})
        assert np.linalg.norm(cf.mean(0) - x_cf.mean(0)) < np.linalg.norm(before.mean(0) - x_cf.mean(0))
        assert _pearson(cf - before, x_cf - x_fac) > 0.4
    # a cell already at the target value is unchanged
    own = str(test.obs["age"].iloc[0])
    np.testing.assert_array_equal(m.generate(test[:1].copy(), do={"age": own}, seed=0), x[:1])


def test_additive_shift_pooled_fallback_and_joint_do(synthetic) -> None:
    train, test, spec = synthetic
    # min_cells above any group size forces the pooled (all-training-cells) shift everywhere
    m = AdditiveShift(min_cells=10**9)
    m.fit(train, spec, seed=0)
    xt = train.X.toarray()

    def pooled(c: str, v: str, cur: np.ndarray) -> np.ndarray:
        means = {u: xt[_is(train.obs[c], u)].mean(0) for u in set(cur) | {v}}
        return np.stack([means[v] - means[u] for u in cur])

    age, dom = str(train.obs["age"].cat.categories[0]), str(train.obs["domain"].cat.categories[-1])
    x = test.X.toarray()
    expect = x + pooled("age", age, test.obs["age"].astype(str).to_numpy())
    expect += pooled("domain", dom, test.obs["domain"].astype(str).to_numpy())
    got = m.generate(test, do={"domain": dom, "age": age}, seed=0)
    np.testing.assert_allclose(got, np.clip(expect, 0.0, None), atol=1e-4)
    # the local (default) shift differs from the pooled one: other labels are matched
    local = AdditiveShift()
    local.fit(train, spec, seed=0)
    assert not np.allclose(local.generate(test, do={"age": age}, seed=0), m.generate(test, do={"age": age}, seed=0))


def test_saved_state_is_small(synthetic, tmp_path: Path) -> None:
    train, _, spec = synthetic
    for cls in (GroupMean, AdditiveShift):
        m = cls()
        m.fit(train, spec, seed=0)
        m.save(tmp_path / cls.name)
        # means per combination, not the training cells
        assert (tmp_path / cls.name / STATE_FILE).stat().st_size < train.X.data.nbytes / 4

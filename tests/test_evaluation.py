"""The grid's counterfactual task: truth scoring on synthetic and held-out populations in OOD."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from causcell_bench.datasets import load, make_splits, preprocess
from causcell_bench.errors import BenchError
from causcell_bench.grid import evaluate as evaluation
from causcell_bench.methods.controls import NegativeControl


@pytest.fixture(scope="module")
def ood_fold():
    adata, spec = load("synthetic", n_cells=900, n_genes=120)
    split = make_splits(adata, spec, "OOD", n_folds=3, seed=0)[0]
    train, test = preprocess(adata[split.train_idx], adata[split.test_idx], spec)
    return train, test, spec, split


class Spy(NegativeControl):
    """Records every population it is asked to intervene on."""

    name = "spy"

    def generate(self, adata, do=None, *, seed):  # type: ignore[override]
        if do:
            self.calls.append((adata.obs.copy(), dict(do)))
        return super().generate(adata, do, seed=seed)


def _combo_mask(obs, combo):
    mask = np.ones(len(obs), dtype=bool)
    for c, v in combo.items():
        mask &= obs[c].astype(str).to_numpy() == v
    return mask


def test_heldout_populations_never_leak_into_training(ood_fold) -> None:
    train, test, spec, split = ood_fold
    assert split.held_out
    for combo in split.held_out:
        assert not _combo_mask(train.obs, combo).any(), f"held-out combination {combo} found in training cells"
    m = Spy()
    m.calls = []
    m.fit(train, spec, seed=0)
    scores = evaluation.score_heldout_populations(m, train, test, spec, split.held_out, seed=0)
    assert m.calls and {"edist", "mean_pcc", "deg_overlap"} <= set(scores)
    assert scores["n_populations"] == len(m.calls) and scores["n_cells_edist"] > 0
    train_names = set(train.obs_names)
    for obs, do in m.calls:
        assert set(obs.index) <= train_names  # sources are training cells only
        for combo in split.held_out:
            assert not _combo_mask(obs, combo).any()
        # the intervention targets a held-out combination
        assert any(all(combo[c] == v for c, v in do.items()) for combo in split.held_out)


def test_truth_scores_for_a_no_op_method_show_no_effect(ood_fold) -> None:
    train, test, spec, _ = ood_fold
    m = NegativeControl()
    m.fit(train, spec, seed=0)
    scores = evaluation.score_against_truth(m, train, test, spec, seed=0)
    assert evaluation.intervention_concept(spec) == "age"
    assert {"cf_pcc", "cf_mse", "effect_pcc", "causal_acc:celltype"} <= set(scores)
    assert abs(scores["effect_pcc"]) < 1e-6  # ignoring do() predicts no effect at all


class NoisyTruth(NegativeControl):
    """A sampler whose draws are the simulator's expected cells plus unit Gaussian noise: its mean over
    many draws is exact, any one draw is not."""

    name = "noisy_truth"
    capabilities = dataclasses.replace(NegativeControl.capabilities, stochastic=True)

    def generate(self, adata, do=None, *, seed):  # type: ignore[override]
        from causcell_bench.datasets import true_counterfactual

        _, x_cf, x_fac = true_counterfactual(adata, dict(do or {}))
        x = x_cf if do else x_fac
        return (x + np.random.default_rng(seed).normal(size=x.shape)).astype(np.float32)


class NoisyDeterministic(NoisyTruth):
    """The same outputs declared deterministic: nothing is averaged."""

    name = "noisy_deterministic"
    capabilities = NegativeControl.capabilities


def test_a_sampler_is_scored_on_its_mean_of_draws_against_the_expected_truth(ood_fold) -> None:
    train, test, spec, _ = ood_fold
    m = NoisyTruth()
    m.fit(train, spec, seed=0)
    one = evaluation.score_against_truth(m, train, test, spec, seed=0, n_draws=1)
    many = evaluation.score_against_truth(m, train, test, spec, seed=0, n_draws=20)
    # unit noise: MSE ~1 from one draw, ~1/20 from the mean of 20 (the rest is exact)
    assert 0.8 < one["cf_mse"] < 1.2 and many["cf_mse"] < 0.08
    assert many["cf_pcc"] > one["cf_pcc"] + 0.05 and many["effect_pcc"] > one["effect_pcc"] + 0.1
    # draws have their own seeds: the mean of 2 is the mean of generate() at two different seeds
    two = m.expected_generate(test[:30], seed=4, n_draws=2)
    first = m.generate(test[:30], seed=4)
    assert not np.allclose(two, first) and np.allclose(two, m.expected_generate(test[:30], seed=4, n_draws=2))
    with pytest.raises(BenchError, match="n_draws"):
        m.expected_generate(test[:30], seed=0, n_draws=0)
    d = NoisyDeterministic()
    d.fit(train, spec, seed=0)
    assert evaluation.score_against_truth(d, train, test, spec, seed=0, n_draws=20) == \
        evaluation.score_against_truth(d, train, test, spec, seed=0, n_draws=1)


def _spy_calls(train, test, spec, held_out, **kw):
    m = Spy()
    m.calls = []
    m.fit(train, spec, seed=0)
    scores = evaluation.score_heldout_populations(m, train, test, spec, held_out, seed=0, **kw)
    return m.calls, scores


def test_heldout_task_intervenes_on_the_declared_perturbation(ood_fold) -> None:
    train, test, spec, split = ood_fold
    assert spec.perturbation == "age"
    calls, scores = _spy_calls(train, test, spec, split.held_out)
    assert calls and {"r2_mean", "delta_pcc_deg", "deg_overlap_lfc", "pop_rank"} <= set(scores)
    for obs, do in calls:
        assert "age" in do  # do(age = held-out value), descendants pinned to the held-out labels
        # some held-out combination is the target: the source cells share every one of its labels
        # outside the intervention, and differ from it in age
        assert any(_is_source_of(combo, obs, do) for combo in split.held_out)


def _is_source_of(combo: dict[str, str], obs, do: dict[str, str]) -> bool:
    if any(combo[k] != v for k, v in do.items()):
        return False
    same = all(set(obs[c].astype(str)) == {v} for c, v in combo.items() if c not in do)
    return same and combo["age"] not in set(obs["age"].astype(str))


def test_cf_concept_overrides_and_no_perturbation_scores_each_concept(ood_fold) -> None:
    train, test, spec, split = ood_fold
    calls, _ = _spy_calls(train, test, spec, split.held_out, cf_concept="domain")
    assert calls and all(next(iter(do)) == "domain" for _, do in calls)
    with pytest.raises(Exception, match="not a concept"):
        _spy_calls(train, test, spec, split.held_out, cf_concept="nope")
    plain = spec.model_copy(update={"perturbation": None})
    _, scores = _spy_calls(train, test, plain, split.held_out)
    assert any(k.startswith("edist:") for k in scores) and "edist" not in scores


def test_cell_parts_are_disjoint_cover_the_fold_and_keep_its_label_mix(ood_fold) -> None:
    _, test, spec, _ = ood_fold
    parts = evaluation.cell_parts(test.obs, spec.concepts, 5, seed=0)
    assert len(parts) == 5
    allcells = np.concatenate(parts)
    assert np.array_equal(np.sort(allcells), np.arange(test.n_obs))  # disjoint and complete
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
    for c in spec.concepts:
        whole = test.obs[c].astype(str).value_counts(normalize=True)
        for p in parts:
            share = test.obs[c].astype(str).iloc[p].value_counts(normalize=True).reindex(whole.index, fill_value=0)
            assert np.abs(share - whole).max() < 0.1
    assert evaluation.cell_parts(test.obs.iloc[:40], spec.concepts, 5, seed=0) == []  # under 20 cells a part
    assert evaluation.cell_parts(test.obs, spec.concepts, 1, seed=0) == []

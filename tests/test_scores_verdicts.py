"""Sanity bands for the metrics and scores that make verdicts honest: DAG-aware disentanglement,
u_leak, realism, the field's counterfactual metrics, degenerate folds, control scaling that never
hides a control's win, capability-complete ranking and bootstrap rank intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causcell_bench.leaderboard import scale, scores, summarize, tidy_table, violations
from causcell_bench.metrics import (
    change_scores,
    degenerate_metrics,
    exclusivity_gap,
    metric_info,
    population_rank,
    realism_scores,
    score_disentanglement,
    score_populations,
)

# age -> celltype <- domain, as in `synthetic`
CONCEPTS = ["age", "domain", "celltype"]
ANCESTORS = {"age": [], "domain": [], "celltype": ["age", "domain"]}


def _obs(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age, domain = rng.integers(0, 3, n), rng.integers(0, 2, n)
    # the child is a function of its parents plus its own noise
    celltype = (age + domain + (rng.random(n) < 0.3)) % 4
    return pd.DataFrame({"age": age.astype(str), "domain": domain.astype(str), "celltype": celltype.astype(str)})


def _onehot(col: pd.Series) -> np.ndarray:
    return pd.get_dummies(col).to_numpy(np.float64)


def _scm_embeddings(obs: pd.DataFrame, seed: int, leak_child_into_parent: bool = False) -> dict[str, np.ndarray]:
    """Endogenous SCM embeddings: z_child = z_parents + own noise (its one-hot label)."""
    rng = np.random.default_rng(seed)
    noise = lambda k: rng.normal(scale=0.05, size=(len(obs), k))
    z_age, z_dom = _onehot(obs["age"]), _onehot(obs["domain"])
    z_ct = np.concatenate([z_age, z_dom, _onehot(obs["celltype"])], axis=1)
    if leak_child_into_parent:
        z_age = np.concatenate([z_age, _onehot(obs["celltype"])], axis=1)
    return {"age": z_age + noise(z_age.shape[1]), "domain": z_dom + noise(z_dom.shape[1]),
            "celltype": z_ct + noise(z_ct.shape[1])}


@pytest.fixture(scope="module")
def obs_pair() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _obs(600, 0), _obs(300, 1)


def test_scm_embedding_is_exclusive_only_under_the_dag_rule(obs_pair) -> None:
    tr, te = obs_pair
    out = score_disentanglement(_scm_embeddings(tr, 0), tr, _scm_embeddings(te, 1), te, CONCEPTS,
                                ancestors=ANCESTORS)
    for name in out:
        metric_info(name)
    # the child's embedding carries its parents by construction: the old rule calls that leakage
    assert out["exclusivity:celltype"] < 0.5
    assert out["exclusivity_dag:celltype"] > 0.9
    # the trees find the parents' own clean dimensions, so plain DCI barely charges this; the DAG rule
    # never charges more than the plain one
    assert out["dci_d_dag"] >= out["dci_d"] - 1e-12 and out["dci_d_dag"] > 0.85


def test_child_leaking_into_parent_is_low_under_both_rules(obs_pair) -> None:
    tr, te = obs_pair
    out = score_disentanglement(_scm_embeddings(tr, 0, True), tr, _scm_embeddings(te, 1, True), te, CONCEPTS,
                                ancestors=ANCESTORS)
    assert out["exclusivity:age"] < 0.7 and out["exclusivity_dag:age"] < 0.7
    clean = score_disentanglement(_scm_embeddings(tr, 0), tr, _scm_embeddings(te, 1), te, CONCEPTS,
                                  ancestors=ANCESTORS)
    assert clean["exclusivity_dag:age"] > out["exclusivity_dag:age"] + 0.2


def test_dci_dag_excuses_ancestors_only() -> None:
    from causcell_bench.metrics import dci_from_importance
    from causcell_bench.metrics.dci_mig import dci_disentanglement_dag

    factors = ["age", "domain", "celltype"]
    # dims: age, domain, then a celltype dim that also carries both parents (an SCM child)
    scm = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 1.0]])
    owners = ["age", "domain", "celltype"]
    assert dci_disentanglement_dag(scm, owners, factors, ANCESTORS) == pytest.approx(1.0)
    assert dci_from_importance(scm)[0] < 0.9
    # an age dim carrying its child: charged under both rules
    leak = np.array([[1.0, 0, 1.0], [0, 1.0, 0], [0, 0, 1.0]])
    assert dci_disentanglement_dag(leak, owners, factors, ANCESTORS) < 0.9
    # a shared latent (no owner) is excused nothing
    assert dci_disentanglement_dag(scm, [None] * 3, factors, ANCESTORS) == pytest.approx(dci_from_importance(scm)[0])


def test_u_leak_is_zero_for_independent_u_and_high_for_a_label(obs_pair) -> None:
    tr, te = obs_pair
    rng = np.random.default_rng(0)
    base_tr, base_te = _scm_embeddings(tr, 0), _scm_embeddings(te, 1)
    indep = score_disentanglement({**base_tr, "unexplained": rng.normal(size=(len(tr), 4))}, tr,
                                  {**base_te, "unexplained": rng.normal(size=(len(te), 4))}, te, CONCEPTS)
    leaky = score_disentanglement({**base_tr, "unexplained": _onehot(tr["celltype"])}, tr,
                                  {**base_te, "unexplained": _onehot(te["celltype"])}, te, CONCEPTS)
    assert abs(indep["u_leak"]) < 0.1
    assert leaky["u_leak"] > 0.3
    assert "u_leak" not in score_disentanglement(base_tr, tr, base_te, te, CONCEPTS)


def test_realism_perfect_vs_blurred() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c"], 100)
    real = rng.gamma(2.0, 1.0, size=(300, 40)) + (groups == "b")[:, None] * 2.0
    same = realism_scores(real, real, groups)
    assert same["edist_group"] == pytest.approx(0.0, abs=1e-9) and same["spread_ratio"] == pytest.approx(0.0)
    resampled = real[np.concatenate([rng.permutation(np.flatnonzero(groups == g)) for g in "abc"])]
    blurred = np.vstack([np.repeat(real[groups == g].mean(0, keepdims=True), 100, axis=0) for g in "abc"])
    r, b = realism_scores(real, resampled, groups), realism_scores(real, blurred, groups)
    # a group mean predicted for every cell: no spread, far from the real distribution
    assert b["var_log2ratio"] < -3 and b["spread_ratio"] > 3 and r["spread_ratio"] < 0.01
    assert b["edist_group"] > r["edist_group"] + 1.0
    assert np.isnan(realism_scores(real[:5], real[:5], groups[:5])["edist_group"])  # groups too small


def test_change_scores_and_population_rank() -> None:
    rng = np.random.default_rng(0)
    source = rng.gamma(2.0, 1.0, size=(200, 100))
    shift = np.zeros(100)
    shift[rng.choice(100, 20, replace=False)] = 3.0
    real = source + shift + rng.normal(scale=0.1, size=source.shape)
    perfect = change_scores(real, real, source)
    assert perfect["r2_mean"] == pytest.approx(1.0) and perfect["delta_pcc_deg"] == pytest.approx(1.0)
    assert perfect["deg_overlap_lfc"] == 1.0 and perfect["mean_pcc_deg"] == pytest.approx(1.0)
    # a prediction twice too far off on the DEGs keeps their correlation and loses R^2
    overshoot = change_scores(real + shift, real, source)
    assert overshoot["mean_pcc_deg"] > 0.99 and overshoot["r2_mean_deg"] < 0.5
    unchanged = change_scores(source, real, source)
    assert unchanged["deg_overlap_lfc"] < 0.5 and unchanged["r2_mean"] < perfect["r2_mean"]
    wrong = change_scores(source + np.roll(shift, 1), real, source)  # shifts mostly the wrong genes
    assert wrong["deg_overlap_lfc"] < 0.5 and wrong["delta_pcc"] < 0.5

    # effect-size calibration: the slope of predicted on real change; r cannot see a damped effect
    half = change_scores(source + 0.5 * (real - source), real, source)
    assert half["delta_slope"] == pytest.approx(0.5) and half["delta_slope_deg"] == pytest.approx(0.5)
    assert half["delta_pcc"] == pytest.approx(1.0)
    assert perfect["delta_slope"] == pytest.approx(1.0) and perfect["delta_slope_deg"] == pytest.approx(1.0)
    assert unchanged["delta_slope"] == 0.0 and unchanged["delta_slope_deg"] == 0.0
    damped = change_scores(source + 0.3 * shift, real, source)  # right genes, 0.3 of the effect
    assert damped["delta_slope"] == pytest.approx(0.3, abs=0.02)
    assert damped["delta_slope_deg"] == pytest.approx(0.3, abs=0.02)
    assert abs(wrong["delta_slope"]) < 0.3
    assert not metric_info("delta_slope").aggregate and not metric_info("delta_slope_deg").aggregate

    means = rng.normal(size=(5, 30)) * 3
    assert population_rank(means, means) == 0.0
    assert population_rank(means[::-1], means) > 0.5  # each prediction nearer another population
    collapsed = np.repeat(means.mean(0, keepdims=True), 5, axis=0)
    assert population_rank(collapsed, means) > 0.15
    assert np.isnan(population_rank(means[:1], means[:1]))

    pops = [source[:50] + i for i in range(3)]
    out = score_populations(pops, pops, [source[50:100]] * 3)
    assert out["pop_rank"] == 0.0 and out["n_populations"] == 3.0 and out["r2_mean"] == pytest.approx(1.0)
    for name in out:
        metric_info(name)


def test_degenerate_metrics_name_the_reason() -> None:
    obs = pd.DataFrame({"age": ["a"] * 20, "celltype": ["x", "y"] * 10})
    d = degenerate_metrics(obs, ["age", "celltype"])
    assert d["precision_w:age"].startswith("degenerate: one label of age") and "acc:celltype" not in d
    one_pop = degenerate_metrics(pd.DataFrame({"age": ["a"] * 20}), ["age"])
    assert "one population" in one_pop["nmi_geom"]
    assert degenerate_metrics(pd.DataFrame({"age": ["a", "b"] * 10}), ["age"]) == {}


# --- scores --------------------------------------------------------------------------------------------

def _records(values: dict[str, dict[str, float]], *, folds: int = 1, noise: float = 0.0, seed: int = 0,
             dataset: str = "d", setting: str = "ID") -> list[dict]:
    """Cell records for method -> {metric: value} over ``folds`` folds (plus noise). Kinds and
    capabilities come from the names: the built-in controls and references are what they are."""
    rng = np.random.default_rng(seed)
    return [{"status": "ok", "dataset": dataset, "method": method, "setting": setting, "fold": f, "seed": 0,
             "capabilities": {"embedding": "per_concept"},
             "metrics": {m: v + noise * rng.normal() for m, v in metrics.items()}}
            for method, metrics in values.items() for f in range(folds)]


def _summary(values: dict[str, dict[str, float]], *, folds: int = 1, noise: float = 0.0,
             seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A tidy table for method -> {metric: value} over ``folds`` folds (plus noise) and its summary."""
    tidy = tidy_table(_records(values, folds=folds, noise=noise, seed=seed))
    return tidy, summarize(tidy)


def test_a_winning_negative_control_is_clipped_not_hidden() -> None:
    scaled, notes = scale({"positive_control": np.nan, "negative_control": 3.0, "A": 5.0, "B": 8.0}, hib=False)
    assert scaled["A"] == 0.0 and scaled["B"] == 0.0 and not any(np.isnan(v) for k, v in scaled.items()
                                                                   if k != "positive_control")
    assert any("every method scores 0" in n for n in notes)
    ok, _ = scale({"positive_control": 1.0, "negative_control": 0.0, "A": 0.5, "B": 1.5}, hib=True)
    assert ok["A"] == 0.5 and ok["B"] == 1.0
    _, summary = _summary({"positive_control": {"pcc": 1.0}, "negative_control": {"pcc": 0.6},
                           "A": {"pcc": 0.5}, "B": {"pcc": 0.8}})
    v = violations(summary)
    assert list(v["method"]) == ["A"] and v["control"].iloc[0] == "negative_control"


def test_only_capability_complete_methods_are_ranked() -> None:
    full = {"acc:age": 0.9, "pcc": 0.8, "cf_pcc": 0.7}
    _, summary = _summary({"positive_control": {"acc:age": 1.0, "pcc": 1.0, "cf_pcc": 1.0},
                           "negative_control": {"acc:age": 0.3, "pcc": 0.5, "cf_pcc": 0.5},
                           "A": full, "B": {**full, "cf_pcc": 0.6}, "C": {"acc:age": 1.0, "pcc": 1.0}})
    sc = scores(summary).set_index("method")
    assert sc.at["A", "rank"] == 1 and sc.at["B", "rank"] == 2
    # C is perfect where it has values, but has no counterfactuals: shown, partial, unranked
    assert not sc.at["C", "complete"] and np.isnan(sc.at["C", "rank"]) and "no counterfactual" in sc.at["C", "note"]
    assert np.isnan(sc.at["positive_control", "rank"])


def test_bootstrap_ranks_a_clear_winner_first_and_ties_twins() -> None:
    metrics = lambda v: {"acc:age": v, "pcc": v, "cf_pcc": v}
    tidy, summary = _summary({"positive_control": metrics(1.0), "negative_control": metrics(0.0),
                              "far": metrics(0.9), "twin1": metrics(0.5), "twin2": metrics(0.5)},
                             folds=5, noise=0.05)
    sc = scores(summary, tidy=tidy, n_boot=100).set_index("method")
    assert sc.at["far", "rank"] == 1 and sc.at["far", "rank_hi"] == 1  # first in every resample
    assert "twin2" in sc.at["twin1", "tied"] and "far" not in sc.at["twin1", "tied"]
    assert sc.at["far", "overall_sd"] > 0


def test_uninformative_lists_metrics_a_trivial_reference_wins() -> None:
    from causcell_bench.leaderboard import uninformative

    _, summary = _summary({"positive_control": {"pcc": 1.0, "cf_pcc": 1.0},
                           "negative_control": {"pcc": 0.5, "cf_pcc": 0.5},
                           "A": {"pcc": 0.8, "cf_pcc": 0.7}, "no_change": {"pcc": 1.0, "cf_pcc": 0.6},
                           "group_mean": {"pcc": 0.7, "cf_pcc": 0.75}})
    u = uninformative(summary)
    # group_mean beats every method on cf_pcc; no_change's perfect pcc is the input itself, not evidence
    assert list(zip(u["metric"], u["reference"])) == [("cf_pcc", "group_mean")]


def test_metrics_the_controls_do_not_separate_are_listed_as_degenerate(tmp_path) -> None:
    """A positive control at chance (acc of a concept it cannot learn) or below the negative one (a
    lower-is-better mse): every method scores 0 there, and degenerate.csv and the leaderboard say so."""
    from causcell_bench.leaderboard import unseparated
    from causcell_bench.leaderboard.rendering import markdown

    _, summary = _summary({"positive_control": {"acc:age": 0.5, "pcc": 1.0, "mse": 0.3},
                           "negative_control": {"acc:age": 0.5, "pcc": 0.2, "mse": 0.2},
                           "A": {"acc:age": 0.6, "pcc": 0.8, "mse": 0.25}})
    u = unseparated(summary)
    assert sorted(u["metric"]) == ["acc", "mse"] and set(u["fold"]) == {"all"}  # the scored (headline) metrics
    assert u.set_index("metric").at["acc", "reason"].startswith("uninformative: the positive control (0.5)")
    text = markdown(summary, scores(summary, n_boot=10), None, None, u, None)
    assert "all folds: uninformative: the positive control" in text and "(acc)" in text


def test_one_fold_gets_intervals_from_its_cell_parts() -> None:
    metrics = lambda v: {"acc:age": v, "pcc": v, "cf_pcc": v}
    values = {"positive_control": metrics(1.0), "negative_control": metrics(0.0), "far": metrics(0.9),
              "twin1": metrics(0.5), "twin2": metrics(0.5)}
    tidy, summary = _summary(values)  # one fold x seed: no folds to resample
    assert np.isnan(scores(summary, tidy=tidy).set_index("method").at["far", "rank_lo"])
    parts, _ = _summary(values, folds=5, noise=0.05, seed=1)
    parts = parts.rename(columns={"fold": "part"}).assign(fold=0)
    sc = scores(summary, tidy=tidy, parts=parts, n_boot=100).set_index("method")
    assert sc.at["far", "rank"] == 1 and sc.at["far", "rank_hi"] == 1
    assert "twin2" in sc.at["twin1", "tied"] and "far" not in sc.at["twin1", "tied"]
    assert sc.at["far", "rank_basis"] == "5 cell parts of one fold" and sc.at["negative_control", "rank_basis"] == ""
    # a method without parts (a record from before they existed) would shift the others' ranks: none are used
    no_twin2 = scores(summary, tidy=tidy, parts=parts[parts["method"] != "twin2"], n_boot=20).set_index("method")
    assert np.isnan(no_twin2.at["far", "rank_lo"]) and no_twin2.at["far", "rank_basis"] == ""


def test_a_category_one_setting_lacks_does_not_unrank_the_other() -> None:
    # realism measured in OOD only (e.g. too few cells per combination in ID): ID still ranks on the rest
    metrics = lambda v: {"acc:age": v, "pcc": v, "cf_pcc": v}
    ctrl = {"positive_control": metrics(1.0), "negative_control": metrics(0.0)}
    tid, _ = _summary({**ctrl, "A": metrics(0.8), "B": metrics(0.4)})
    tood, _ = _summary({**{k: {**v, "spread_ratio": 0.0 if k == "positive_control" else 2.0}
                           for k, v in ctrl.items()}, "A": {**metrics(0.8), "spread_ratio": 0.5},
                        "B": {**metrics(0.4), "spread_ratio": 1.0}})
    tidy = pd.concat([tid, tood.assign(setting="OOD")], ignore_index=True)
    sc = scores(summarize(tidy)).set_index(["setting", "method"])
    assert sc.at[("ID", "A"), "rank"] == 1 and sc.at[("ID", "B"), "rank"] == 2
    assert sc.at[("OOD", "A"), "rank"] == 1 and sc.at[("ID", "A"), "complete"]


def test_a_metric_the_parts_cannot_measure_keeps_its_fold_value() -> None:
    metrics = lambda v, cf: {"acc:age": v, "pcc": v, "cf_pcc": cf}
    # A leads only through its counterfactuals: without them B would be first
    values = {"positive_control": metrics(1.0, 1.0), "negative_control": metrics(0.0, 0.0),
              "A": metrics(0.5, 1.0), "B": metrics(0.6, 0.2)}
    tidy, summary = _summary(values)
    parts, _ = _summary(values, folds=5, noise=0.01, seed=2)
    parts = parts.rename(columns={"fold": "part"}).assign(fold=0)
    parts.loc[parts["metric"] == "cf_pcc", "value"] = np.nan  # no part could measure it
    sc = scores(summary, tidy=tidy, parts=parts, n_boot=50).set_index("method")
    assert sc.at["A", "rank"] == 1
    # the counterfactual category stays in the parts' overall at its fold value: A stays first
    assert (sc.at["A", "rank_lo"], sc.at["A", "rank_hi"], sc.at["B", "rank_lo"]) == (1, 1, 2)


def test_exclusivity_stays_in_the_unit_interval_when_a_probe_is_worse_than_chance() -> None:
    # OOD-like folds: the training fold ties age to domain one way, the test fold the other way,
    # so a probe from the age embedding predicts domain worse than the test's majority guess
    rng = np.random.default_rng(0)
    n = 300
    age_tr, age_te = rng.integers(0, 2, n), rng.integers(0, 2, n)
    tr = pd.DataFrame({"age": age_tr.astype(str), "domain": age_tr.astype(str)})
    te = pd.DataFrame({"age": age_te.astype(str), "domain": (1 - age_te).astype(str)})
    emb = lambda obs: {c: _onehot(obs[c]) for c in ("age", "domain")}  # the positive control's embeddings
    out = score_disentanglement(emb(tr), tr, emb(te), te, ["age", "domain"], ancestors={"age": [], "domain": []})
    assert out["offdiag_acc:age|domain"] < 0.1  # the adversarial case: far below chance
    for key in ("exclusivity:age", "exclusivity:domain", "exclusivity_dag:age", "exclusivity_dag:domain"):
        assert 0.0 <= out[key] <= 1.0
        assert out[key] == pytest.approx(1.0)  # own concept perfect, the other below chance counts as chance
    # an embedding that predicts another concept better than its own is floored at 0, not negative
    assert exclusivity_gap(0.2, [0.9, 0.7]) == 0.0
    assert exclusivity_gap(1.0, [-0.8]) == 1.0 and exclusivity_gap(0.5, [0.1, -3.0]) == pytest.approx(0.45)


def test_a_reference_gets_no_overall_and_no_score_from_its_input_as_reconstruction() -> None:
    from causcell_bench.leaderboard import uninformative

    metrics = lambda v, cf: {"acc:age": v, "pcc": v, "spread_ratio": 1.0 - v, "cf_pcc": cf}
    values = {"positive_control": metrics(1.0, 1.0), "negative_control": metrics(0.0, 0.0),
              "A": metrics(0.6, 0.6), "B": metrics(0.5, 0.5),
              # the cell itself as reconstruction: perfect fidelity and realism by construction
              "additive_shift": {"pcc": 1.0, "spread_ratio": 0.0, "cf_pcc": 0.9},
              "no_change": {"pcc": 1.0, "spread_ratio": 0.0, "cf_pcc": 0.2},
              "group_mean": {"pcc": 0.7, "spread_ratio": 0.9, "cf_pcc": 0.7}}
    tidy, summary = _summary(values)
    roles = tidy.set_index(["method", "metric"])["role"]
    assert roles[("additive_shift", "pcc")] == "trivial" and roles[("no_change", "spread_ratio")] == "trivial"
    assert roles[("additive_shift", "cf_pcc")] == "scored" and roles[("group_mean", "pcc")] == "scored"
    assert roles[("positive_control", "pcc")] == "scored"  # a control still anchors the scale
    sc = scores(summary).set_index("method")
    for ref in ("additive_shift", "no_change", "group_mean"):
        assert np.isnan(sc.at[ref, "overall"]) and np.isnan(sc.at[ref, "rank"]), ref
        assert "reference: no overall" in sc.at[ref, "note"]
    assert np.isnan(sc.at["additive_shift", "fidelity"]) and np.isnan(sc.at["additive_shift", "realism"])
    assert sc.at["additive_shift", "counterfactual"] == pytest.approx(0.9)
    assert sc.at["group_mean", "fidelity"] == pytest.approx(0.7)  # its group means are a real prediction
    assert (sc.at["A", "rank"], sc.at["B", "rank"]) == (1, 2) and np.isfinite(sc.at["A", "overall"])
    # its trivial pcc is no evidence that the metric is uninformative either
    u = uninformative(summary)
    assert ("pcc", "no_change") not in set(zip(u["metric"], u["reference"]))
    assert ("pcc", "group_mean") in set(zip(u["metric"], u["reference"]))


@pytest.mark.parametrize("dag", [True, False])
def test_plain_disentanglement_metrics_are_scored_only_without_a_dag(dag: bool) -> None:
    # A is exclusive only under the DAG rule (its child embedding carries the parents), B the other way
    def metrics(plain: float, aware: float) -> dict[str, float]:
        out = {"exclusivity:celltype": plain, "dci_d": plain, "pcc": 0.5, "cf_pcc": 0.5}
        return {**out, "exclusivity_dag:celltype": aware, "dci_d_dag": aware} if dag else out

    values = {"positive_control": metrics(1.0, 1.0), "negative_control": metrics(0.0, 0.0),
              "A": metrics(0.2, 0.9), "B": metrics(0.6, 0.4)}
    tidy, summary = _summary(values)
    roles = tidy.drop_duplicates("metric").set_index("metric")["role"]
    assert roles["exclusivity:celltype"] == roles["dci_d"] == ("superseded" if dag else "scored")
    sc = scores(summary).set_index("method")
    assert sc.at["A", "predictive"] == pytest.approx(0.9 if dag else 0.2)
    assert sc.at["A", "rank"] == (1 if dag else 2)
    # the plain ones stay in the tables
    assert {"exclusivity:celltype", "dci_d"} <= set(summary["metric"])


# --- held-out verdict ---------------------------------------------------------------------------------

def test_heldout_verdict_says_a_model_beats_additive_shift_but_not_group_mean(tmp_path) -> None:
    import html as _html
    import re

    from causcell_bench.leaderboard import heldout_verdict, markdown, status_table, write_index_html

    r2 = lambda v, deg: {"r2_mean": v, "r2_mean_deg": deg, "pcc": 0.8}
    values = {"positive_control": {"pcc": 1.0}, "negative_control": {**r2(0.2, 0.1), "pcc": 0.5},
              "A": r2(0.7, 0.6), "group_mean": r2(0.9, 0.8), "additive_shift": r2(0.5, 0.4),
              "no_change": r2(0.7, 0.2)}
    records = _records(values, folds=5, noise=0.02, setting="OOD") + _records(values, folds=5, setting="ID")
    a_r2 = {r["fold"]: r["metrics"]["r2_mean"] for r in records if r["method"] == "A" and r["setting"] == "OOD"}
    for r in records:  # no_change: A's value give or take 0.03, either way
        if r["method"] == "no_change" and r["setting"] == "OOD":
            r["metrics"]["r2_mean"] = a_r2[r["fold"]] + [0.03, -0.03, 0.02, -0.02, 0.0][r["fold"]]
    tidy = tidy_table(records)
    summary = summarize(tidy)
    v = heldout_verdict(tidy)
    assert set(v["setting"]) == {"OOD"}  # only held-out populations
    a = v[v["method"] == "A"].set_index(["metric", "reference"])
    assert a.at[("r2_mean", "additive_shift"), "verdict"] == ">"
    assert a.at[("r2_mean", "group_mean"), "verdict"] == "<"
    assert a.at[("r2_mean", "no_change"), "verdict"] == "="  # within the interval over folds
    assert a.at[("r2_mean_deg", "no_change"), "verdict"] == ">"
    assert a.at[("r2_mean", "group_mean"), "mean"] == pytest.approx(0.7, abs=0.03)
    assert a.at[("r2_mean", "group_mean"), "n"] == 5 and a.at[("r2_mean", "group_mean"), "basis"] == "folds x seeds"
    assert a.at[("r2_mean", "group_mean"), "diff_hi"] < 0 < a.at[("r2_mean", "additive_shift"), "diff_lo"]
    # the same cells in the markdown and the HTML report: trained models first
    row = "| A | method | "
    md = markdown(summary, scores(summary), verdict=v)
    line = next(ln for ln in md.splitlines() if ln.startswith(row))
    assert line.endswith("| < / < | > / > | = / > |"), line
    header = next(ln for ln in md.splitlines() if ln.startswith("| method | kind | r2_mean |"))
    assert header.endswith("| vs group_mean | vs additive_shift | vs no_change |")
    assert md.index(row) < md.index("| group_mean | reference")
    page = write_index_html(tmp_path, tmp_path, tidy, summary, scores(summary), status_table(records),
                            verdict=v).read_text()
    verdict_html = page[page.index("Held-out verdict"):]
    cells = re.search(r"<tr><td>A</td>(.*?)</tr>", verdict_html).group(1)
    texts = [_html.unescape(t) for t in re.findall(r"<td[^>]*>(.*?)</td>", cells)]
    assert texts[-3:] == ["< / <", "> / >", "= / >"], texts


def test_heldout_verdict_with_one_fold_takes_its_interval_from_the_cell_parts() -> None:
    from causcell_bench.leaderboard import heldout_verdict

    values = {"A": {"r2_mean": 0.7}, "additive_shift": {"r2_mean": 0.69}, "group_mean": {"r2_mean": 0.9}}
    tidy = tidy_table(_records(values, setting="OOD"))
    point = heldout_verdict(tidy).set_index(["method", "reference"])
    assert point.at[("A", "additive_shift"), "verdict"] == ">"
    assert "no interval" in point.at[("A", "additive_shift"), "basis"]
    parts = tidy_table(_records(values, folds=5, noise=0.05, seed=3, setting="OOD"))
    parts = parts.rename(columns={"fold": "part"}).assign(fold=0)
    v = heldout_verdict(tidy, parts).set_index(["method", "reference"])
    assert v.at[("A", "additive_shift"), "verdict"] == "=" and v.at[("A", "group_mean"), "verdict"] == "<"
    assert v.at[("A", "additive_shift"), "diff"] == pytest.approx(0.01)  # the whole fold's value, parts' spread
    assert v.at[("A", "additive_shift"), "basis"] == "5 cell parts of one fold"

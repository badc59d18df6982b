"""The paper's counterfactual experiments (Fig. 2) end to end on very small configurations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from causcell_bench.cli import app
from causcell_bench.errors import BenchError
from causcell_bench.experiments import run_experiment
from causcell_bench.experiments.common import bh, rank_sum_test, signed_rank_test
from causcell_bench.experiments.report import markdown_table

TINY = {"n_steps": 20, "batch_size": 64, "hidden": 32, "n_blocks": 1, "heads": 2, "head_dim": 8, "d": 8,
        "ff_mult": 2, "ddim_steps": 3, "pool_size": 16}
runner = CliRunner()


def _files_ok(out: Path, results: dict) -> str:
    report = (out / "report.md").read_text()
    for fig in results["figures"]:
        assert (out / fig).is_file() and (out / fig).stat().st_size > 1000
        assert f"]({fig})" in report
    assert json.loads((out / "results.json").read_text())["experiment"] == results["experiment"]
    return report


def test_causal_consistency_end_to_end(tmp_path: Path) -> None:
    res = run_experiment(
        "causal_consistency", tmp_path, methods=["CausCell", "CausCell_IND", "negative_control"], device="cpu",
        params={"CausCell": TINY, "CausCell_IND": TINY}, options={"n_cells": 400, "n_genes": 50, "mode": "both"},
    )
    report = _files_ok(tmp_path, res)
    assert "CausCell_IND" in report and "age=age_2" in report
    table = res["per_intervention"]
    rows = res["config"]["rows"]  # mode=both: CausCell is asked in both modes, without refitting
    assert rows == ["CausCell (do)", "CausCell (exogenous)", "CausCell_IND", "negative_control"]
    assert len(table) == 3 * (4 + len(rows))  # 3 interventions x (no-op, 2 SCM posteriors, truth, each row)
    truth = table[table.method == "true counterfactual"]
    noop = table[table.method == "keep factual type (no-op)"]
    # the simulator moves some cells, and a classifier of real cells reads the true counterfactuals well
    assert (noop.n_changed > 0).all() and (noop.causal_acc_changed == 0).all() and (noop.causal_bacc == 0.5).all()
    assert (truth.causal_acc > 0.8).all()
    assert (truth.causal_acc > noop.causal_acc.to_numpy()).all()
    assert (truth.causal_bacc > 0.8).all()
    # the attainable ceiling lies between keeping every type and the stored-noise truth
    post = table[table.method == "SCM posterior (noise unseen)"]
    assert (post.causal_acc.to_numpy() >= noop.causal_acc.to_numpy() - 0.02).all()
    assert (post.causal_bacc.to_numpy() <= truth.causal_bacc.to_numpy()).all()
    sampled = table[table.method == "SCM posterior, sampled"]
    assert (sampled.causal_acc.to_numpy() <= post.causal_acc.to_numpy() + 1e-9).all()  # the mode is Bayes-optimal
    for col in ("causal_acc", "causal_bacc", "effect_pcc", "cf_pcc"):
        vals = table.loc[table.method.isin(rows), col]
        assert vals.between(-1, 1).all()


def test_causal_consistency_is_seeded(tmp_path: Path) -> None:
    kw = dict(methods=["negative_control"], device="cpu", options={"n_cells": 300, "n_genes": 40, "values": ["age_0"]})
    a = run_experiment("causal_consistency", tmp_path / "a", seed=4, **kw)["summary"]
    b = run_experiment("causal_consistency", tmp_path / "b", seed=4, **kw)["summary"]
    assert a.equals(b)


def test_small_sample_trends_end_to_end(tmp_path: Path) -> None:
    res = run_experiment(
        "small_sample_trends", tmp_path, methods=["CausCell", "negative_control"], device="cpu",
        params={"CausCell": TINY},
        options={"n_cells": 900, "n_genes": 60, "n_per_age": 8, "n_trend_genes": 4, "n_cf_per_cell": 2},
    )
    report = _files_ok(tmp_path, res)
    counts = res["counts"]
    assert "subsample: old vs young (real)" in set(counts.analysis)
    assert set(counts.method) == {"-", "CausCell", "negative_control"}
    full = counts[counts.analysis.str.startswith("full data")].iloc[0]
    sub = counts[counts.analysis.str.startswith("subsample")].iloc[0]
    assert full.n_trend == 4 and full.trend_right >= 3  # the large reference sees the planted trends
    assert full.trend_right >= sub.trend_right
    assert (counts.trend_right + counts.trend_wrong <= counts.n_trend).all()
    assert (counts.changed_right + counts.negligible_sig <= counts.significant).all()
    cc = counts[(counts.method == "CausCell") & counts.analysis.str.startswith("counterfactual old vs young")].iloc[0]
    assert cc.n_a == 2 * sub.n_b  # two counterfactuals per young cell
    change = res["change"].set_index("method")
    assert change.loc["CausCell", "trend_sign_agreement"] <= 1.0 and -1 <= change.loc["CausCell", "change_pcc_all_genes"] <= 1
    assert "trend genes" in report and res["config"]["intervention"]["celltype"] == res["config"]["target_celltype_used"]


def test_experiment_cli_and_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["experiment", "causal_consistency", "--out", str(tmp_path), "--methods", "negative_control",
                            "--device", "cpu", "--set", "n_cells=300", "--set", "n_genes=40", "--set", 'values=["age_1"]'])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.md").is_file() and "negative_control" in r.output
    r = runner.invoke(app, ["experiment", "causal_consistncy", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "Did you mean causal_consistency" in r.output
    r = runner.invoke(app, ["experiment", "small_sample_trends", "--out", str(tmp_path), "--set", "n_per_ages=3"])
    assert r.exit_code == 2 and "n_per_age" in r.output
    r = runner.invoke(app, ["experiment", "causal_consistency", "--out", str(tmp_path), "--methods", "positive_control"])
    assert r.exit_code == 2 and "cannot generate counterfactuals" in r.output
    fresh = tmp_path / "fresh"
    r = runner.invoke(app, ["experiment", "causal_consistency", "--out", str(fresh), "--device", "cpu", "--set",
                            "concept=tissue"])
    assert r.exit_code == 2 and "not a concept" in r.output, r.output
    assert not fresh.exists()  # a refused experiment leaves no empty folder behind
    with pytest.raises(BenchError, match="preset"):
        run_experiment("small_sample_trends", tmp_path, preset="huge")


def test_statistics_helpers() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (40, 6))
    b = a.copy()
    b[:, 0] += 3.0
    p, d = rank_sum_test(b, a)
    assert p[0] < 1e-6 and p[1:].min() > 0.5 and d[0] == pytest.approx(3.0)
    p, d = signed_rank_test(b, a)
    assert p[0] < 1e-6 and (p[1:] == 1).all()
    q = bh(np.array([0.01, 0.02, 0.5, np.nan]))
    assert q[0] == pytest.approx(0.04) and q[3] == 1.0
    import pandas as pd

    md = markdown_table(pd.DataFrame({"x": [1.23456, np.nan], "y": ["a|b", "c"]}))
    assert "1.235" in md and "n/a" in md and "a/b" in md


def test_set_a_list_option_to_one_value_is_a_list_not_its_characters() -> None:
    from causcell_bench.cli.model import _check_options

    assert _check_options("causal_consistency", "quick", {"values": "age_9"})["values"] == ["age_9"]
    assert _check_options("causal_consistency", "quick", {"values": "age_1, age_9"})["values"] == ["age_1", "age_9"]


def test_experiment_out_refuses_a_foreign_folder_but_reruns_into_its_own(tmp_path: Path) -> None:
    from causcell_bench.experiments.report import check_experiment_out, write_results

    check_experiment_out(tmp_path / "new")  # not there yet
    check_experiment_out(tmp_path)  # empty
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(BenchError, match=r"holds other files \(notes.txt\)"):
        check_experiment_out(tmp_path)
    write_results(tmp_path, {"experiment": "causal_consistency", "summary": {}})
    check_experiment_out(tmp_path)  # an experiment's own folder: run it again

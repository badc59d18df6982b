"""The benchmark spine end to end: registry, runner (failures, resume, kill), leaderboard, check, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causcell_bench import registry
from causcell_bench.cli import app
from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.leaderboard import build_report, check, scores, summarize, tidy_table
from causcell_bench.runner import run_grid
from causcell_bench.store import ResultStore

SMALL = {"n_cells": 360, "n_genes": 80}


def small_config(**kw) -> RunConfig:
    base = dict(datasets=["synthetic"], methods=["positive_control", "negative_control"], n_folds=3,
                folds=[0], settings=["ID", "OOD"], dataset_kwargs=SMALL, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def test_unknown_method_is_named_with_suggestion() -> None:
    with pytest.raises(BenchError, match="Did you mean scVI"):
        registry.resolve_methods("scVl")


def test_all_includes_controls_and_scvi() -> None:
    names = registry.resolve_methods("all")
    assert names[:2] == ["positive_control", "negative_control"] and "scVI" in names


def test_grid_runs_records_and_reports(tmp_path: Path) -> None:
    cfg = small_config(methods=["positive_control", "negative_control", "scVI"],
                       method_params={"scVI": {"max_epochs": 5}})
    outcomes = run_grid(cfg, tmp_path, progress=False, log=lambda s: None)
    assert [o.status for o in outcomes] == ["ok"] * 6, [o.error for o in outcomes]
    rec = ResultStore(tmp_path).read(outcomes[0].key)
    assert rec is not None and rec["status"] == "ok"
    for field in ("metrics", "timings", "peak_rss_mb", "versions", "config_hash", "seed"):
        assert field in rec
    assert rec["timings"]["fit_s"] >= 0 and rec["versions"]["torch"]
    paths = build_report(tmp_path)
    for k in ("results", "summary", "scores", "markdown"):
        assert paths[k].is_file()
    assert any(str(p).endswith(".png") for p in paths.values())
    summary = pd.read_csv(paths["summary"])
    head = summary[summary["aggregate"]]
    # the controls bracket every aggregated metric
    for (setting, metric), block in head.groupby(["setting", "metric"]):
        vals = block.set_index("method")["mean"]
        if "positive_control" not in vals or "negative_control" not in vals:
            continue
        hib = bool(block["higher_is_better"].iloc[0])
        pos, neg = vals["positive_control"], vals["negative_control"]
        assert (pos >= neg - 1e-9) if hib else (pos <= neg + 1e-9), (setting, metric, pos, neg)
    md = paths["markdown"].read_text()
    assert "scVI *" in md and "positive_control" in md


def test_one_fold_is_also_scored_in_cell_parts_and_several_are_not(tmp_path: Path) -> None:
    outcomes = run_grid(small_config(settings=["OOD"]), tmp_path / "one", progress=False, log=lambda s: None)
    recs = {o.key.method: ResultStore(tmp_path / "one").read(o.key) for o in outcomes}
    parts = recs["positive_control"]["part_metrics"]
    assert len(parts) == 5 and set(parts[0]) == set(recs["positive_control"]["metrics"])
    assert all(p["pcc"] > 0.999 for p in parts)  # the real cells themselves, in every part
    assert np.mean([p["pcc"] for p in recs["negative_control"]["part_metrics"]]) == pytest.approx(
        recs["negative_control"]["metrics"]["pcc"], abs=0.02)  # a per-cell mean: parts average to the fold
    assert len(recs["negative_control"]["part_metrics"]) == 5
    two = run_grid(small_config(settings=["OOD"], folds=[0, 1]), tmp_path / "two", progress=False, log=lambda s: None)
    assert all("part_metrics" not in ResultStore(tmp_path / "two").read(o.key) for o in two)
    off = run_grid(small_config(settings=["OOD"], cell_parts=0), tmp_path / "off", progress=False, log=lambda s: None)
    assert all("part_metrics" not in ResultStore(tmp_path / "off").read(o.key) for o in off)


def test_a_sampler_s_truth_scores_average_truth_samples_draws_and_nothing_else_changes(tmp_path: Path) -> None:
    def run(k: int) -> dict:
        cfg = small_config(methods=["MichiGAN"], settings=["ID"], preset="test", cell_parts=0, truth_samples=k)
        (o,) = run_grid(cfg, tmp_path / str(k), progress=False, log=lambda s: None)
        assert o.status == "ok", o.error
        return ResultStore(tmp_path / str(k)).read(o.key)

    one, five = run(1), run(5)
    assert one["config_hash"] != five["config_hash"]
    m1, m5 = one["metrics"], five["metrics"]
    # averaging draws shrinks the sampling noise the truth task would otherwise charge the sampler with
    assert m5["cf_mse"] < m1["cf_mse"]
    # the reconstruction and the embeddings are the same single-sample outputs
    for metric in ("pcc", "mse", "edist_group", "acc:age"):
        assert m5[metric] == m1[metric], metric


def test_failing_method_is_recorded_and_grid_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from causcell_bench.methods.controls import NegativeControl

    class Broken(NegativeControl):
        name = "broken"

        def fit(self, train, spec, *, seed):  # type: ignore[override]
            raise RuntimeError("boom inside fit")

    monkeypatch.setitem(sys.modules, "tests_broken_plugin", type(sys)("tests_broken_plugin"))
    sys.modules["tests_broken_plugin"].Broken = Broken  # type: ignore[attr-defined]
    monkeypatch.setitem(registry.BUILTIN_METHODS, "broken", "tests_broken_plugin:Broken")
    cfg = small_config(methods=["broken", "positive_control"], settings=["ID"])
    outcomes = run_grid(cfg, tmp_path, progress=False, log=lambda s: None)
    status = {o.key.method: o for o in outcomes}
    assert status["broken"].status == "failed" and "boom inside fit" in status["broken"].error
    assert status["positive_control"].status == "ok"
    md = Path(build_report(tmp_path)["markdown"]).read_text()
    assert "Failed cells" in md and "boom inside fit" in md


def test_resume_skips_finished_cells_and_matches(tmp_path: Path) -> None:
    part = small_config(settings=["ID"])
    run_grid(part, tmp_path, progress=False, log=lambda s: None)
    first = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("**/*.json")}
    full = small_config()
    outcomes = run_grid(full, tmp_path, progress=False, log=lambda s: None)
    assert sum(o.status == "skipped" for o in outcomes) == 2 and sum(o.status == "ok" for o in outcomes) == 2
    assert all(Path(p).stat().st_mtime_ns == t for p, t in first.items())  # untouched
    # a fresh, uninterrupted run gives the same numbers
    other = tmp_path.parent / (tmp_path.name + "_fresh")
    run_grid(full, other, progress=False, log=lambda s: None)
    a = summarize(tidy_table(ResultStore(tmp_path).records()))
    b = summarize(tidy_table(ResultStore(other).records()))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_spawned_cells_load_their_own_data_and_match_forked(tmp_path: Path) -> None:
    # spawn: the safe start method for a parent that already ran OpenMP threads; the child
    # inherits nothing, so this also shows a cell can rebuild its data and split on its own
    cfg = small_config(methods=["positive_control", "negative_control"], settings=["OOD"])
    forked, spawned = tmp_path / "fork", tmp_path / "spawn"
    run_grid(cfg, forked, progress=False, log=lambda s: None)
    outcomes = run_grid(cfg, spawned, progress=False, log=lambda s: None, start_method="spawn")
    assert [o.status for o in outcomes] == ["ok", "ok"], [o.error for o in outcomes]
    a = summarize(tidy_table(ResultStore(forked).records()))
    b = summarize(tidy_table(ResultStore(spawned).records()))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    with pytest.raises(BenchError, match="unknown start method 'thread'"):
        run_grid(cfg, tmp_path / "bad", progress=False, log=lambda s: None, start_method="thread")


def test_killed_run_resumes(tmp_path: Path) -> None:
    """SIGKILL the whole CLI process group mid-grid; a rerun completes without redoing stored cells."""
    cmd = [sys.executable, "-m", "causcell_bench.cli", "run", "--methods", "controls", "--dataset", "synthetic",
           "--n-cells", "360", "--n-genes", "80", "--n-folds", "3", "--settings", "ID",
           "--device", "cpu", "--out", str(tmp_path), "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "cells").glob("**/*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {str(p): p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("**/*.json")}
    assert 2 <= len(done) < 6, "kill came too late to test resuming"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    files = list((tmp_path / "cells").glob("**/*.json"))
    assert len(files) == 6
    assert all(Path(p).stat().st_mtime_ns == t for p, t in done.items())
    assert all(json.loads(f.read_text())["status"] == "ok" for f in files)


def test_check_flags_regressions(tmp_path: Path) -> None:
    run_grid(small_config(settings=["ID"]), tmp_path, progress=False, log=lambda s: None)
    summary = summarize(tidy_table(ResultStore(tmp_path).records()))
    assert check(summary, summary) == []
    worse = summary.copy()
    row = worse.index[(worse.metric == "pcc") & (worse.method == "positive_control")][0]
    worse.loc[row, "mean"] = summary.loc[row, "mean"] + 0.5  # the reference was much better
    problems = check(summary, worse)
    assert len(problems) == 1 and "pcc" in problems[0] and "regressed" in problems[0]


def test_check_names_what_does_not_match_before_the_rows(tmp_path: Path) -> None:
    run_grid(small_config(settings=["ID"]), tmp_path, progress=False, log=lambda s: None)
    summary = summarize(tidy_table(ResultStore(tmp_path).records()))
    other = summary.assign(dataset="ICI_response")
    assert check(summary, other) == [
        "the reference is for dataset(s) ICI_response and the run for synthetic: nothing to compare; pass the "
        "reference made for this run's dataset"]
    methods = sorted(set(summary["method"]))
    lacking = summary[summary["method"] != methods[0]]
    problems = check(summary, lacking)
    assert len(problems) == 1 and problems[0].startswith(f"unchecked: {methods[0]} is in the run")
    assert check(summary[summary["method"] != methods[0]], summary)[0].startswith(f"missing: {methods[0]} (")
    dup = pd.concat([summary, summary.iloc[[0]].assign(mean=summary.iloc[0]["mean"] + 1)])
    assert any(p.startswith("conflicting duplicate reference rows") for p in check(summary, dup))
    shifted = summary.assign(mean=summary["mean"] + np.where(summary["higher_is_better"], 1.0, -1.0))
    problems = check(summary, shifted)
    assert problems[0].startswith("cause: ") and "another preset, data size" in problems[0]


def test_scores_scale_between_controls(tmp_path: Path) -> None:
    run_grid(small_config(settings=["ID"]), tmp_path, progress=False, log=lambda s: None)
    sc = scores(summarize(tidy_table(ResultStore(tmp_path).records()))).set_index("method")
    assert sc.loc["positive_control", "overall"] == pytest.approx(1.0)
    assert sc.loc["negative_control", "overall"] == pytest.approx(0.0)


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["run", "--methods", "CausCel", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown method 'CausCel'" in r.output
    r = runner.invoke(app, ["run", "--methods", "controls", "--dataset", "nope_data", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nope_data" in r.output
    r = runner.invoke(app, ["run", "--methods", "controls", "--dataset", "MERFISH_Brain", "--data-dir", str(tmp_path),
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "Merfish_Brain" in r.output and "15242547" in r.output
    r = runner.invoke(app, ["run", "--methods", "controls", "--dag", "age->celltype,celltype->age", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "cycle" in r.output
    r = runner.invoke(app, ["run", "--methods", "controls", "--concepts", "age,tissue", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "tissue" in r.output
    r = runner.invoke(app, ["run", "--methods", "controls", "--dataset", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_rerun_with_other_data_settings_is_refused(tmp_path: Path) -> None:
    run_grid(small_config(settings=["ID"]), tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(BenchError, match="other data settings"):
        run_grid(small_config(settings=["ID"], dataset_kwargs={"n_cells": 300, "n_genes": 80}), tmp_path,
                 progress=False, log=lambda s: None)


def test_list_commands() -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["list", "methods"])
    assert r.exit_code == 0 and "scVI" in r.output and "shared" in r.output
    r = runner.invoke(app, ["list", "datasets"])
    assert r.exit_code == 0 and "synthetic" in r.output and "ICI_response" in r.output
    r = runner.invoke(app, ["list", "metrics"])
    assert r.exit_code == 0 and "pcc" in r.output


def test_plugin_method_via_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package registers a method through the `causcell_bench.methods` entry point group."""
    pkg = tmp_path / "site"
    (pkg / "my_plugin").mkdir(parents=True)
    (pkg / "my_plugin" / "__init__.py").write_text(textwrap.dedent('''
        import numpy as np
        from causcell_bench.methods.base import Capabilities, Method, dense_rows

        class MeanModel(Method):
            """Embeds nothing; reconstructs every cell as the training mean."""
            name = "MeanModel"
            capabilities = Capabilities(reconstruct=True)
            presets = {"quick": {}, "paper": {}}

            def fit(self, train, spec, *, seed):
                self._remember(train, spec)
                self.mean_ = np.asarray(train.X.mean(0)).ravel().astype(np.float32)

            def generate(self, adata, do=None, *, seed):
                if do:
                    raise NotImplementedError
                self._check_query(adata)
                return np.tile(self.mean_, (adata.n_obs, 1))
    '''))
    dist = pkg / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[causcell_bench.methods]\nMeanModel = my_plugin:MeanModel\n")
    monkeypatch.syspath_prepend(str(pkg))
    assert "MeanModel" in registry.method_names()
    from causcell_bench.testing import check_method

    check_method(registry.get_method("MeanModel"))
    outcomes = run_grid(small_config(methods=["MeanModel", "positive_control"], settings=["ID"]), tmp_path / "run",
                        progress=False, log=lambda s: None)
    assert all(o.status == "ok" for o in outcomes), [o.error for o in outcomes]
    rec = [r for r in ResultStore(tmp_path / "run").records() if r["method"] == "MeanModel"][0]
    assert "pcc" in rec["metrics"] and "disentanglement" in rec["na"]
    assert np.isfinite(rec["metrics"]["pcc"])

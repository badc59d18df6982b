"""A table is true or says why not (issue #18): unreadable and stale cells, interrupted cells, replaced
data, spec names, models not overwritten by accident, run directories shared by several processes, and
SIGKILL at random points followed by a resume that gives the uninterrupted run's table."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causcell_bench import registry
from causcell_bench.cli import app
from causcell_bench.config import RunConfig, check_method_params
from causcell_bench.errors import BenchError
from causcell_bench.grid.cell import collect, execute_cell
from causcell_bench.grid.data import DATA_CACHE
from causcell_bench.leaderboard import left_out_lines, tidy_table
from causcell_bench.methods.controls import NegativeControl
from causcell_bench.runner import expand_grid, run_grid
from causcell_bench.store import ClaimStore, ResultStore, _proc_start, read_run

TINY = {"n_cells": 300, "n_genes": 60}
FAST = ["positive_control", "negative_control", "group_mean", "no_change"]
CLI = str(Path(sys.executable).with_name("causcell-bench"))
QUIET = {"progress": False, "log": lambda s: None}


def tiny(**kw) -> RunConfig:
    base: dict = {"datasets": ["synthetic"], "methods": ["positive_control", "negative_control"], "n_folds": 5,
                  "folds": [0], "settings": ["ID"], "dataset_kwargs": TINY, "device": "cpu"}
    base.update(kw)
    return RunConfig(**base)


def table(run_dir: Path) -> pd.DataFrame:
    """The results.csv-equivalent table of a run, in a fixed row order."""
    t = tidy_table(read_run(run_dir).records)
    return t.sort_values(["dataset", "method", "setting", "fold", "seed", "metric"]).reset_index(drop=True)


class Stopper(NegativeControl):
    """A method that stops its own cell process the way $STOPPER says (inherited by forked cells)."""

    name = "stopper"

    def fit(self, train, spec, *, seed):  # type: ignore[override]
        how = os.environ.get("STOPPER", "")
        if how in ("kill", "term", "int"):
            os.kill(os.getpid(), {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[how])
            time.sleep(30)
        if how == "kbd":
            raise KeyboardInterrupt
        super().fit(train, spec, seed=seed)


@pytest.fixture
def stopper(monkeypatch: pytest.MonkeyPatch) -> None:
    module = type(sys)("tests_trust_plugin")
    module.Stopper = Stopper  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_trust_plugin", module)
    monkeypatch.setitem(registry.BUILTIN_METHODS, "stopper", "tests_trust_plugin:Stopper")


# --- 0. a table is true or says why not ------------------------------------------------------
def test_report_lists_unreadable_cells_and_strict_fails(tmp_path: Path) -> None:
    run_grid(tiny(methods=FAST), tmp_path, **QUIET)
    cells = {m: tmp_path / f"cells/synthetic/{m}/ID/fold0_seed0.json" for m in FAST}
    cells["positive_control"].write_text("[1, 2, 3]")  # valid JSON, not an object: crashed `report`
    cells["negative_control"].write_text(cells["negative_control"].read_text()[:40])  # truncated
    cells["group_mean"].write_text("")
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for m in ("positive_control", "negative_control", "group_mean"):
        rel = f"cells/synthetic/{m}/ID/fold0_seed0.json"
        assert rel in r.stderr and rel in (tmp_path / "report/leaderboard.md").read_text()
    results = pd.read_csv(tmp_path / "report/results.csv")
    assert set(results.method) == {"no_change"}  # nothing of the unreadable cells reaches a table
    r = runner.invoke(app, ["report", str(tmp_path), "--strict"])
    assert r.exit_code == 1 and "unreadable or stale" in r.stderr
    # a run recomputes unreadable cells, after which the table is whole again
    run_grid(tiny(methods=FAST), tmp_path, **QUIET)
    contents = read_run(tmp_path)
    assert not contents.unreadable and len(contents.records) == 4


def test_stale_cells_are_left_out_not_averaged(tmp_path: Path) -> None:
    run_grid(tiny(folds=[0, 1]), tmp_path, **QUIET)
    run_grid(tiny(folds=[0], preset="paper"), tmp_path, **QUIET)  # fold 0 again, with other settings
    contents = read_run(tmp_path)
    assert sorted(r["fold"] for r in contents.records) == [0, 0]
    assert sorted(p.name for p, _ in contents.stale) == ["fold1_seed0.json"] * 2
    lines = left_out_lines(contents, tmp_path)
    assert any(line.startswith("stale: cells/synthetic/positive_control/ID/fold1") for line in lines)
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--strict"])
    assert r.exit_code == 1 and "stale" in r.stderr
    summary = pd.read_csv(tmp_path / "report/summary.csv")
    assert (summary["n"] <= 1).all()  # fold 0 with new settings only, not mixed with fold 1's old ones


def test_killed_rerun_of_a_changed_cell_leaves_no_old_result(tmp_path: Path, stopper: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run_grid(tiny(methods=["stopper"]), tmp_path, **QUIET)
    assert read_run(tmp_path).records[0]["status"] == "ok"
    monkeypatch.setenv("STOPPER", "kill")
    outcomes = run_grid(tiny(methods=["stopper"], preset="paper"), tmp_path, **QUIET)
    assert [o.status for o in outcomes] == ["failed"] and "signal 9" in str(outcomes[0].error)
    contents = read_run(tmp_path)
    assert [r["status"] for r in contents.records] == ["failed"] and not contents.stale
    assert tidy_table(contents.records).empty  # the old numbers are gone, not passed off as the new ones
    # collect() itself never takes an old record with another hash for the cell's result
    key = expand_grid(tiny(methods=["stopper"]))[0]
    store = ResultStore(tmp_path)
    store.write(key, {**store.read(key), "status": "ok", "config_hash": "old"})
    out = collect(store, key, -signal.SIGKILL, 1.0, tiny(methods=["stopper"], preset="paper"))
    assert out.status == "failed" and store.read(key)["status"] == "failed"


@pytest.mark.parametrize("how", ["term", "int"])
def test_interrupted_cell_is_recorded_and_rerun(tmp_path: Path, stopper: None, monkeypatch: pytest.MonkeyPatch,
                                                how: str) -> None:
    cfg = tiny(methods=["stopper", "positive_control"])
    monkeypatch.setenv("STOPPER", how)
    outcomes = {o.key.method: o for o in run_grid(cfg, tmp_path, **QUIET)}
    assert outcomes["stopper"].status == "interrupted", outcomes["stopper"]
    assert outcomes["positive_control"].status == "ok"
    rec = ResultStore(tmp_path).read(outcomes["stopper"].key)
    assert rec["status"] == "interrupted" and "SIG" in rec["error"]
    assert any(line.startswith("interrupted: synthetic/stopper/ID/fold0") for line in
               left_out_lines(read_run(tmp_path), tmp_path))  # the report says why the cell is missing
    monkeypatch.setenv("STOPPER", "")
    again = {o.key.method: o.status for o in run_grid(cfg, tmp_path, **QUIET)}  # no --retry-failed needed
    assert again == {"stopper": "ok", "positive_control": "skipped"}


def test_keyboard_interrupt_inside_a_cell_is_recorded(tmp_path: Path, stopper: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(methods=["stopper"])
    run_grid(tiny(methods=["positive_control"]), tmp_path, **QUIET)  # the data and splits
    monkeypatch.setenv("STOPPER", "kbd")
    key = expand_grid(cfg)[0]
    with pytest.raises(KeyboardInterrupt):
        execute_cell(cfg, key, tmp_path)
    assert ResultStore(tmp_path).read(key)["status"] == "interrupted"


def _h5ad(path: Path, seed: int = 0, names: str = "cell") -> Path:
    rng = np.random.default_rng(seed)
    n = 60
    a = anndata.AnnData(X=rng.poisson(2.0, size=(n, 30)).astype(np.float32))
    a.obs_names = [f"{names}{i}" for i in range(n)]
    a.var_names = [f"g{i}" for i in range(30)]
    a.obs["age"] = pd.Categorical(np.tile(["young", "old"], n // 2))
    a.obs["kind"] = pd.Categorical(np.repeat(["a", "b", "c"], n // 3))
    a.write_h5ad(path)
    return path


def test_replaced_dataset_file_is_refused(tmp_path: Path) -> None:
    data = _h5ad(tmp_path / "mine.h5ad")
    cfg = tiny(datasets=[str(data)], concepts=["age", "kind"], edges=[], dataset_kwargs={}, n_folds=3)
    run_grid(cfg, tmp_path / "run", **QUIET)
    assert (tmp_path / "run/cells/mine").is_dir()  # a bare .h5ad is named by its stem
    try:
        _h5ad(data, seed=1)  # same shape, same cell names, other counts
        DATA_CACHE.clear()
        with pytest.raises(BenchError, match="changed since .* new --out"):
            run_grid(cfg.model_copy(update={"methods": ["group_mean"]}), tmp_path / "run", **QUIET)
        # without the fingerprint (a run made before it existed), the saved cell names still catch it
        (tmp_path / "run/splits/mine/data_fingerprint.json").unlink()
        _h5ad(data, seed=0, names="other")
        DATA_CACHE.clear()
        with pytest.raises(BenchError, match="do not fit the data of mine .* new --out"):
            run_grid(cfg.model_copy(update={"methods": ["group_mean"]}), tmp_path / "run", **QUIET)
    finally:
        DATA_CACHE.clear()


def test_run_rejected_for_a_dataset_error_writes_nothing(tmp_path: Path) -> None:
    bad = _h5ad(tmp_path / "bad.h5ad")
    a = anndata.read_h5ad(bad)
    a.X[0, 0] = np.nan
    a.write_h5ad(bad)
    runner = CliRunner()
    args = ["run", "--methods", "positive_control", "--dataset", str(bad), "--concepts", "age,kind", "--dag", "",
            "--folds", "0", "--device", "cpu", "--no-report"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "new")])
    assert r.exit_code == 2 and "NaN" in r.stderr
    assert not (tmp_path / "new").exists()
    run_grid(tiny(), tmp_path / "old", **QUIET)
    before = (tmp_path / "old/config.json").read_bytes()
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "old")])
    assert r.exit_code == 2
    assert (tmp_path / "old/config.json").read_bytes() == before


# --- 2. no silent no-ops ----------------------------------------------------------------------------
def test_params_match_methods_case_insensitively_and_refuse_the_unknown() -> None:
    assert check_method_params({"scvi": {"n_latent": 5, "lr": 1}}, ["scVI"], "quick") == {
        "scVI": {"n_latent": 5, "lr": 1}}
    with pytest.raises(BenchError, match="Did you mean scVI"):
        check_method_params({"scVl": {"n_latent": 5}}, ["scVI"], "quick")
    with pytest.raises(BenchError, match="not among this run's methods"):
        check_method_params({"CausCell": {"n_steps": 5}}, ["scVI"], "quick")
    with pytest.raises(BenchError, match="Did you mean n_latent"):
        check_method_params({"scVI": {"n_latnt": 5}}, ["scVI"], "quick")
    with pytest.raises(BenchError, match="takes an integer"):
        check_method_params({"scVI": {"n_latent": "abc"}}, ["scVI"], "quick")
    with pytest.raises(BenchError, match="takes no parameters"):
        check_method_params({"no_change": {"x": 1}}, ["no_change"], "quick")


# --- 7. dataset names ---------------------------------------------------------------------------------
def test_a_spec_names_its_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ('name = "{}"\nsource = "builtin:synthetic"\nconcepts = ["age", "domain", "celltype"]\n'
            'edges = [["age", "celltype"], ["domain", "celltype"]]\n')
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/pbmc_ifn.toml").write_text(spec.format("pbmc_ifn"))
    (tmp_path / "specs/copy.toml").write_text(spec.format("pbmc_ifn"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["run", "--methods", "positive_control", "--n-cells", "300", "--n-genes", "60", "--folds", "0",
            "--settings", "ID", "--device", "cpu", "--no-report"]
    r = runner.invoke(app, [*base, "--dataset", "specs/pbmc_ifn.toml"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["pbmc_ifn"]
    assert [r["dataset"] for r in read_run(tmp_path / "runs/pbmc_ifn").records] == ["pbmc_ifn"]
    assert (tmp_path / "runs/pbmc_ifn/cells/pbmc_ifn").is_dir() and (tmp_path / "runs/pbmc_ifn/splits/pbmc_ifn").is_dir()
    r = runner.invoke(app, [*base, "--dataset", "specs/pbmc_ifn.toml,specs/copy.toml", "--out", "two"])
    assert r.exit_code == 2 and "both named 'pbmc_ifn'" in r.stderr and not (tmp_path / "two").exists()


# --- 3. a trained model is not overwritten by accident -------------------------------------------------
def test_train_refuses_a_used_directory_and_counterfactual_makes_its_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    train = ["train", "--method", "group_mean", "--n-cells", "300", "--n-genes", "60", "--device", "cpu",
             "--out", str(tmp_path / "model")]
    assert runner.invoke(app, train).exit_code == 0
    manifest = (tmp_path / "model/manifest.json").read_bytes()
    r = runner.invoke(app, [*train, "--seed", "1"])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "model/manifest.json").read_bytes() == manifest
    r = runner.invoke(app, [*train, "--seed", "1", "--overwrite"])
    assert r.exit_code == 0 and json.loads((tmp_path / "model/manifest.json").read_text())["seed"] == 1
    out = tmp_path / "new/folder/cf.h5ad"
    r = runner.invoke(app, ["counterfactual", str(tmp_path / "model"), "--do", "age=age_1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and f"created directory {out.parent}" in r.stderr


# --- 4. several processes on one run directory -------------------------------------------------------
def test_claims_are_exclusive_and_dead_or_old_ones_taken_over(tmp_path: Path) -> None:
    key = expand_grid(tiny())[0]
    mine, other = ClaimStore(tmp_path), ClaimStore(tmp_path)
    held = mine.acquire(key)
    assert held is not None and other.acquire(key) is None  # this process is alive: no takeover
    other.release(type(held)(key, held.path, "not-the-owner"))
    assert held.path.is_file()  # only the owner releases
    mine.release(held)
    assert not held.path.exists()

    def plant(info: dict) -> None:
        ClaimStore(tmp_path).path(key).parent.mkdir(parents=True, exist_ok=True)
        ClaimStore(tmp_path).path(key).write_text(json.dumps({"token": "t", "cell": str(key), **info}))

    dead = subprocess.Popen(["true"])
    dead.wait()
    plant({"host": socket.gethostname(), "pid": dead.pid, "started_epoch": time.time()})
    assert mine.acquire(key) is not None  # its process is gone
    plant({"host": "elsewhere", "pid": 1, "started_epoch": time.time()})
    assert mine.acquire(key) is None  # another host's live-looking claim holds...
    assert ClaimStore(tmp_path, timeout_s=60).acquire(key) is None
    plant({"host": "elsewhere", "pid": 1, "started_epoch": time.time() - 120})
    assert ClaimStore(tmp_path, timeout_s=60).acquire(key) is not None  # ...until it times out


def test_a_claimed_cell_is_waited_for_then_taken_over(tmp_path: Path) -> None:
    cfg = tiny(methods=FAST, settings=["ID", "OOD"])
    key = expand_grid(cfg)[0]
    holder = subprocess.Popen(["sleep", "3"])
    threading.Thread(target=holder.wait, daemon=True).start()  # reaped when it ends, as a shell would
    path = ClaimStore(tmp_path).path(key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "pid_start": _proc_start(holder.pid),
                                "token": "t", "cell": str(key), "started": "now", "started_epoch": time.time()}))
    contents = read_run(tmp_path)
    assert any(line.startswith(f"running: {key}") for line in left_out_lines(contents, tmp_path))
    t0 = time.perf_counter()
    outcomes = run_grid(cfg, tmp_path, poll_s=0.2, **QUIET)
    assert time.perf_counter() - t0 >= 2.5 or holder.poll() is not None
    assert sorted(o.status for o in outcomes) == ["ok"] * 8
    assert not list((tmp_path / "claims").glob("**/*.json"))


def test_a_claim_left_on_a_finished_cell_is_cleared_on_resume(tmp_path: Path) -> None:
    # the window the SIGKILL test hits at random: killed after writing a record, before releasing its claim
    cfg = tiny(methods=FAST)
    run_grid(cfg, tmp_path, **QUIET)
    key = expand_grid(cfg)[1]
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = ClaimStore(tmp_path).path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "t", "cell": str(key),
                                "started_epoch": time.time()}))
    other = ClaimStore(tmp_path).path(expand_grid(cfg)[2])
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "u", "started_epoch": time.time()}))
    outcomes = run_grid(cfg, tmp_path, **QUIET)
    assert {o.status for o in outcomes} == {"skipped"}
    assert not path.exists()
    assert other.exists()  # a live-looking claim of another host is not this run's to remove


def _cli_run(out: Path, *extra: str) -> list[str]:
    return [CLI, "run", "--methods", ",".join(FAST), "--n-cells", "300", "--n-genes", "60", "--folds", "0",
            "--device", "cpu", "--no-report", "--out", str(out), *extra]


def _counts(stderr: str) -> dict[str, int]:
    line = [s for s in stderr.splitlines() if s.startswith("cells: ")][-1]
    return {k: int(v) for v, k in (part.split(" ", 1) for part in line.removeprefix("cells: ").split(", "))}


def test_two_processes_share_a_run_directory(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_cli_run(tmp_path / "shared"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    counts = [_counts(e) for e in errs]
    assert sum(c.get("ok", 0) for c in counts) == 8, counts  # every cell ran exactly once
    assert all(sum(c.values()) == 8 for c in counts), counts  # and each process saw all of them done
    assert not list((tmp_path / "shared/claims").glob("**/*.json"))
    run_grid(tiny(methods=FAST, settings=["ID", "OOD"]), tmp_path / "single", **QUIET)
    pd.testing.assert_frame_equal(table(tmp_path / "shared"), table(tmp_path / "single"))


# --- 5. SIGKILL at random points, then resume ----------------------------------------------------------
def test_sigkill_at_random_points_then_resume_gives_the_same_table(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cli_run(tmp_path / "ref"), capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(18)
    run = tmp_path / "killed"
    stored = []
    for _ in range(3):
        proc = subprocess.Popen(_cli_run(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        time.sleep(rng.uniform(0.5, 5.0))
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its cells, mid-write or mid-claim
        proc.wait()
        stored.append(len(list((run / "cells").glob("**/*.json"))))
    assert min(stored) < 8, f"every kill came after the grid had finished: {stored}"
    final = subprocess.run(_cli_run(run), capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert final.returncode == 0, final.stderr
    records = read_run(run)
    assert len(records.records) == 8 and not records.unreadable and not records.stale
    assert {r["status"] for r in records.records} == {"ok"}
    assert not list((run / "claims").glob("**/*.json"))  # none stuck as claimed
    pd.testing.assert_frame_equal(table(run), table(tmp_path / "ref"))
    digest = [hashlib.sha256(table(d).to_csv(index=False).encode()).hexdigest() for d in (run, tmp_path / "ref")]
    assert digest[0] == digest[1]


def test_truncated_stale_and_interrupted_cells_together(tmp_path: Path) -> None:
    # the scenario in one run directory: report names all three, mixes nothing, a rerun completes it
    run_grid(tiny(methods=FAST), tmp_path, **QUIET)
    cell = {m: tmp_path / f"cells/synthetic/{m}/ID/fold0_seed0.json" for m in FAST}
    whole = table(tmp_path)
    cell["positive_control"].write_text(cell["positive_control"].read_text()[:50])  # truncated
    stale = json.loads(cell["negative_control"].read_text())
    stale["config_hash"], stale["metrics"]["pcc"] = "0" * 16, 0.123  # computed with other settings
    cell["negative_control"].write_text(json.dumps(stale))
    interrupted = json.loads(cell["group_mean"].read_text())
    cell["group_mean"].write_text(json.dumps({**interrupted, "status": "interrupted", "metrics": {}}))
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output
    board = (tmp_path / "report/leaderboard.md").read_text()
    assert "unreadable: cells/synthetic/positive_control/ID/fold0_seed0.json" in board
    assert "stale: cells/synthetic/negative_control/ID/fold0_seed0.json" in board
    assert "interrupted: synthetic/group_mean/ID/fold0/seed0" in board
    results = pd.read_csv(tmp_path / "report/results.csv")
    assert set(results.method) == {"no_change"} and 0.123 not in set(results.value)
    run_grid(tiny(methods=FAST), tmp_path, **QUIET)  # recomputes exactly those three
    assert table(tmp_path).equals(whole)
    contents = read_run(tmp_path)
    assert not contents.unreadable and not contents.stale and len(contents.records) == 4

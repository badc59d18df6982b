"""One thread budget per cell: kept through scanpy's HVG step, independent of --jobs, hashed and
recorded; duplicate grid entries run once; CausCell_IND is skipped where it would repeat CausCell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from causcell_bench import threads as T
from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.leaderboard import status_table, tidy_table
from causcell_bench.runner import _is_done, expand_grid, prepare, redundant_cells, run_grid
from causcell_bench.store import CellKey, ResultStore

QUIET = {"progress": False, "log": lambda s: None}


@pytest.fixture
def clean_budget(monkeypatch: pytest.MonkeyPatch):
    """Undo apply_thread_budget's env vars and limits after the test."""
    for var in (*T.THREAD_ENV_VARS, T.ENV_VAR):
        monkeypatch.delenv(var, raising=False)  # records the original value for teardown
    yield
    T.release_thread_budget()


# a fresh interpreter, as a forked grid cell is: numba imported but its OpenMP pool not started yet
HVG_SCRIPT = """
import json, numba, torch
from causcell_bench.datasets import load, preprocess
from causcell_bench.threads import apply_thread_budget
apply_thread_budget(1)
adata, spec = load("synthetic", n_cells=200, n_genes=60)
train, test = preprocess(adata[:150], adata[150:], spec, n_hvg=30)
print(json.dumps({"torch": torch.get_num_threads(), "numba": numba.get_num_threads(), "genes": train.n_vars}))
"""


def test_budget_of_one_survives_hvg_selection() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*T.THREAD_ENV_VARS, T.ENV_VAR)}
    env["NUMBA_NUM_THREADS"] = "2"  # numba's pool may grow to 2, as on any multi-core machine
    out = subprocess.run([sys.executable, "-c", HVG_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"torch": 1, "numba": 1, "genes": 30}


def test_select_hvg_restores_thread_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any caller's torch/numba counts come back after HVG selection, budget or not."""
    import numba
    import scanpy as sc

    from causcell_bench.datasets.preprocess import select_hvg
    from causcell_bench.testing import tiny_dataset

    real = sc.pp.highly_variable_genes

    def resizing_hvg(*args, **kwargs):  # what scanpy's numba kernels do to the shared OpenMP team
        torch.set_num_threads(3)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        return real(*args, **kwargs)

    monkeypatch.setattr(sc.pp, "highly_variable_genes", resizing_hvg)
    adata, _ = tiny_dataset(n_cells=80, n_genes=40)
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    assert len(select_hvg(adata.layers["counts"], 10)) >= 10  # seurat keeps ties
    assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)


def test_apply_and_reassert_budget(clean_budget) -> None:
    import numba  # loaded (scanpy loads it): sized by set_num_threads, its env var left as it was

    before = os.environ.get("NUMBA_NUM_THREADS")
    T.apply_thread_budget(1)
    assert all(os.environ[v] == "1" for v in T.THREAD_ENV_VARS if v != "NUMBA_NUM_THREADS")
    assert os.environ.get("NUMBA_NUM_THREADS") == before and numba.get_num_threads() == 1
    torch.set_num_threads(2)
    assert T.reassert_thread_budget() == 1 and torch.get_num_threads() == 1
    with pytest.raises(BenchError, match="1 or more"):
        T.apply_thread_budget(0)


def test_effective_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(T.ENV_VAR, raising=False)
    base = {"datasets": ["synthetic"], "methods": ["positive_control"], "jobs": 4}
    assert RunConfig(**base).effective_threads() == 1  # not cores // jobs
    cfg = RunConfig(**base, threads=3)
    assert cfg.effective_threads() == 3
    monkeypatch.setenv(T.ENV_VAR, "2")
    assert cfg.effective_threads() == 2  # the environment wins
    monkeypatch.setenv(T.ENV_VAR, "two")
    with pytest.raises(BenchError, match=T.ENV_VAR):
        cfg.effective_threads()
    with pytest.raises(ValueError):
        RunConfig(**base, threads=0)


def test_threads_and_device_are_in_the_cell_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(T.ENV_VAR, raising=False)
    base = {"datasets": ["synthetic"], "methods": ["positive_control"]}
    h = RunConfig(**base).cell_hash("synthetic", "positive_control", "ID", 0, 0)
    assert RunConfig(**base, threads=1).cell_hash("synthetic", "positive_control", "ID", 0, 0) == h
    assert RunConfig(**base, threads=2).cell_hash("synthetic", "positive_control", "ID", 0, 0) != h
    assert RunConfig(**base, device="cpu").cell_hash("synthetic", "positive_control", "ID", 0, 0) != h


def test_cli_rejects_zero_threads(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from causcell_bench.cli import app

    res = CliRunner().invoke(app, ["run", "--methods", "positive_control", "--threads", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--threads 0" in res.output, res.output


def test_same_table_for_any_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(T.ENV_VAR, raising=False)  # the default thread count is what is under test
    cfg = {"datasets": ["synthetic"], "methods": ["positive_control", "negative_control", "scVI"],
           "method_params": {"scVI": {"max_epochs": 2}}, "dataset_kwargs": {"n_cells": 300, "n_genes": 60},
           "n_folds": 3, "folds": [0], "settings": ["ID"], "device": "cpu"}
    tables = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        outcomes = run_grid(RunConfig(**cfg, jobs=jobs), out, **QUIET)
        assert [o.status for o in outcomes] == ["ok"] * 3, [o.error for o in outcomes]
        records = list(ResultStore(out).records())
        assert {r["threads"] for r in records} == {1}
        tidy = tidy_table(records)
        tables.append(tidy.sort_values(["method", "metric"]).reset_index(drop=True))
    assert len(tables[0]) > 0
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_duplicates_run_once() -> None:
    cfg = RunConfig(datasets=["synthetic", "synthetic"], methods=["positive_control", "positive_control"],
                    settings=["ID", "ID"], folds=[0, 0], seeds=[0, 0])
    assert (cfg.datasets, cfg.methods, cfg.settings, cfg.folds, cfg.seeds) == (
        ["synthetic"], ["positive_control"], ["ID"], [0], [0])
    assert expand_grid(cfg) == [CellKey("synthetic", "positive_control", "ID", 0, 0)]
    # order is kept: the first occurrence wins
    assert RunConfig(datasets=["b", "a", "b"], methods=["m"], seeds=[2, 1, 2]).seeds == [2, 1]


CAUSCELL_TINY = {"n_steps": 3, "batch_size": 64, "hidden": 16, "n_blocks": 1, "heads": 2, "head_dim": 4,
                 "d": 4, "ff_mult": 2, "ddim_steps": 2, "pool_size": 8}


def _ind_config(**kw) -> RunConfig:
    base = {"datasets": ["synthetic"], "methods": ["CausCell", "CausCell_IND"],
            "method_params": {"CausCell": CAUSCELL_TINY, "CausCell_IND": CAUSCELL_TINY},
            "dataset_kwargs": {"n_cells": 200, "n_genes": 40}, "n_folds": 3, "folds": [0], "settings": ["ID"],
            "device": "cpu", "counterfactual": False}
    base.update(kw)
    return RunConfig(**base)


def test_causcell_ind_skipped_without_dag_edges(tmp_path: Path) -> None:
    cfg = _ind_config(edges=[])
    outcomes = run_grid(cfg, tmp_path, **QUIET)
    assert sorted((o.key.method, o.status) for o in outcomes) == [
        ("CausCell", "ok"), ("CausCell_IND", "skipped_redundant")], [o.error for o in outcomes]
    ind = CellKey("synthetic", "CausCell_IND", "ID", 0, 0)
    rec = ResultStore(tmp_path).read(ind)
    assert rec["status"] == "skipped_redundant" and "no DAG edges" in rec["note"] and rec["same_as"] == "CausCell"
    status = status_table(ResultStore(tmp_path).records())
    assert set(status.status) == {"ok", "skipped_redundant"}
    assert set(tidy_table(ResultStore(tmp_path).records()).method) == {"CausCell"}
    # resuming keeps it as done; without CausCell in the run (or with other settings) it must run after all
    assert [o.status for o in run_grid(cfg, tmp_path, **QUIET)] == ["skipped", "skipped"]
    assert not _is_done(rec, _ind_config(edges=[], methods=["CausCell_IND"]), ind, False)
    other = _ind_config(edges=[], method_params={"CausCell": {**CAUSCELL_TINY, "n_steps": 4},
                                                 "CausCell_IND": CAUSCELL_TINY})
    assert _is_done(rec, cfg, ind, False) and not _is_done(rec, other, ind, False)


def test_causcell_ind_kept_with_dag_edges(tmp_path: Path) -> None:
    cfg = _ind_config()  # synthetic's own DAG: age -> celltype <- domain
    prepare(cfg, tmp_path, log=lambda s: None)
    assert redundant_cells(cfg, expand_grid(cfg)) == []
    no_edges = _ind_config(edges=[])
    prepare(no_edges, tmp_path / "flat", log=lambda s: None)
    keys = expand_grid(no_edges)
    assert redundant_cells(no_edges, keys) == [k for k in keys if k.method == "CausCell_IND"]
    assert redundant_cells(_ind_config(edges=[], methods=["CausCell_IND"]), keys) == []


NUMBA_ORDER_SCRIPT = """
import numpy as np, scipy.sparse as sp, numba
from causcell_bench.threads import apply_thread_budget
from causcell_bench.datasets.preprocess import select_hvg
x = sp.csr_matrix(np.random.default_rng(0).poisson(2, size=(200, 50)).astype(np.float32))
apply_thread_budget(1); select_hvg(x, 10)   # numba's pool starts under a budget of 1
apply_thread_budget(2)                      # a later cell (or CLI command) in the same process
@numba.njit(parallel=True)
def f(a):
    s = 0.0
    for i in numba.prange(a.shape[0]):
        s += a[i]
    return s
f(np.ones(10))                              # any new compilation re-reads NUMBA_NUM_THREADS
select_hvg(x, 12)
print("ok")
"""


def test_a_new_budget_after_numba_started_does_not_break_numba() -> None:
    # numba refuses NUMBA_NUM_THREADS changing once its pool runs ("Cannot set NUMBA_NUM_THREADS to a
    # different value once the threads have been launched"): a second budget must leave it alone
    env = {k: v for k, v in os.environ.items() if k not in (*T.THREAD_ENV_VARS, T.ENV_VAR)}
    out = subprocess.run([sys.executable, "-c", NUMBA_ORDER_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_more_threads_than_cores_is_a_warning_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAUSCELL_BENCH_THREADS", raising=False)
    config = RunConfig(datasets=["synthetic"], methods=["scVI"], jobs=2, threads=2)
    assert "2 jobs x 2 threads = 4 threads on 2 CPU cores" in (config.oversubscription(cores=2) or "")
    assert config.model_copy(update={"threads": 1}).oversubscription(cores=2) is None

"""The cell record's JSON and hash are the run directory's format: each kind of record keeps exactly
the keys it has always had, and a hash computed today matches one stored by an earlier version, so
old run directories resume and the committed reference results stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from causcell_bench.config import RunConfig
from causcell_bench.grid.record import INTERRUPTED_NOTE, REDUNDANT_NOTE, CellKey, CellRecord, RunStamp, cell_hash
from causcell_bench.store import ResultStore, record_hash

KEY = CellKey("synthetic", "positive_control", "ID", 0, 0)
KEY_FIELDS = {"dataset": "synthetic", "method": "positive_control", "setting": "ID", "fold": 0, "seed": 0}


@pytest.fixture
def cfg(monkeypatch: pytest.MonkeyPatch) -> RunConfig:
    monkeypatch.setenv("CAUSCELL_BENCH_THREADS", "1")
    return RunConfig(datasets=["synthetic"], methods=["positive_control", "negative_control"], n_folds=3,
                     folds=[0, 1], dataset_kwargs={"n_cells": 300, "n_genes": 60}, device="cpu")


def test_the_hash_is_the_one_earlier_versions_stored(cfg: RunConfig) -> None:
    h = "b929e239b340446b"  # what a run directory made before this module existed holds for KEY
    assert cell_hash(cfg, KEY) == cell_hash(cfg, KEY, threads=1) == h
    assert cfg.cell_hash("synthetic", "positive_control", "ID", 0, 0) == h
    assert record_hash(cfg, {**KEY_FIELDS, "threads": 1}) == h
    assert cell_hash(cfg, KEY, threads=2) != h


def test_truth_samples_enter_the_hash_of_stochastic_methods_only(cfg: RunConfig) -> None:
    # the draws averaged for the truth task change a sampler's metrics, nobody else's: a changed count
    # recomputes CausCell's and MichiGAN's cells and keeps every other (the old hash above still holds)
    more = cfg.model_copy(update={"truth_samples": 3})
    # (scVI samples too, but has no counterfactuals to average)
    for method, changes in (("CausCell", True), ("MichiGAN", True), ("CPA", False), ("negative_control", False),
                            ("scVI", False)):
        key = CellKey("synthetic", method, "ID", 0, 0)
        assert (cell_hash(cfg, key) != cell_hash(more, key)) is changes, method


def test_cell_parts_enter_the_hash_of_cells_they_change(cfg: RunConfig) -> None:
    # parts are scored only where a setting runs one fold x seed: another count recomputes those cells
    # (the default keeps the hash above); with two folds, parts are not scored and the hash stays
    one_fold = cfg.model_copy(update={"folds": [0]})
    for parts in (0, 3):
        assert cell_hash(one_fold.model_copy(update={"cell_parts": parts}), KEY) != cell_hash(one_fold, KEY)
        assert cell_hash(cfg.model_copy(update={"cell_parts": parts}), KEY) == cell_hash(cfg, KEY)


def test_each_kind_of_record_has_its_keys(cfg: RunConfig) -> None:
    h = cell_hash(cfg, KEY)
    assert CellRecord.failed(cfg, KEY, "cannot split", threads=1).to_dict() == {
        **KEY_FIELDS, "status": "failed", "error": "cannot split", "config_hash": h, "threads": 1}
    # a Ray task lost twice: no thread count in the record (the hash uses the config's)
    assert CellRecord.failed(cfg, KEY, "died", threads=None, total_s=2.5, executor="ray").to_dict() == {
        **KEY_FIELDS, "status": "failed", "error": "died", "config_hash": h, "total_s": 2.5, "executor": "ray"}
    assert CellRecord.interrupted(cfg, KEY, INTERRUPTED_NOTE, threads=1, total_s=1.5).to_dict() == {
        **KEY_FIELDS, "status": "interrupted", "error": INTERRUPTED_NOTE, "config_hash": h, "threads": 1,
        "total_s": 1.5}
    ind = CellKey("synthetic", "CausCell_IND", "ID", 0, 0)
    assert CellRecord.redundant(cfg, ind).to_dict() == {
        **KEY_FIELDS, "method": "CausCell_IND", "status": "skipped_redundant", "same_as": "CausCell",
        "note": REDUNDANT_NOTE, "config_hash": cell_hash(cfg, ind), "preset": "quick", "device": "cpu", "threads": 1}
    stamp = RunStamp("quick", "cpu", {"numpy": "2.0"}, "2025-01-01T00:00:00")
    result = {"metrics": {"acc": 0.5}, "na": [], "timings": {"fit_s": 1.0}, "degenerate": {}, "kind": "control",
              "n_train": 10, "n_test": 5, "n_genes": 3, "capabilities": {"embedding": "none"}}
    assert CellRecord.ok(cfg, KEY, result, threads=1, stamp=stamp, total_s=2.0, peak_rss_mb=99.0).to_dict() == {
        **KEY_FIELDS, "status": "ok", **result, "config_hash": h, "threads": 1, "preset": "quick", "device": "cpu",
        "versions": {"numpy": "2.0"}, "started": "2025-01-01T00:00:00", "total_s": 2.0, "peak_rss_mb": 99.0}
    failed = CellRecord.failed(cfg, KEY, "E: x", threads=1, stamp=stamp, traceback="tb", total_s=2.0,
                               peak_rss_mb=9.0).to_dict()
    assert set(failed) == {*KEY_FIELDS, "status", "error", "traceback", "config_hash", "threads", "preset", "device",
                           "versions", "started", "total_s", "peak_rss_mb"}


def test_a_record_read_back_is_unchanged(cfg: RunConfig, tmp_path: Path) -> None:
    """Keys of a newer version and explicit nulls survive a read and a write."""
    stored = {**KEY_FIELDS, "status": "ok", "config_hash": "abc", "metrics": {"acc": None}, "error": None,
              "from_the_future": [1, 2]}
    rec = CellRecord.from_dict(stored)
    assert rec.key == KEY and rec.status == "ok" and rec.config_hash == "abc" and rec.error is None
    assert rec.to_dict() == stored
    store = ResultStore(tmp_path)
    store.write(KEY, stored)
    store.write_record(store.read_record(KEY))
    assert store.read(KEY) == stored

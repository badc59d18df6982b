"""The leaderboard's tables from cell records: one row per metric value (:func:`tidy_table`), per
cell (:func:`status_table`), per metric of a part of a fold's cells (:func:`part_table`) and per
unmeasurable metric (:func:`degenerate_table`); fold means
(:func:`summarize`) and headline metrics (:func:`headline`). :func:`metric_role` is the one place
deciding which values enter the scores (the ``role`` column).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import pandas as pd

from causcell_bench.leaderboard.common import KEYS, kind_by_name


def _info(metric: str) -> Any:
    from causcell_bench.metrics import metric_info

    try:
        return metric_info(metric)
    except Exception:  # a metric from a newer version: keep it, unscored
        return None


def _kind(record: dict[str, Any]) -> str:
    """method | control | reference (records written before the field existed: by name)."""
    return str(record.get("kind") or kind_by_name(str(record.get("method"))))


def _reconstruction_is_input(record: dict[str, Any], kind: str) -> bool:
    """The method's ``Capabilities.reconstruction_is_input`` as its record has it; records written
    before the field existed ask the method's class (only references: the flag matters for no other)."""
    caps = record.get("capabilities") or {}
    if "reconstruction_is_input" in caps:
        return bool(caps["reconstruction_is_input"])
    if kind != "reference":
        return False
    from causcell_bench.registry import get_method

    try:
        return bool(get_method(str(record.get("method"))).capabilities.reconstruction_is_input)
    except Exception:  # noqa: BLE001 - a plugin no longer installed: score it as it is
        return False


#: values of the ``role`` column; only ``scored`` values enter scores, ranks and verdicts
ROLES = ("scored", "diagnostic", "superseded", "trivial")


def metric_role(metric: str, *, measured: Collection[str] = (), kind: str = "method",
                reconstruction_is_input: bool = False) -> str:
    """Whether a value enters the scores: ``scored``, or why not.

    ``diagnostic``: declared so (CT controls, counts, flagged variants; unknown metrics too).
    ``superseded``: the metric's DAG-aware variant (``MetricInfo.superseded_by``) is among the cell's
    ``measured`` metrics, i.e. the dataset has a DAG: the variant is scored, this one is shown only.
    ``trivial``: a reference whose reconstruction is its input cell, on a metric computed from the
    reconstruction alone: perfect by construction, no evidence (controls keep theirs: they anchor the scale).
    """
    from causcell_bench.metrics import base_name

    info = _info(metric)
    if info is None or not info.aggregate:
        return "diagnostic"
    if info.superseded_by and info.superseded_by in {base_name(m) for m in measured}:
        return "superseded"
    if kind == "reference" and reconstruction_is_input and info.from_reconstruction:
        return "trivial"
    return "scored"


_COLS = ["dataset", "method", "setting", "fold", "seed", "metric", "value", "group", "higher_is_better",
         "aggregate", "role", "embedding", "kind"]


def _metric_rows(r: dict[str, Any], metrics: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    emb = (r.get("capabilities") or {}).get("embedding", "none")
    kind = _kind(r)
    echo = _reconstruction_is_input(r, kind)
    measured = {*(r.get("metrics") or {}), *(metrics or {})}
    rows = []
    for metric, value in (metrics or {}).items():
        info = _info(metric)
        rows.append({
            "dataset": r["dataset"], "method": r["method"], "setting": r["setting"], "fold": r["fold"],
            "seed": r["seed"], **extra, "metric": metric, "value": np.nan if value is None else float(value),
            "group": info.group if info else "other",
            "higher_is_better": info.higher_is_better if info else True,
            "aggregate": info.aggregate if info else False,
            "role": metric_role(metric, measured=measured, kind=kind, reconstruction_is_input=echo),
            "embedding": emb, "kind": kind,
        })
    return rows


def tidy_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, method, setting, fold, seed, metric) of the successful cells."""
    rows = [row for r in records if r.get("status") == "ok" for row in _metric_rows(r, r.get("metrics") or {})]
    return pd.DataFrame(rows, columns=_COLS)


def part_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Like :func:`tidy_table`, from the cells' ``part_metrics`` (the test cells of a single-fold run
    scored in disjoint parts, see ``grid.evaluate.cell_parts``), with a ``part`` column."""
    rows = [row for r in records if r.get("status") == "ok"
            for part, metrics in enumerate(r.get("part_metrics") or []) for row in _metric_rows(r, metrics, part=part)]
    return pd.DataFrame(rows, columns=[*_COLS[:5], "part", *_COLS[5:]])


def degenerate_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per metric a cell could not measure (NaN with a reason: one population, one label...)."""
    rows = [{"dataset": r.get("dataset"), "method": r.get("method"), "setting": r.get("setting"),
             "fold": r.get("fold"), "seed": r.get("seed"), "metric": m, "reason": why}
            for r in records if r.get("status") == "ok" for m, why in (r.get("degenerate") or {}).items()]
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "fold", "seed", "metric", "reason"])


def status_table(records: Iterable[dict[str, Any]], claims: Iterable[tuple[Any, dict[str, Any]]] = ()) -> pd.DataFrame:
    """One row per cell: status, error, timings and memory (failures included); plus one row per claimed
    cell (``claims`` from :func:`causcell_bench.store.read_run`), status ``claimed`` (a process is running
    it) or ``abandoned`` (its claim is stale: the next run takes it over)."""
    rows = []
    for _, c in claims:
        parts = str(c.get("cell", "")).split("/")
        if len(parts) != 5:
            continue
        dataset, method, setting, fold, seed = parts
        rows.append({
            "dataset": dataset, "method": method, "setting": setting, "fold": int(fold.removeprefix("fold")),
            "seed": int(seed.removeprefix("seed")), "status": "abandoned" if c.get("stale") else "claimed",
            "error": c.get("stale"), "note": f"claimed by {c.get('host')} pid {c.get('pid')} since {c.get('started')}",
        })
    for r in records:
        t = r.get("timings") or {}
        rows.append({
            "dataset": r.get("dataset"), "method": r.get("method"), "setting": r.get("setting"),
            "fold": r.get("fold"), "seed": r.get("seed"), "status": r.get("status"), "error": r.get("error"),
            "fit_s": t.get("fit_s"), "total_s": r.get("total_s"), "peak_rss_mb": r.get("peak_rss_mb"),
            "threads": r.get("threads"), "note": r.get("note"),
        })
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "fold", "seed", "status", "error",
                                       "fit_s", "total_s", "peak_rss_mb", "threads", "note"])


SUMMARY_META = ["group", "higher_is_better", "aggregate", "role", "embedding", "kind"]


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over folds (and seeds) per (dataset, method, setting, metric)."""
    meta = [m for m in SUMMARY_META if m in tidy.columns]
    if tidy.empty:
        return pd.DataFrame(columns=[*KEYS, "metric", *meta, "mean", "sd", "n"])
    g = tidy.groupby([*KEYS, "metric"], sort=False)
    out = g["value"].agg(mean="mean", sd="std", n="count").reset_index()
    first = g[meta].first().reset_index()
    return first.merge(out, on=[*KEYS, "metric"])[[*KEYS, "metric", *meta, "mean", "sd", "n"]]


def scored_rows(table: pd.DataFrame) -> pd.Series:
    """Which rows of a tidy table or summary enter the scores (``role == "scored"``; tables from before
    the column existed: the declared ``aggregate``)."""
    if "role" in table.columns:
        return table["role"] == "scored"
    return table["aggregate"].astype(bool)


def trivial_values(table: pd.DataFrame) -> set[tuple[str, str]]:
    """The (method, metric) pairs whose value is ``trivial`` (the tables show them as such)."""
    if "role" not in table.columns:
        return set()
    t = table[table["role"] == "trivial"]
    return set(zip(t["method"], t["metric"]))


def headline(summary: pd.DataFrame, *, scored_only: bool = True) -> pd.DataFrame:
    """Per-concept metrics (``acc:age``...) averaged into one value per base metric, with its
    :func:`metric_role`; with ``scored_only`` only the values that enter the scores."""
    s = summary[scored_rows(summary)].copy() if scored_only else summary.copy()
    s["base"] = s["metric"].str.split(":").str[0]
    if "kind" not in s.columns:
        s["kind"] = "method"
    if "role" not in s.columns:
        s["role"] = np.where(s["aggregate"].astype(bool), "scored", "diagnostic")
    g = s.groupby([*KEYS, "base"], sort=False)
    out = g.agg(mean=("mean", "mean"), sd=("sd", "mean"), group=("group", "first"),
                higher_is_better=("higher_is_better", "first"), embedding=("embedding", "first"),
                kind=("kind", "first"), role=("role", "first")).reset_index()
    return out.rename(columns={"base": "metric"})


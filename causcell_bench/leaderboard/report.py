"""A run's report and its regression check: :func:`build_report` rebuilds every table and figure
from the cell files, :func:`left_out_lines` names the cells a table leaves out, :func:`check`
compares fold means with a committed reference."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from causcell_bench.errors import DiskError
from causcell_bench.fileio import atomic_path, atomic_write_text
from causcell_bench.leaderboard.common import KEYS
from causcell_bench.leaderboard.html import write_index_html
from causcell_bench.leaderboard.rendering import heatmap, markdown
from causcell_bench.leaderboard.scoring import scores, uninformative, unseparated, violations
from causcell_bench.leaderboard.tables import degenerate_table, part_table, status_table, summarize, tidy_table
from causcell_bench.leaderboard.verdict import heldout_verdict
from causcell_bench.store import RunContents, read_run


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, figure: bool = True,
                 contents: RunContents | None = None) -> dict[str, Path]:
    """Rebuild every table and figure of a run from its cell JSONs; return the written paths.

    ``contents``: the run as :func:`causcell_bench.store.read_run` sorted it (read here if None);
    unreadable and stale cells are left out of every table and listed first in the leaderboard."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    contents = contents if contents is not None else read_run(run_dir)
    records = contents.records  # readable and current: unreadable and stale cells are left out, and listed
    tidy, status = tidy_table(records), status_table(records, contents.claims)
    summary = summarize(tidy)
    parts = part_table(records)
    score_table = scores(summary, tidy=tidy, parts=parts)
    viol, uninf = violations(summary), uninformative(summary)
    # what a fold could not measure, then what the controls do not separate on this data
    measured, unsep = degenerate_table(records), unseparated(summary)
    degenerate = (unsep if measured.empty else measured if unsep.empty
                  else pd.concat([measured, unsep], ignore_index=True))
    verdict = heldout_verdict(tidy, parts)
    paths = {
        "results": out / "results.csv", "summary": out / "summary.csv", "scores": out / "scores.csv",
        "status": out / "status.csv", "markdown": out / "leaderboard.md", "violations": out / "violations.csv",
        "degenerate": out / "degenerate.csv", "uninformative": out / "uninformative.csv",
        "heldout_verdict": out / "heldout_verdict.csv",
    }
    # every file goes through a temporary file renamed into place: a full disk leaves none half-written
    for key, table in (("heldout_verdict", verdict), ("uninformative", uninf), ("violations", viol),
                       ("degenerate", degenerate), ("results", tidy), ("summary", summary), ("scores", score_table),
                       ("status", status)):
        with atomic_path(paths[key]) as tmp:
            table.to_csv(tmp, index=False)
    try:
        with atomic_path(out / "results.parquet") as tmp:
            tidy.to_parquet(tmp, index=False)
        paths["parquet"] = out / "results.parquet"
    except ImportError:  # pyarrow is a dependency, but a stripped install should still get CSVs
        pass
    atomic_write_text(paths["markdown"], markdown(summary, score_table, status, viol, degenerate, uninf,
                                                  left_out=left_out_lines(contents, run_dir), verdict=verdict))
    if figure and not summary.empty:
        try:
            for p in heatmap(summary, score_table, out / "heatmap"):
                paths[p.name] = p
            (out / "heatmap_error.txt").unlink(missing_ok=True)  # an earlier report's failure no longer holds
        except DiskError:
            raise  # no space for the figure is no space for the rest either: say so, do not write more
        except Exception as e:  # the figure must never cost the user the tables
            atomic_write_text(out / "heatmap_error.txt", f"{type(e).__name__}: {e}\n")
            paths["heatmap_error"] = out / "heatmap_error.txt"
    paths["html"] = write_index_html(out, run_dir, tidy, summary, score_table, status, dict(paths), records=records,
                                     verdict=verdict)
    return paths


def left_out_lines(contents: RunContents, run_dir: str | Path) -> list[str]:
    """One line per cell file a table leaves out (unreadable, stale) or cannot include yet (claimed)."""
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(run_dir))
        except ValueError:
            return str(p)

    lines = [f"unreadable: {rel(p)} {why}" for p, why in contents.unreadable]
    lines += [f"stale: {rel(p)} was computed with other settings than {rel(Path(run_dir) / 'config.json')} "
              "(the last run's)" for p, _ in contents.stale]
    lines += [f"unknown metrics: {rel(p)} has {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}, which this "
              "version does not know (renamed or retired; its other metrics are used)" for p, keys in contents.dropped]
    lines += [f"interrupted: {r['dataset']}/{r['method']}/{r['setting']}/fold{r['fold']}/seed{r['seed']} stopped "
              "before it finished (the next run reruns it)" for r in contents.records if r.get("status") == "interrupted"]
    for p, c in contents.claims:
        lines.append(f"abandoned: {c.get('cell')} (claim {rel(p)}: {c['stale']})" if c.get("stale") else
                     f"running: {c.get('cell')} (claimed by {c.get('host')} pid {c.get('pid')} since {c.get('started')})")
    return lines


DEFAULT_TOLERANCE = {"abs": 0.05, "rel": 0.25}


def check(summary: pd.DataFrame, reference: pd.DataFrame, tolerance: dict[str, float] | None = None,
          strict: bool = False) -> list[str]:
    """Compare fold means with a reference summary; return one line per regression.

    A metric regresses when it is worse than the reference by more than
    ``max(abs, rel * |ref|)`` in its own direction (or, with ``strict``, differs
    either way), or when a reference row is missing from the run. Before the rows: a reference with
    no dataset or setting in common is one line (the cause, not hundreds of rows); a run method the
    reference lacks is "unchecked", a reference method the run lacks one "missing" line, duplicate
    reference rows are named; when most compared values differ, a first line says what usually
    causes that.
    """
    structural = reference_mismatch(summary, reference)
    if structural is not None:  # another dataset's reference: listing its rows would hide the cause
        return [structural]
    problems = reference_gaps(summary, reference)
    covered = set(summary["method"]) & set(reference["method"])
    reference = reference[reference["method"].isin(covered)].drop_duplicates([*KEYS, "metric"], keep="first")
    problems += _compare(summary, reference, tolerance, strict)
    compared = len(reference)
    regressed = sum(p.startswith(("regressed", "changed", "missing")) for p in problems)
    if compared >= 20 and regressed > compared / 2:
        problems.insert(0, f"cause: {regressed} of {compared} compared values differ; a run with another preset, "
                           "data size (--n-cells/--n-genes), seed or step cap than the reference's would do this: "
                           "compare with the reference's own command (scripts/ci_grid.sh for the CI reference)")
    return problems


def reference_mismatch(summary: pd.DataFrame, reference: pd.DataFrame) -> str | None:
    """One line when the reference cannot be for this run at all (no dataset or setting in common)."""
    run_ds, ref_ds = set(map(str, summary["dataset"])), set(map(str, reference["dataset"]))
    if not run_ds & ref_ds:
        return (f"the reference is for dataset(s) {', '.join(sorted(ref_ds))} and the run for "
                f"{', '.join(sorted(run_ds))}: nothing to compare; pass the reference made for this run's dataset")
    run_st, ref_st = set(map(str, summary["setting"])), set(map(str, reference["setting"]))
    if not run_st & ref_st:
        return (f"the reference covers setting(s) {', '.join(sorted(ref_st))} and the run "
                f"{', '.join(sorted(run_st))}: nothing to compare; run the reference's settings")
    return None


def reference_gaps(summary: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Lines for what the comparison row by row would not say: methods of the run the reference
    lacks (unchecked), methods of the reference the run lacks (one line each, not one per value), and
    duplicate reference rows (conflicting ones would otherwise let the last win)."""
    lines = []
    run_m, ref_m = set(summary["method"]), set(reference["method"])
    for m in sorted(run_m - ref_m):
        lines.append(f"unchecked: {m} is in the run but has no reference rows; regenerate the reference with it "
                     "(e.g. scripts/ci_grid.sh --update) or leave it out of the run")
    for m in sorted(ref_m - run_m):
        n = int((reference["method"] == m).sum())
        lines.append(f"missing: {m} ({n} reference values) is not in the run")
    dup = reference[reference.duplicated([*KEYS, "metric"], keep=False)]
    for key, group in dup.groupby([*KEYS, "metric"], sort=True):
        values = sorted(set(group["mean"].astype(float).round(6)))
        what = "conflicting duplicate" if len(values) > 1 else "duplicate"
        lines.append(f"{what} reference rows: {'/'.join(map(str, key))}: {', '.join(map(str, values))}; keep one")
    return lines


def _compare(summary: pd.DataFrame, reference: pd.DataFrame, tolerance: dict[str, float] | None,
             strict: bool) -> list[str]:
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    if "tolerance" in reference.columns:
        per_row_tol = reference.set_index([*KEYS, "metric"])["tolerance"].to_dict()
    else:
        per_row_tol = {}
    cur = summary.set_index([*KEYS, "metric"])
    problems = []
    for _, ref in reference.iterrows():
        key = (ref.dataset, ref.method, ref.setting, ref.metric)
        if key not in cur.index:
            problems.append(f"missing: {'/'.join(map(str, key))} (reference {ref['mean']:.4f})")
            continue
        new = float(cur.loc[key, "mean"])
        old = float(ref["mean"])
        if not math.isfinite(old) and not math.isfinite(new):
            continue
        if math.isfinite(old) != math.isfinite(new):
            problems.append(f"changed: {'/'.join(map(str, key))}: {old} -> {new}")
            continue
        allowed = per_row_tol.get(key)
        if allowed is None or not math.isfinite(allowed):
            allowed = max(tol["abs"], tol["rel"] * abs(old))
        hib = bool(cur.loc[key, "higher_is_better"])
        worse = (old - new) if hib else (new - old)
        if worse > allowed or (strict and abs(new - old) > allowed):
            problems.append(f"{'regressed' if worse > allowed else 'changed'}: {'/'.join(map(str, key))}: "
                            f"{old:.4f} -> {new:.4f} (tolerance {allowed:.4f})")
    return problems


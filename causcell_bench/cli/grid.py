"""The grid commands: ``run`` a benchmark grid, ``report`` its leaderboard, ``check`` it against a
reference table, ``check-validity`` of its metrics, ``list`` what is available, ``prepare`` a paper
dataset's files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from causcell_bench.assignments import assignment_dict
from causcell_bench.cli.core import (
    Concepts,
    Dag,
    DataDir,
    Device,
    MethodParams,
    NCells,
    NGenes,
    NHvg,
    Preset,
    Threads,
    app,
    check_at_least,
    check_data_options,
    check_out_dir,
    comma_list,
    console,
    err_console,
    fail,
    friendly,
    parse_ints,
    parse_params,
)
from causcell_bench.errors import BenchError

RunDir = Annotated[Path, typer.Argument(help="a run directory written by `run`")]


def parse_holdout(item: str) -> dict[str, str]:
    """``'a=x,b=y'`` -> ``{"a": "x", "b": "y"}``: one held-out label combination (one --holdout)."""
    return assignment_dict(item, flag="--holdout", form="concept=value,concept=value",
                           example="condition=stimulated,cell_type=CD4T", several=True)


@app.command()
@friendly
def run(
    methods: Annotated[str, typer.Option(help="'all', 'controls', or a comma-separated list of method names")] = "all",
    dataset: Annotated[str, typer.Option(help="built-in or paper dataset name(s), a spec .toml, or an .h5ad (comma-separated)")] = "synthetic",
    settings: Annotated[str, typer.Option(help="ID, OOD or ID,OOD")] = "ID,OOD",
    folds: Annotated[str | None, typer.Option(help="fold indices to run, e.g. '0,1' (default: all)")] = None,
    n_folds: Annotated[int, typer.Option(help="number of folds of each split")] = 5,
    seeds: Annotated[str, typer.Option(help="model seeds, comma-separated")] = "0",
    preset: Preset = "quick",
    device: Device = "auto",
    jobs: Annotated[int, typer.Option(help="grid cells run in parallel")] = 1,
    threads: Threads = None,
    executor: Annotated[str, typer.Option(help="where grid cells run: local (forked processes) or ray (pip install 'causcell-bench[ray]')")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="address of an existing Ray cluster (default: start a local one)")] = None,
    start_method: Annotated[str, typer.Option(help="how local cell processes start: fork (shares loaded data), spawn or forkserver (each cell loads its data)")] = "fork",
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<dataset>)")] = None,
    force_out: Annotated[bool, typer.Option(help="write into an --out folder that holds other files and no run "
                         "(refused by default: the run's folders would be spread among them)")] = False,
    n_cells: NCells = None,
    n_genes: NGenes = None,
    n_hvg: NHvg = None,
    concepts: Concepts = None,
    dag: Dag = None,
    data_dir: DataDir = None,
    param: MethodParams = None,
    probe: Annotated[str, typer.Option(help="probe for predictive metrics: logreg or knn")] = "logreg",
    holdout: Annotated[list[str] | None, typer.Option(help="hold out a label combination as an extra HOLDOUT "
                       "fold, e.g. 'condition=stimulated,cell_type=CD4T' (repeatable)")] = None,
    cf_concept: Annotated[str | None, typer.Option(help="concept the held-out population task intervenes on "
                          "(default: the spec's perturbation, else each concept in turn)")] = None,
    cell_parts: Annotated[int, typer.Option(help="with one fold x seed, also score the test cells in this many "
                          "parts for the leaderboard's rank intervals (0: off)")] = 5,
    truth_samples: Annotated[int, typer.Option(help="draws a stochastic method (CausCell, MichiGAN) averages "
                             "for the scores against the simulator's expected counterfactuals (1: one sample)")] = 10,
    retry_failed: Annotated[bool, typer.Option(help="rerun cells recorded as failed")] = False,
    report: Annotated[bool, typer.Option(help="build the leaderboard when the grid is done")] = True,
    claim_timeout: Annotated[float, typer.Option(help="hours after which another process's claim on a cell "
                             "counts as abandoned and is taken over (a dead process's on this host at once)")] = 24.0,
) -> None:
    """Run a benchmark grid; finished cells are kept, so rerunning resumes. Several processes may run
    into one --out directory: they split the cells between them."""
    from causcell_bench.config import RunConfig, check_device
    from causcell_bench.datasets.spec import parse_edges
    from causcell_bench.registry import resolve_methods
    from causcell_bench.runner import dataset_names, run_grid, summarize_outcomes
    from causcell_bench.store import check_run_out

    # every option is checked before any data is loaded or anything written
    if ray_address and executor != "ray":
        raise BenchError("--ray-address needs --executor ray")
    check_at_least(threads, "--threads")
    check_at_least(n_folds, "--n-folds", 1)  # a random split needs 2: make_splits says so, naming the dataset
    check_at_least(jobs, "--jobs")
    check_data_options(n_cells, n_genes, n_hvg, data_dir)
    if cell_parts < 0:
        raise BenchError(f"--cell-parts {cell_parts}: give 0 (off) or a number of parts such as 5")
    if truth_samples < 1:
        raise BenchError(f"--truth-samples {truth_samples}: give 1 (a single sample) or more draws to average, e.g. 10")
    if claim_timeout <= 0:
        raise BenchError(f"--claim-timeout {claim_timeout}: give a positive number of hours")
    fold_list = parse_ints(folds, "--folds", high=n_folds - 1) if folds is not None else None
    seed_list = parse_ints(seeds, "--seeds", high=2**32 - 1, example="0,1")
    setting_list = comma_list(settings) or []
    bad = [x for x in setting_list if x not in ("ID", "OOD", "HOLDOUT")]
    if bad or not setting_list:
        raise BenchError(f"--settings {settings}: choose ID, OOD or ID,OOD (HOLDOUT comes with --holdout)")
    check_device(device, visible=executor == "local")  # a Ray cluster's GPUs are the Ray executor's to check
    names = comma_list(dataset) or []
    if not names:
        raise BenchError("--dataset is empty; give a dataset name, a spec .toml or an .h5ad")
    kw: dict[str, Any] = {}
    if n_cells is not None:
        kw["n_cells"] = n_cells
    if n_genes is not None:
        kw["n_genes"] = n_genes
    config = RunConfig.request(
        check_gpu=executor == "local",
        datasets=names, methods=resolve_methods(methods), settings=setting_list,
        n_folds=n_folds, folds=fold_list, seeds=seed_list, preset=preset, device=device, jobs=jobs,
        threads=threads, dataset_kwargs=kw, method_params=parse_params(param), concepts=comma_list(concepts),
        edges=parse_edges(dag) if dag is not None else None, n_hvg=n_hvg,
        data_dir=str(data_dir) if data_dir else None, probe=probe,
        holdout=[parse_holdout(h) for h in holdout] if holdout else None, cf_concept=cf_concept,
        cell_parts=cell_parts, truth_samples=truth_samples,
    )
    if (crowded := config.oversubscription()) is not None:
        err_console.print(f"warning: {crowded}", highlight=False, soft_wrap=True)
    stored = dataset_names(config)  # spec names; two specs with one name fail here
    run_dir = out or Path("runs") / "_".join(dict.fromkeys(stored.values()))
    check_out_dir(run_dir)
    if not force_out:
        check_run_out(run_dir, flag="--out", force="pass --force-out")
    err_console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)
    try:
        outcomes = run_grid(config, run_dir, retry_failed=retry_failed, executor=executor, ray_address=ray_address,
                            start_method=start_method, claim_timeout_s=claim_timeout * 3600)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    counts = summarize_outcomes(outcomes)
    err_console.print("cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()), soft_wrap=True)
    if report:
        _report(run_dir, None)
    # nothing to show: every cell failed, or was stopped in its own process (a rerun resumes it)
    if (counts.get("failed", 0) or counts.get("interrupted", 0)) and not any(
            counts.get(k, 0) for k in ("ok", "skipped", "elsewhere")):
        raise typer.Exit(1)


def _warn_left_out(run_dir: Path, contents: Any) -> None:
    """Name, on the terminal, every cell file a table leaves out (and why) and every cell still claimed."""
    from causcell_bench.leaderboard import left_out_lines

    for line in left_out_lines(contents, run_dir):
        err_console.print(Text.assemble(("warning: ", "yellow"), line, " (left out)" if not line.startswith("running")
                                        else ""), soft_wrap=True, highlight=False)
    if contents.config_note:
        err_console.print(Text.assemble(("warning: ", "yellow"), contents.config_note), soft_wrap=True, highlight=False)


def _report(run_dir: Path, out: Path | None, strict: bool = False) -> None:
    from causcell_bench.leaderboard import build_report
    from causcell_bench.store import read_run

    contents = read_run(run_dir)
    paths = build_report(run_dir, out, contents=contents)
    typer.echo(paths["markdown"].read_text())  # plain: a markdown table must not be re-wrapped
    err_console.print("written: " + ", ".join(str(p) for p in paths.values()), highlight=False, soft_wrap=True)
    if "heatmap_error" in paths:  # the tables are complete without it, but the user must not miss the gap
        why = " ".join(paths["heatmap_error"].read_text().split())[:200]
        err_console.print(Text.assemble(("warning: ", "yellow"), f"no heatmap was drawn ({why}, kept in "
                                        f"{paths['heatmap_error']}); the tables and leaderboard are complete"),
                          soft_wrap=True, highlight=False)
    _warn_left_out(run_dir, contents)
    bad = len(contents.unreadable) + len(contents.stale) + len(contents.dropped)
    if strict and bad:
        fail(f"{bad} cell file(s) of {run_dir} are unreadable or stale, or hold metrics this version does not "
             "know, and were (partly) left out (listed above); rerun the run command to recompute them, or drop "
             "--strict", 1)


@app.command()
@friendly
def report(
    run_dir: RunDir,
    out: Annotated[Path | None, typer.Option(help="where to write (default RUN_DIR/report)")] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 if any cell file is unreadable or stale (left out)")] = False,
) -> None:
    """Rebuild the leaderboard (tables, markdown, funky heatmap) from a run's cell files. Unreadable cell
    files and cells computed with other settings than the run's config.json are left out and listed."""
    if not (run_dir / "cells").is_dir():
        raise BenchError(f"{run_dir} holds no results (no cells/ folder); pass the --out directory of a run")
    check_out_dir(out if out is not None else run_dir / "report")
    _report(run_dir, out, strict)


REFERENCE_COLUMNS = ("dataset", "method", "setting", "metric", "mean")


def read_reference(path: Path) -> Any:
    """A reference summary table, or a BenchError saying what is wrong with the file."""
    import pandas as pd

    if not path.is_file():
        raise BenchError(f"reference table {path} does not exist; pass a summary CSV such as results/<name>.csv")
    hint = "pass a summary.csv written by `causcell-bench report` (or a committed results/<name>.csv)"
    try:
        ref = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise BenchError(f"reference table {path} is empty; {hint}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"cannot read reference table {path} as CSV ({' '.join(str(e).split())[:160]}); {hint}") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in ref.columns]
    if missing:
        raise BenchError(f"reference table {path} lacks the column(s) {', '.join(missing)} (it has "
                         f"{', '.join(map(str, ref.columns[:8]))}); {hint}")
    if ref.empty:
        raise BenchError(f"reference table {path} has no rows; {hint}")
    mean = pd.to_numeric(ref["mean"], errors="coerce")
    if (mean.isna() & ref["mean"].notna()).any():
        raise BenchError(f"reference table {path}: the mean column holds values that are not numbers; {hint}")
    return ref.assign(mean=mean)


def _current_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's readable, current records; warns about the rest."""
    from causcell_bench.store import read_run

    if run_dir.is_file():
        raise BenchError(f"{run_dir} is a file, not a run directory; pass the --out directory of a run")
    if not run_dir.is_dir():
        raise BenchError(f"run directory {run_dir} does not exist; pass the --out directory of a run")
    contents = read_run(run_dir)
    _warn_left_out(run_dir, contents)
    return contents.records


@app.command()
@friendly
def check(
    run_dir: RunDir,
    reference: Annotated[Path, typer.Option(help="committed reference summary CSV (results/<name>.csv)")],
    abs_tol: Annotated[float, typer.Option(help="absolute tolerance when the reference has no tolerance column")] = 0.05,
    rel_tol: Annotated[float, typer.Option(help="relative tolerance (of |reference|)")] = 0.25,
    strict: Annotated[bool, typer.Option(help="also fail on improvements beyond tolerance")] = False,
) -> None:
    """Compare a run's summary with a reference table; exit 1 listing each regression."""
    from causcell_bench.leaderboard import check as check_tables
    from causcell_bench.leaderboard import summarize, tidy_table

    ref = read_reference(reference)  # a bad reference is the user's to fix: before reading the run
    summary = summarize(tidy_table(_current_records(run_dir)))
    if summary.empty:
        raise BenchError(f"{run_dir} holds no successful results to check")
    problems = check_tables(summary, ref, {"abs": abs_tol, "rel": rel_tol}, strict=strict)
    if problems:
        for p in problems:
            err_console.print(Text(p, style="red"), highlight=False, soft_wrap=True)
        # a reference of another dataset or setting is one finding, not a regression of the run
        rows = [p for p in problems if p.startswith(("regressed", "changed", "missing"))]
        tail = (f"{len(rows)} value(s) differ from {reference}" if rows else
                f"the reference {reference} does not fit this run (above)")
        err_console.print(tail, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"OK: {len(ref)} reference values within tolerance", highlight=False)


@app.command("check-validity")
@friendly
def check_validity(
    run_dir: RunDir,
) -> None:
    """List where the metrics cannot be trusted on this run: every value outside \\[negative control,
    positive control], and every metric on which no_change or group_mean beats every method."""
    from causcell_bench.leaderboard import summarize, tidy_table, uninformative, violations

    summary = summarize(tidy_table(_current_records(run_dir)))
    if summary.empty:
        raise BenchError(f"{run_dir} holds no successful results")
    viol, uninf = violations(summary), uninformative(summary)
    have = set(summary["method"])
    if not {"positive_control", "negative_control"} <= have:
        console.print("nothing was comparable: bracketing needs both controls (positive_control and "
                      "negative_control) in the run; add them to --methods", highlight=False, soft_wrap=True)
    if not {"no_change", "group_mean", "additive_shift"} & have:
        console.print("no trivial reference ran (no_change, group_mean, additive_shift), so none can be checked to "
                      "beat the methods; add them to --methods", highlight=False, soft_wrap=True)
    console.print(f"[bold]{len(viol)} control bracketing violation(s)[/bold]")
    for _, v in viol.iterrows():
        console.print(f"  {v.dataset}/{v.setting} {v.method} {v.metric} = {v.value:.4g}: {v.violation} "
                      f"({v.control_value:.4g})", highlight=False, soft_wrap=True)
    console.print(f"[bold]{len(uninf)} metric(s) a trivial reference wins[/bold]")
    for _, u in uninf.iterrows():
        console.print(f"  {u.dataset}/{u.setting} {u.metric}: {u.reference} {u.reference_value:.4g} beats every "
                      f"method (best {u.best_method} {u.best_value:.4g})", highlight=False, soft_wrap=True)


LIST_FORMATS = ("table", "csv", "json")


def _print_table(t: Table) -> None:
    """A rich table on stdout; outside a terminal as wide as its longest row, so that no name is cut to
    an ellipsis or wrapped (``list metrics | grep exclusivity_dag`` finds it)."""
    if getattr(console.file, "isatty", lambda: False)():  # not is_terminal: FORCE_COLOR would make a pipe one
        console.print(t)
        return
    from rich.console import Console

    natural = console.measure(t, options=console.options.update_width(100_000)).maximum  # unbounded: whole cells
    wide = Console(width=max(80, natural), no_color=True, highlight=False)
    wide.print(t, crop=False)


def _print_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    """``rows`` as CSV (a header, then one line per row) or a JSON list of objects, for scripts."""
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    # nested values (presets) as JSON text; booleans as true/false, the spelling JSON uses
    writer.writerows({k: json.dumps(v, default=str) if isinstance(v, (dict, list, bool)) else v for k, v in r.items()} for r in rows)
    typer.echo(buffer.getvalue(), nl=False)


def _method_rows(verbose: bool) -> list[dict[str, Any]]:
    from causcell_bench import registry

    rows: list[dict[str, Any]] = []
    for name in registry.method_names():
        try:
            cls = registry.get_method(name)
        except BenchError as e:
            rows.append({"method": name, "available": False, "error": str(e)})
            continue
        c = cls.capabilities
        row: dict[str, Any] = {"method": name, "available": True, "error": "", "kind": getattr(cls, "kind", "method"),
                               "embedding": c.embedding, "unexplained": c.unexplained, "reconstruct": c.reconstruct,
                               "counterfactual": c.counterfactual, "uses_dag": c.uses_dag, "stochastic": c.stochastic}
        if verbose:
            row["presets"] = {preset: dict(params) for preset, params in cls.presets.items()}
        rows.append(row)
    return rows


def _dataset_rows() -> list[dict[str, Any]]:
    from causcell_bench import registry
    from causcell_bench.datasets import BUILTIN_DATASETS, PAPER_DATASETS

    rows = []
    for name in registry.dataset_names():
        kind = "built-in" if name in BUILTIN_DATASETS else "paper (local files)" if name in PAPER_DATASETS else "plugin"
        desc = BUILTIN_DATASETS.get(name) or PAPER_DATASETS.get(name) or ""
        rows.append({"dataset": name, "kind": kind, "description": str(getattr(desc, "description", desc))})
    return rows


def _metric_rows() -> list[dict[str, Any]]:
    from causcell_bench.metrics import list_metrics

    return [{"metric": m.name, "category": m.category, "group": m.group,
             "better": "higher" if m.higher_is_better else "lower",
             "scored": ("no DAG" if m.superseded_by else "yes") if m.aggregate else "no",
             "computed_by": m.defined_in.removeprefix("causcell_bench.metrics."), "description": m.description}
            for m in list_metrics()]


@app.command("list")
@friendly
def list_(
    what: Annotated[str, typer.Argument(help="methods, datasets or metrics")] = "methods",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="methods: every preset's settings")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table (for reading), csv or json (for scripts)")] = "table",
) -> None:
    """Show the available methods (with capabilities), datasets or metrics (with where each is computed).
    Outside a terminal the table is printed whole (no name cut short); --format csv or json for scripts."""
    if fmt not in LIST_FORMATS:
        raise BenchError(f"--format {fmt!r}: choose table, csv or json")
    rows_of = {"methods": lambda: _method_rows(verbose), "datasets": _dataset_rows, "metrics": _metric_rows}
    if what not in rows_of:
        raise BenchError(f"cannot list {what!r}; choose methods, datasets or metrics")
    rows = rows_of[what]()
    if fmt != "table":
        _print_rows(rows, fmt)
        return
    if what == "methods":
        t = Table("method", "embedding", "u", "recon", "cf", "DAG", "samples",
                  caption="u: unexplained-concept embedding; recon: reconstruction; cf: counterfactuals; "
                          "DAG: respects the causal graph; samples: generate() draws samples (scored "
                          "against the expected truth on the mean of --truth-samples draws)")
        t.columns[0].no_wrap = True
        t.columns[1].no_wrap = True
        for r in rows:
            if not r["available"]:
                t.add_row(r["method"], Text(f"unavailable: {r['error']}", style="red"), "", "", "", "", "")
                continue
            t.add_row(r["method"], r["embedding"], *("yes" if r[k] else "-" for k in
                      ("unexplained", "reconstruct", "counterfactual", "uses_dag", "stochastic")))
        _print_table(t)
        for r in rows if verbose else []:
            if not r["available"]:
                continue
            console.print(f"[bold]{r['method']}[/bold] ({r['kind']})")
            for preset, params in r["presets"].items():
                text = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(no parameters)"
                console.print(f"  {preset}: {text}", highlight=False, soft_wrap=True)
    elif what == "datasets":
        t = Table("dataset", "kind", "description")
        for r in rows:
            t.add_row(r["dataset"], r["kind"], r["description"][:90])
        _print_table(t)
    else:
        t = Table("metric", "category / group", "better", "scored", "computed by", "description",
                  caption="scored: enters the overall score (others are CT controls and diagnostics; "
                          "'no DAG': scored unless its DAG-aware variant is measured); "
                          "computed by: the function in causcell_bench.metrics that emits it")
        for r in rows:
            t.add_row(r["metric"], f"{r['category']} / {r['group']}", r["better"],
                      "-" if r["scored"] == "no" else r["scored"], r["computed_by"], r["description"])
        _print_table(t)


@app.command()
@friendly
def download(
    dataset: Annotated[str, typer.Argument(help="one of the paper's datasets (see `causcell-bench list datasets`)")],
    data_dir: DataDir = None,
    record: Annotated[str | None, typer.Option(help="Zenodo record id (default: the CausCell authors' record)")] = None,
    url: Annotated[str | None, typer.Option(help="address of the record's JSON file list, e.g. a mirror "
                                            "(default: Zenodo's API for --record)")] = None,
) -> None:
    """Download a paper dataset's files from the authors' Zenodo record (checksums checked, resumable)."""
    from causcell_bench.datasets import data_dirs
    from causcell_bench.datasets.download import download_dataset
    from causcell_bench.datasets.loaders import ZENODO_RECORD, paper_stems

    key, stems = paper_stems(dataset)
    dest = data_dirs(data_dir)[0] / key
    paths = download_dataset(key, dest, stems=stems, record=record or ZENODO_RECORD, api_url=url,
                             progress=err_console.is_terminal)
    for p in paths:
        console.print(f"{p}")
    err_console.print(f"{key}: {len(paths)} file(s) in {dest}, where the loader looks", highlight=False, soft_wrap=True)


@app.command()
@friendly
def prepare(
    dataset: Annotated[str, typer.Argument(help="dataset to prepare (ICI_response)")],
    counts: Annotated[Path, typer.Option(help="GEO counts file (GSE123813_bcc_scRNA_counts.txt.gz)")],
    metadata: Annotated[Path, typer.Option(help="GEO metadata file (GSE123813_bcc_all_metadata.txt.gz)")],
    out: Annotated[Path | None, typer.Option(help="output .h5ad or directory (default: the first data directory the loader searches)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Build a paper dataset's h5ad from the files a user downloads."""
    from causcell_bench.datasets import data_dirs, prepare_ici_response

    if dataset != "ICI_response":
        raise BenchError(f"prepare knows ICI_response only; {dataset!r} is read from its h5ad directly")
    target = out or data_dirs(data_dir)[0]
    path = prepare_ici_response(counts, metadata, target)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)

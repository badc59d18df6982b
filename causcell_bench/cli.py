"""The `causcell-bench` command line (typer + rich)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from causcell_bench.errors import BenchError

app = typer.Typer(
    name="causcell-bench",
    help="Benchmark disentangled representations and counterfactual generation on single-cell data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Print user errors as one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        try:
            return fn(*args, **kwargs)
        except BenchError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            err_console.print(f"[red]error:[/red] {msgs}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except FileNotFoundError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _parse_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--param CausCell.n_steps=500`` -> {"CausCell": {"n_steps": 500}} (values parsed as JSON when possible)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise BenchError(f"cannot read --param {item!r}; write it as Method.name=value, e.g. CausCell.n_steps=500")
        lhs, raw = item.split("=", 1)
        method, name = lhs.split(".", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[name] = value
    return out


def _parse_combo(text: str) -> dict[str, str]:
    """``'a=x,b=y'`` -> ``{"a": "x", "b": "y"}`` (a held-out label combination)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if part.count("=") != 1 or not all(x.strip() for x in part.split("=")):
            raise BenchError(f"cannot read --holdout {text!r}; write it as concept=value,concept=value")
        k, v = (x.strip() for x in part.split("="))
        out[k] = v
    return out


@app.command()
@friendly
def run(
    methods: Annotated[str, typer.Option(help="'all', 'controls', or a comma-separated list of method names")] = "all",
    dataset: Annotated[str, typer.Option(help="built-in or paper dataset name(s), a spec .toml, or an .h5ad (comma-separated)")] = "synthetic",
    settings: Annotated[str, typer.Option(help="ID, OOD or ID,OOD")] = "ID,OOD",
    folds: Annotated[str | None, typer.Option(help="fold indices to run, e.g. '0,1' (default: all)")] = None,
    n_folds: Annotated[int, typer.Option(help="number of folds of each split")] = 5,
    seeds: Annotated[str, typer.Option(help="model seeds, comma-separated")] = "0",
    preset: Annotated[str, typer.Option(help="training budgets: quick (CPU) or paper (authors' settings, GPU)")] = "quick",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    jobs: Annotated[int, typer.Option(help="grid cells run in parallel")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads per cell (default 1; in the cell hash)")] = None,
    executor: Annotated[str, typer.Option(help="where grid cells run: local (forked processes) or ray (pip install 'causcell-bench[ray]')")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="address of an existing Ray cluster (default: start a local one)")] = None,
    start_method: Annotated[str, typer.Option(help="how local cell processes start: fork (shares loaded data), spawn or forkserver (each cell loads its data)")] = "fork",
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<dataset>)")] = None,
    n_cells: Annotated[int | None, typer.Option(help="cells to simulate (synthetic) or subsample")] = None,
    n_genes: Annotated[int | None, typer.Option(help="genes to simulate (synthetic only)")] = None,
    n_hvg: Annotated[int | None, typer.Option(help="highly variable genes kept (chosen on training cells)")] = None,
    concepts: Annotated[str | None, typer.Option(help="override the spec's concept columns, comma-separated")] = None,
    dag: Annotated[str | None, typer.Option(help="override the DAG, e.g. 'treatment->celltype,patient->celltype'; '' for none")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where the paper datasets' files are")] = None,
    param: Annotated[list[str] | None, typer.Option(help="hyperparameter override Method.name=value (repeatable)")] = None,
    probe: Annotated[str, typer.Option(help="probe for predictive metrics: logreg or knn")] = "logreg",
    holdout: Annotated[list[str] | None, typer.Option(help="hold out a label combination as an extra HOLDOUT "
                       "fold, e.g. 'condition=stimulated,cell_type=CD4T' (repeatable)")] = None,
    cf_concept: Annotated[str | None, typer.Option(help="concept the held-out population task intervenes on "
                          "(default: the spec's perturbation, else each concept in turn)")] = None,
    retry_failed: Annotated[bool, typer.Option(help="rerun cells recorded as failed")] = False,
    report: Annotated[bool, typer.Option(help="build the leaderboard when the grid is done")] = True,
) -> None:
    """Run a benchmark grid; finished cells are kept, so rerunning resumes."""
    from causcell_bench.config import RunConfig
    from causcell_bench.datasets.spec import parse_edges
    from causcell_bench.registry import resolve_methods
    from causcell_bench.runner import run_grid, summarize_outcomes

    if ray_address and executor != "ray":
        raise BenchError("--ray-address needs --executor ray")
    if threads is not None and threads < 1:
        raise BenchError(f"--threads {threads} is not possible; give 1 or more threads per cell")
    names = _csv(dataset) or []
    kw: dict[str, Any] = {}
    if n_cells is not None:
        kw["n_cells"] = n_cells
    if n_genes is not None:
        kw["n_genes"] = n_genes
    config = RunConfig(
        datasets=names, methods=resolve_methods(methods), settings=_csv(settings) or [],  # type: ignore[arg-type]
        n_folds=n_folds, folds=[int(f) for f in _csv(folds)] if folds else None,
        seeds=[int(s) for s in _csv(seeds) or ["0"]], preset=preset, device=device, jobs=jobs, threads=threads,
        dataset_kwargs=kw, method_params=_parse_params(param), concepts=_csv(concepts),
        edges=parse_edges(dag) if dag is not None else None, n_hvg=n_hvg,
        data_dir=str(data_dir) if data_dir else None, probe=probe,  # type: ignore[arg-type]
        holdout=[_parse_combo(h) for h in holdout] if holdout else None, cf_concept=cf_concept,
    )
    if config.holdout and "HOLDOUT" not in config.settings:
        config = config.model_copy(update={"settings": [*config.settings, "HOLDOUT"]})
    config.fold_indices()
    run_dir = out or Path("runs") / "_".join(Path(n).stem for n in names)
    err_console.print(f"run directory: {run_dir}")
    try:
        outcomes = run_grid(config, run_dir, retry_failed=retry_failed, executor=executor, ray_address=ray_address,
                            start_method=start_method)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    counts = summarize_outcomes(outcomes)
    err_console.print("cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if report:
        _report(run_dir, None)
    if counts.get("failed", 0) and not counts.get("ok", 0) and not counts.get("skipped", 0):
        raise typer.Exit(1)


def _report(run_dir: Path, out: Path | None) -> None:
    from causcell_bench.leaderboard import build_report

    paths = build_report(run_dir, out)
    typer.echo(paths["markdown"].read_text())  # plain: a markdown table must not be re-wrapped
    err_console.print("written: " + ", ".join(str(p) for p in paths.values()))


@app.command()
@friendly
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `run`")],
    out: Annotated[Path | None, typer.Option(help="where to write (default RUN_DIR/report)")] = None,
) -> None:
    """Rebuild the leaderboard (tables, markdown, funky heatmap) from a run's cell files."""
    if not (run_dir / "cells").is_dir():
        raise BenchError(f"{run_dir} holds no results (no cells/ folder); pass the --out directory of a run")
    _report(run_dir, out)


@app.command()
@friendly
def check(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `run`")],
    reference: Annotated[Path, typer.Option(help="committed reference summary CSV (results/<name>.csv)")],
    abs_tol: Annotated[float, typer.Option(help="absolute tolerance when the reference has no tolerance column")] = 0.05,
    rel_tol: Annotated[float, typer.Option(help="relative tolerance (of |reference|)")] = 0.25,
    strict: Annotated[bool, typer.Option(help="also fail on improvements beyond tolerance")] = False,
) -> None:
    """Compare a run's summary with a reference table; exit 1 listing each regression."""
    import pandas as pd

    from causcell_bench.leaderboard import check as check_tables
    from causcell_bench.leaderboard import summarize, tidy_table
    from causcell_bench.store import ResultStore

    if not reference.is_file():
        raise BenchError(f"reference table {reference} does not exist")
    summary = summarize(tidy_table(ResultStore(run_dir).records()))
    if summary.empty:
        raise BenchError(f"{run_dir} holds no successful results to check")
    problems = check_tables(summary, pd.read_csv(reference), {"abs": abs_tol, "rel": rel_tol}, strict=strict)
    if problems:
        for p in problems:
            err_console.print(f"[red]{p}[/red]", highlight=False)
        err_console.print(f"{len(problems)} regression(s) against {reference}")
        raise typer.Exit(1)
    console.print(f"OK: {len(pd.read_csv(reference))} reference values within tolerance")


@app.command("check-validity")
@friendly
def check_validity(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `run`")],
) -> None:
    """List where the metrics cannot be trusted on this run: every value outside [negative control,
    positive control], and every metric on which no_change or group_mean beats every method."""
    from causcell_bench.leaderboard import summarize, tidy_table, uninformative, violations
    from causcell_bench.store import ResultStore

    if not run_dir.is_dir():
        raise BenchError(f"run directory {run_dir} does not exist")
    summary = summarize(tidy_table(ResultStore(run_dir).records()))
    if summary.empty:
        raise BenchError(f"{run_dir} holds no successful results")
    viol, uninf = violations(summary), uninformative(summary)
    console.print(f"[bold]{len(viol)} control bracketing violation(s)[/bold]")
    for _, v in viol.iterrows():
        console.print(f"  {v.dataset}/{v.setting} {v.method} {v.metric} = {v.value:.4g}: {v.violation} "
                      f"({v.control_value:.4g})", highlight=False, soft_wrap=True)
    console.print(f"[bold]{len(uninf)} metric(s) a trivial reference wins[/bold]")
    for _, u in uninf.iterrows():
        console.print(f"  {u.dataset}/{u.setting} {u.metric}: {u.reference} {u.reference_value:.4g} beats every "
                      f"method (best {u.best_method} {u.best_value:.4g})", highlight=False, soft_wrap=True)


@app.command("list")
@friendly
def list_(
    what: Annotated[str, typer.Argument(help="methods, datasets or metrics")] = "methods",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="methods: every preset's settings")] = False,
) -> None:
    """Show the available methods (with capabilities), datasets or metrics (with where each is computed)."""
    from causcell_bench import registry

    if what == "methods":
        t = Table("method", "embedding", "u", "recon", "cf", "DAG",
                  caption="u: unexplained-concept embedding; recon: reconstruction; cf: counterfactuals; "
                          "DAG: respects the causal graph")
        t.columns[0].no_wrap = True
        t.columns[1].no_wrap = True
        for name in registry.method_names():
            try:
                c = registry.get_method(name).capabilities
                t.add_row(name, c.embedding, *("yes" if v else "-" for v in
                          (c.unexplained, c.reconstruct, c.counterfactual, c.uses_dag)))
            except BenchError as e:
                t.add_row(name, f"[red]unavailable: {e}[/red]", "", "", "", "")
        console.print(t)
        if verbose:
            for name in registry.method_names():
                try:
                    cls = registry.get_method(name)
                except BenchError:
                    continue
                console.print(f"[bold]{name}[/bold] ({getattr(cls, 'kind', 'method')})")
                for preset, params in cls.presets.items():
                    text = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(no parameters)"
                    console.print(f"  {preset}: {text}", highlight=False, soft_wrap=True)
    elif what == "datasets":
        from causcell_bench.datasets import BUILTIN_DATASETS, PAPER_DATASETS

        t = Table("dataset", "kind", "description")
        for name in registry.dataset_names():
            kind = "built-in" if name in BUILTIN_DATASETS else "paper (local files)" if name in PAPER_DATASETS else "plugin"
            desc = BUILTIN_DATASETS.get(name) or PAPER_DATASETS.get(name) or ""
            t.add_row(name, kind, str(getattr(desc, "description", desc))[:90])
        console.print(t)
    elif what == "metrics":
        from causcell_bench.metrics import list_metrics

        t = Table("metric", "category / group", "better", "scored", "computed by", "description",
                  caption="scored: enters the overall score (others are CT controls and diagnostics); "
                          "computed by: the function in causcell_bench.metrics that emits it")
        for m in list_metrics():
            t.add_row(m.name, f"{m.category} / {m.group}", "higher" if m.higher_is_better else "lower",
                      "yes" if m.aggregate else "-", m.defined_in.removeprefix("causcell_bench.metrics."),
                      m.description)
        console.print(t)
    else:
        raise BenchError(f"cannot list {what!r}; choose methods, datasets or metrics")


@app.command()
@friendly
def prepare(
    dataset: Annotated[str, typer.Argument(help="dataset to prepare (ICI_response)")],
    counts: Annotated[Path, typer.Option(help="GEO counts file (GSE123813_bcc_scRNA_counts.txt.gz)")],
    metadata: Annotated[Path, typer.Option(help="GEO metadata file (GSE123813_bcc_all_metadata.txt.gz)")],
    out: Annotated[Path | None, typer.Option(help="output .h5ad or directory (default: the first data directory the loader searches)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data directory (default $CAUSCELL_BENCH_DATA or ~/.cache/causcell-bench)")] = None,
) -> None:
    """Build a paper dataset's h5ad from the files a user downloads."""
    from causcell_bench.datasets import data_dirs, prepare_ici_response

    if dataset != "ICI_response":
        raise BenchError(f"prepare knows ICI_response only; {dataset!r} is read from its h5ad directly")
    target = out or data_dirs(data_dir)[0]
    path = prepare_ici_response(counts, metadata, target)
    console.print(f"wrote {path}")


# train / counterfactual / experiment live in their own module; importing it registers them
from causcell_bench import cli_counterfactual  # noqa: F401


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

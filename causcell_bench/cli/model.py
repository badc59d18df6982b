"""The commands around one trained model: ``train`` (fit and save one method), ``counterfactual``
(cells and their counterfactuals under do(), one .h5ad) and ``experiment`` (the CausCell paper's
Fig. 2 analyses on the synthetic SCM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from causcell_bench.assignments import parse_assignments
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
    check_out_file,
    comma_list,
    console,
    err_console,
    friendly,
    parse_params,
)
from causcell_bench.errors import BenchError


def _method_params(method: str, items: list[str] | None) -> dict[str, Any]:
    """``--param n_steps=500`` or ``--param CausCell.n_steps=500`` -> {"n_steps": 500} for ``method`` (values
    read as JSON when they parse; the rules of :mod:`causcell_bench.assignments`)."""
    out: dict[str, Any] = {}
    for a in parse_assignments(items, flag="--param", form="name=value or Method.name=value", example="n_steps=500",
                               dotted="optional", typed=True):
        if a.owner is not None and a.owner.lower() != method.lower():
            raise BenchError(f"--param {a.item!r} is for {a.owner}, but the method trained is {method}")
        out[a.key] = a.value
    return out


def _thread_budget(threads: int | None) -> None:
    """One budget for torch, numba, BLAS and OpenMP, as a grid cell has: torch's default of one thread
    per core collapses (OpenMP spin-waits) when the cores are shared with other jobs."""
    from causcell_bench.threads import apply_thread_budget, resolve_threads

    check_at_least(threads, "--threads")
    apply_thread_budget(resolve_threads(threads))


@app.command()
@friendly
def train(
    method: Annotated[str, typer.Option(help="method to train (see `causcell-bench list methods`)")],
    out: Annotated[Path, typer.Option(help="model directory to write (method/ + manifest.json)")],
    dataset: Annotated[str, typer.Option(help="built-in or paper dataset name, a spec .toml, or an .h5ad")] = "synthetic",
    fold: Annotated[int | None, typer.Option(help="train on the training part of this fold only (default: all cells)")] = None,
    setting: Annotated[str, typer.Option(help="split setting of --fold: ID or OOD")] = "ID",
    n_folds: Annotated[int, typer.Option(help="number of folds of the split")] = 5,
    preset: Preset = "quick",
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="model seed")] = 0,
    data_seed: Annotated[int, typer.Option(help="seed of the simulator / cell subsample")] = 0,
    n_cells: NCells = None,
    n_genes: NGenes = None,
    n_hvg: NHvg = None,
    concepts: Concepts = None,
    dag: Dag = None,
    data_dir: DataDir = None,
    param: Annotated[list[str] | None, typer.Option(
        help="hyperparameter override name=value or Method.name=value (repeatable)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the model already in --out")] = False,
    threads: Threads = None,
) -> None:
    """Train one method and save it for `counterfactual`."""
    from causcell_bench.config import check_device, check_params
    from causcell_bench.counterfactual import method_class, train_model
    from causcell_bench.datasets.spec import parse_edges

    # options first: a typo must not cost a training run, and a model must not be replaced by accident
    cls = method_class(method)
    params = check_params(cls, preset, _method_params(cls.name, param))
    if check_out_dir(out) and any(out.iterdir()) and not overwrite:
        raise BenchError(f"--out {out} already holds files (a trained model?); pass --overwrite to replace "
                         "the model there, or choose a new or empty directory")
    check_at_least(n_folds, "--n-folds", 2)
    if fold is not None and not 0 <= fold < n_folds:
        raise BenchError(f"--fold {fold}: folds are numbered 0..{n_folds - 1}")
    check_at_least(seed, "--seed", 0)
    check_at_least(data_seed, "--data-seed", 0)
    check_data_options(n_cells, n_genes, n_hvg, data_dir)
    check_device(device)
    _thread_budget(threads)

    load_kwargs: dict[str, Any] = {"seed": data_seed}
    if n_cells is not None:
        load_kwargs["n_cells"] = n_cells
    if n_genes is not None:
        load_kwargs["n_genes"] = n_genes
    if data_dir is not None:
        load_kwargs["data_dir"] = str(data_dir)
    if setting not in ("ID", "OOD"):
        raise BenchError(f"--setting {setting!r}: choose ID or OOD")
    manifest = train_model(
        method, dataset, out, fold=fold, setting=setting, n_folds=n_folds, preset=preset, device=device,
        seed=seed, load_kwargs=load_kwargs, concepts=comma_list(concepts), edges=parse_edges(dag) if dag is not None else None,
        n_hvg=n_hvg, params=params,
    )
    part = f"fold {fold} ({setting}) training part, " if fold is not None else ""
    console.print(
        f"trained {manifest['method']} on {dataset}: {part}{manifest['n_train_cells']} cells x "
        f"{len(manifest['genes'])} genes in {manifest['fit_s']:.1f}s -> {out}"
    )


@app.command()
@friendly
def counterfactual(
    model_dir: Annotated[Path, typer.Argument(help="a model directory written by `train`")],
    out: Annotated[Path, typer.Option(help="output .h5ad: the selected cells and their counterfactuals")],
    do: Annotated[list[str], typer.Option(help="intervention concept=value (repeatable; all applied jointly)")],
    cells: Annotated[list[str] | None, typer.Option(help="select cells column=value[,value] (repeatable, ANDed)")] = None,
    n_cells_max: Annotated[int | None, typer.Option(help="at most this many selected cells (seeded draw)")] = None,
    mode: Annotated[str | None, typer.Option(help="do (graph surgery) or exogenous (CausCell only; default: the model's)")] = None,
    seed: Annotated[int, typer.Option(help="generation seed")] = 0,
    dataset: Annotated[str | None, typer.Option(help="take cells from this dataset (default: the training dataset)")] = None,
    input: Annotated[Path | None, typer.Option(help="take cells from this .h5ad (raw counts + concept columns)")] = None,
    part: Annotated[str, typer.Option(help="all, or train/test part of the model's fold")] = "all",
    device: Device = "auto",
    plot: Annotated[bool, typer.Option(help="also write <out>_umap.png (original vs counterfactual cells) "
                                             "and <out>_violin.png (the genes that change most)")] = False,
    threads: Threads = None,
) -> None:
    """Generate counterfactual cells under do(concept = value) with a trained model."""
    from causcell_bench.config import check_device
    from causcell_bench.counterfactual import generate_counterfactuals, parse_do, write_counterfactuals

    intervention = parse_do(do)  # malformed --do fails before anything is loaded
    new_folder = check_out_file(out, suffix=".h5ad")
    check_at_least(n_cells_max, "--n-cells-max")
    check_device(device)
    _thread_budget(threads)
    adata = generate_counterfactuals(
        model_dir, intervention, cells=cells, n_cells_max=n_cells_max, mode=mode, seed=seed,
        dataset=dataset, input=input, part=part, device=device,
    )
    path = write_counterfactuals(adata, out)
    if new_folder:
        err_console.print(f"created directory {out.parent}", highlight=False, soft_wrap=True)
    if plot:
        from causcell_bench.counterfactual import plot_counterfactuals

        for fig in plot_counterfactuals(adata, out.with_suffix(""), seed=seed):
            console.print(f"figure: {fig}", highlight=False, soft_wrap=True)
    meta = adata.uns["counterfactual"]
    console.print(
        f"{meta['method']} do({meta['do']}), mode {meta['mode']}: {meta['n_original']} cells + "
        f"{meta['n_counterfactual']} counterfactuals -> {path}"
    )


@app.command()
@friendly
def experiment(
    name: Annotated[str, typer.Argument(help="causal_consistency or small_sample_trends")],
    out: Annotated[Path, typer.Option(help="output directory (report.md, results.json, figures)")],
    preset: Annotated[str, typer.Option(help="experiment size and training budget: quick (CPU minutes) or paper "
                                        "(the paper's sizes, GPU)")] = "quick",
    seed: Annotated[int, typer.Option(help="seed of the simulator, split and models")] = 0,
    methods: Annotated[str | None, typer.Option(help="comma-separated methods (default per experiment); 'all' = every counterfactual-capable method")] = None,
    device: Device = "auto",
    param: MethodParams = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="experiment option key=value (repeatable), e.g. n_cells=1000")] = None,
    force_out: Annotated[bool, typer.Option(help="write into an --out folder that holds other files and no "
                                            "experiment's results")] = False,
) -> None:
    """Run one of the paper's counterfactual experiments (Fig. 2) on the synthetic SCM."""
    from causcell_bench.config import check_device, check_method_params
    from causcell_bench.experiments import get_experiment, parse_options, run_experiment
    from causcell_bench.experiments.report import check_experiment_out

    get_experiment(name)  # unknown names first, with a suggestion
    check_out_dir(out)
    if not force_out:
        check_experiment_out(out)
    check_at_least(seed, "--seed", 0)
    check_device(device)
    options = _check_options(name, preset, parse_options(set_))
    names = _experiment_methods(name, comma_list(methods))
    params = check_method_params(parse_params(param), names, preset)
    result = run_experiment(
        name, out, preset=preset, seed=seed, methods=comma_list(methods), device=device, params=params, options=options,
    )
    console.print(Path(result["report"]).read_text(), markup=False, highlight=False)
    err_console.print(f"written: {result['report']}", highlight=False, soft_wrap=True)


def _experiment_module(name: str) -> Any:
    import importlib

    from causcell_bench.experiments import EXPERIMENTS

    return importlib.import_module(EXPERIMENTS[name][0])


def _check_options(name: str, preset: str, options: dict[str, Any]) -> dict[str, Any]:
    """``--set`` keys must be options of the experiment, and values of their defaults' type."""
    import dataclasses
    import difflib

    from causcell_bench.config import value_fits, value_kind

    module = _experiment_module(name)
    cfg, presets = getattr(module, "Config", None), getattr(module, "PRESETS", {})
    if cfg is None:
        return options
    if preset not in presets:
        raise BenchError(f"--preset {preset!r}: {name} has presets {', '.join(presets)}")
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)} | dict(presets[preset])
    types = {f.name: str(f.type) for f in dataclasses.fields(cfg)}
    for key, value in list(options.items()):
        if isinstance(value, str) and "list" in types.get(key, "").lower():
            # `--set values=age_9` (or age_1,age_9): a list of one or more values, never its characters
            options[key] = value = [v.strip() for v in value.split(",") if v.strip()]
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise BenchError(f"--set {key}: {name} has no option {key!r}.{hint} Options: {', '.join(defaults)}")
        kind = value_kind(defaults[key])
        if defaults[key] is not None and not value_fits(kind, value):
            raise BenchError(f"--set {key}={value}: {key} takes a value like its default {json.dumps(defaults[key])} "
                             f"({type(defaults[key]).__name__}); give one of that type")
    return options


def _experiment_methods(name: str, methods: list[str] | None) -> list[str]:
    """The methods the experiment will run (its default unless --methods), canonically named."""
    from causcell_bench.experiments.common import resolve_methods

    return resolve_methods(methods, getattr(_experiment_module(name), "DEFAULT_METHODS", ()))

"""Train one model, save it, reload it and ask it for counterfactual cells.

This is the user-facing side of controllable generation: besides benchmarking, a
user can train one model and ask it for counterfactual cells under
do(concept = value) (README, "Counterfactuals"). It follows the do() procedure
of CausCell (Gao, Dong et al., "Causal disentanglement for single-cell
representations and controllable counterfactual generation", Nat Commun 2025):
every selected cell is kept and a counterfactual twin is generated from it.
The experiments (:mod:`causcell_bench.experiments`) use the same service:
:func:`counterfactual_methods`, :func:`method_class` and :func:`generate`.

A model directory holds ``method/`` (what ``Method.save`` writes: ``method.json`` and the state) and
``manifest.json`` (method, dataset and how it was loaded, spec, preset,
parameters, seed, genes, fold), so that :func:`load_model` can rebuild the
right class and :func:`load_cells` can rebuild the cells on the model's genes.

The counterfactual AnnData (:func:`counterfactual_anndata`) holds the selected
original cells followed by their counterfactuals: ``obs["type"]`` is
``original`` or ``counterfactual``, ``obs["source_cell"]`` names the original
cell of each row, the concept columns carry the intervened values on the
counterfactual rows, ``X`` is log1p(CP10k), and ``uns["counterfactual"]``
records the intervention, method, mode, seed and dataset.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.assignments import assignment_dict
from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError, DataError, MissingConceptError, NotCountsError
from causcell_bench.fileio import atomic_path
from causcell_bench.interrupts import check_interrupt
from causcell_bench.provenance import package_versions
from causcell_bench.store import atomic_write_json

MANIFEST = "manifest.json"
METHOD_DIR = "method"
MANIFEST_FORMAT = "causcell-bench-model"
ORIGINAL, COUNTERFACTUAL = "original", "counterfactual"
PARTS = ("all", "train", "test")

# In-tree methods the registry may not list yet; used only when the registry lookup fails.
IN_TREE: dict[str, str] = {
    "CausCell": "causcell_bench.methods.causcell:CausCell",
    "CausCell_IND": "causcell_bench.methods.causcell:CausCellIND",
}


# --- method classes ------------------------------------------------------------------
def _import_class(path: str) -> type:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def method_class(name: str, class_path: str | None = None) -> type:
    """The Method class of ``name``: the registry's, else ``class_path`` (as a manifest records it)."""
    from causcell_bench.methods.base import Method
    from causcell_bench.registry import get_method

    try:
        return get_method(name)
    except BenchError:
        fallback = class_path or IN_TREE.get(name)
        if fallback is None:
            raise
        try:
            cls = _import_class(fallback)
        except (ImportError, AttributeError):
            raise BenchError(f"method {name!r} is not registered and {fallback} cannot be imported") from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise BenchError(f"{fallback} is not a causcell_bench Method") from None
        return cls


def counterfactual_methods() -> list[str]:
    """Every registered method, plus the in-tree CausCell variants, that can generate counterfactuals."""
    from causcell_bench.registry import method_names

    out = []
    for name in dict.fromkeys([*IN_TREE, *method_names()]):
        try:
            if method_class(name).capabilities.counterfactual:
                out.append(name)
        except BenchError:
            continue
    return out


def require_counterfactuals(cls: type) -> None:
    """Refuse, clearly, a method that cannot generate counterfactuals."""
    caps = getattr(cls, "capabilities", None)
    if caps is None or not caps.counterfactual:
        from causcell_bench.registry import method_names

        able = []
        for n in method_names():
            try:
                if method_class(n).capabilities.counterfactual:
                    able.append(n)
            except BenchError:
                continue
        raise BenchError(
            f"{cls.name} cannot generate counterfactuals (capabilities.counterfactual is False); "
            f"methods that can: {', '.join(able) or 'none installed'}"
        )


# --- parsing user input --------------------------------------------------------------
def parse_do(items: str | Sequence[str]) -> dict[str, str]:
    """``["age=age_2", "domain=domain_1"]`` (or ``"age=age_2,domain=domain_1"``) -> one joint intervention
    (the rules of :mod:`causcell_bench.assignments`)."""
    out = assignment_dict(items, flag="--do", form="concept=value", example="age=age_2", several=True)
    if not out:
        raise BenchError("no intervention given; pass at least one --do concept=value")
    return out


def parse_filters(items: str | Sequence[str] | None) -> dict[str, list[str]]:
    """``["celltype=type_1,type_2", "domain=domain_0"]`` -> {column: allowed values}; columns are ANDed,
    the values of one column (also from a repeated column) ORed."""
    return assignment_dict(items, flag="--cells", form="column=value[,value...]", example="celltype=type_1",
                           multi=True)


def format_do(do: Mapping[str, str]) -> str:
    """``{"age": "a", "domain": "b"}`` -> ``"age=a,domain=b"``, quoted where --do needs it to read it back."""
    def quote(text: str) -> str:
        needs = not text or text != text.strip() or any(ch in text for ch in ',="')
        return '"' + text.replace('"', '""') + '"' if needs else text

    return ",".join(f"{quote(str(c))}={quote(str(v))}" for c, v in do.items())


def check_intervention(method: Any, do: Mapping[str, str]) -> None:
    """Concepts and values of ``do`` must be ones the fitted model knows (same words as Method._check_query)."""
    cats = getattr(method, "categories_", None)
    if not cats:
        raise BenchError(f"{method.name} is not fitted; train it first")
    for c, v in do.items():
        if c not in cats:
            raise BenchError(f"cannot intervene on {c!r}: not a concept of this model; concepts are {list(cats)}")
        if str(v) not in cats[c]:
            raise BenchError(f"cannot set {c} = {v!r}: value never seen in training; seen values are {cats[c]}")


# --- data -------------------------------------------------------------------------------
def load_data(
    dataset: str,
    load_kwargs: Mapping[str, Any] | None = None,
    *,
    concepts: list[str] | None = None,
    edges: list[tuple[str, str]] | None = None,
    n_hvg: int | None = None,
) -> tuple[AnnData, DatasetSpec]:
    """Raw data and spec of ``dataset`` (any name/path the loaders accept) with CLI-style overrides."""
    from causcell_bench.registry import dataset_loader

    kw = dict(load_kwargs or {})
    if concepts is not None and str(dataset).lower().endswith(".h5ad"):
        kw.setdefault("concepts", concepts)
        if edges is not None:
            kw.setdefault("edges", edges)
    adata, spec = dataset_loader(dataset)(**kw)
    if (concepts is not None and list(concepts) != spec.concepts) or (edges is not None and list(edges) != spec.edges):
        spec = spec.with_overrides(concepts=concepts, edges=edges)
    if n_hvg is not None:
        spec = spec.model_copy(update={"n_hvg": int(n_hvg)})
    return adata, spec


def to_model_genes(adata: AnnData, spec: DatasetSpec, genes: Sequence[str]) -> AnnData:
    """Raw cells -> the method data contract on exactly ``genes`` (log1p CP10k over those genes)."""
    from causcell_bench.datasets import preprocess

    names = pd.Index([str(g) for g in adata.var_names])
    pos = names.get_indexer([str(g) for g in genes])
    if (pos < 0).any():
        missing = [g for g, p in zip(genes, pos) if p < 0]
        raise DataError(
            f"{len(missing)} of the model's {len(genes)} genes are missing from these cells (e.g. {missing[:5]}); "
            "give cells measured on the genes the model was trained on"
        )
    sub = adata[:, pos]
    # fine labels are for scoring only: cells from a user's file need not carry them
    fine = {c: f for c, f in spec.fine_labels.items() if f in adata.obs.columns}
    cells, _ = preprocess(sub, sub[:0], spec.model_copy(update={"n_hvg": None, "fine_labels": fine}))
    return cells


def select_cells(
    adata: AnnData, filters: Mapping[str, Sequence[str]] | None = None, n_max: int | None = None, seed: int = 0
) -> AnnData:
    """Cells matching every filter (column -> allowed values), at most ``n_max`` of them (seeded draw)."""
    mask = np.ones(adata.n_obs, dtype=bool)
    for column, values in (filters or {}).items():
        if column not in adata.obs.columns:
            raise BenchError(
                f"--cells filters on {column!r}, which is not an obs column; columns are {list(adata.obs.columns)}"
            )
        col = adata.obs[column].astype(str)
        unknown = [v for v in values if v not in set(col)]
        hit = col.isin([str(v) for v in values]).to_numpy()
        if unknown and not hit.any():
            present = sorted(set(col))
            raise BenchError(
                f"--cells {column}={','.join(values)} selects no cell: no cell has {column} in {unknown}; "
                f"values present: {present[:20]}"
            )
        mask &= hit
    if not mask.any():
        desc = "; ".join(f"{c} in {list(v)}" for c, v in (filters or {}).items())
        raise BenchError(f"the --cells filters select no cell together ({desc}); loosen them")
    idx = np.flatnonzero(mask)
    if n_max is not None:
        if int(n_max) < 1:
            raise BenchError(f"--n-cells-max {n_max}: give a positive number of cells")
        if idx.size > int(n_max):
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(n_max), replace=False))
    return adata[idx].copy()


# --- train / save / load -----------------------------------------------------------------
def train_model(
    method: str,
    dataset: str,
    out: str | Path,
    *,
    fold: int | None = None,
    setting: str = "ID",
    n_folds: int = 5,
    split_seed: int = 0,
    preset: str = "quick",
    device: str = "auto",
    seed: int = 0,
    load_kwargs: Mapping[str, Any] | None = None,
    concepts: list[str] | None = None,
    edges: list[tuple[str, str]] | None = None,
    n_hvg: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ``method`` on ``dataset`` (all cells, or the training part of ``fold``) and save it into ``out``.

    HVGs are chosen on the training cells only. Writes ``out/method/`` and
    ``out/manifest.json``; returns the manifest.
    """
    from causcell_bench.datasets import make_splits, preprocess

    cls = method_class(method)
    model = cls(preset=preset, device=device, **dict(params or {}))  # bad params fail before loading data
    adata, spec = load_data(dataset, load_kwargs, concepts=concepts, edges=edges, n_hvg=n_hvg)
    fold_info: dict[str, Any] | None = None
    if fold is not None:
        if not 0 <= int(fold) < int(n_folds):
            raise BenchError(f"--fold {fold}: folds are numbered 0..{int(n_folds) - 1}")
        split = make_splits(adata, spec, setting, n_folds=n_folds, seed=split_seed)[int(fold)]  # type: ignore[arg-type]
        train_raw, test_raw = adata[split.train_idx], adata[split.test_idx]
        fold_info = {
            "fold": int(fold), "setting": setting, "n_folds": int(n_folds), "split_seed": int(split_seed),
            "n_train": int(split.train_idx.size), "n_test": int(split.test_idx.size),
            "held_out": split.held_out,
        }
    else:
        train_raw, test_raw = adata, adata[:0]
    train, _ = preprocess(train_raw, test_raw, spec)
    t0 = time.perf_counter()
    model.fit(train, spec, seed=seed)
    fit_s = time.perf_counter() - t0

    out = Path(out)
    created = not out.exists()
    try:
        # the method's files go to a temporary folder renamed into place when complete (Method.save);
        # the old manifest goes only then, so a failed save leaves the old model, or nothing
        model.save(out / METHOD_DIR)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a folder this command made and left empty would ask the next train for --overwrite
        raise
    (out / MANIFEST).unlink(missing_ok=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "method": cls.name,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "capabilities": cls.capabilities.as_dict(),
        "dataset": str(dataset),
        "load_kwargs": dict(load_kwargs or {}),
        "spec": spec.model_dump(mode="json"),
        "preset": preset,
        "params": dict(getattr(model, "params", {})),
        "seed": int(seed),
        "device": device,
        "genes": [str(g) for g in train.var_names],
        "fold": fold_info,
        "n_train_cells": int(train.n_obs),
        "fit_s": round(fit_s, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": package_versions(),
    }
    atomic_write_json(out / MANIFEST, manifest, indent=2)
    return manifest


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The manifest of a model directory written by :func:`train_model`, or a BenchError saying why not."""
    f = Path(model_dir) / MANIFEST
    if not f.is_file():
        raise BenchError(
            f"{model_dir} is not a trained model directory (no {MANIFEST}); make one with `causcell-bench train`"
        )
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{f} is not valid JSON ({e}); train the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BenchError(f"{f} is not a causcell-bench model manifest; pass a directory written by `causcell-bench train`")
    missing = [k for k in ("method", "dataset", "spec", "genes") if k not in manifest]
    if missing:
        raise BenchError(f"{f} lacks {', '.join(missing)} (edited or truncated?); train the model again with "
                         "`causcell-bench train`")
    return manifest


def load_model(model_dir: str | Path, device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """(fitted method, manifest) from a directory written by :func:`train_model`."""
    manifest = read_manifest(model_dir)
    cls = method_class(manifest["method"], manifest.get("class"))
    path = Path(model_dir) / METHOD_DIR
    try:
        method = cls.load(path, device=device)
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 - pickle, torch and h5py each fail their own way on a bad file
        raise BenchError(f"cannot load the model saved in {path} ({type(e).__name__}: {' '.join(str(e).split())[:160]}): "
                         "the file is truncated, corrupt or from an incompatible version; train the model again") from None
    if not getattr(method, "is_fitted", True):
        raise BenchError(f"the model in {model_dir} is not fitted; train it again")
    return method, manifest


def load_cells(
    manifest: Mapping[str, Any],
    *,
    dataset: str | None = None,
    input: str | Path | None = None,  # shadows the builtin: mirrors the CLI option
    part: str = "all",
) -> AnnData:
    """The cells to intervene on, in the data contract on the model's genes.

    Default: the dataset the model was trained on, loaded as it was. ``dataset``:
    another dataset name/path; ``input``: an .h5ad with raw counts
    (``layers['counts']`` or ``X``) and the model's concept columns. ``part``
    (``all``/``train``/``test``) restricts a fold-trained model's own dataset to
    that part of its split.
    """
    from causcell_bench.datasets import make_splits

    spec = DatasetSpec.model_validate(manifest["spec"])
    genes = list(manifest["genes"])
    if part not in PARTS:
        raise BenchError(f"--part {part!r}: choose one of {list(PARTS)}")
    if input is not None and dataset is not None:
        raise BenchError("give either --dataset or --input, not both")
    # the model's concepts and DAG name the columns (a bare .h5ad has no spec of its own)
    model_cols = {"concepts": list(spec.concepts), "edges": [(str(a), str(b)) for a, b in spec.edges]}
    if input is not None:
        path = Path(input)
        if path.suffix.lower() != ".h5ad":
            raise BenchError(f"--input {path}: give an .h5ad file with raw counts")
        source, own = f"--input {path}", False
    else:
        name = dataset or manifest["dataset"]
        source, own = f"dataset {name!r}", name == manifest["dataset"]
    try:
        if input is not None:
            # cells for a model trained on rounded counts are read the same way
            adata, _ = load_data(str(path), {"round_counts": bool(spec.round_counts)}, **model_cols)
        else:
            adata, _ = load_data(name, manifest.get("load_kwargs") if own else None, **model_cols)
    except NotCountsError as e:
        if input is None:
            raise
        # neither counts_layer nor round_counts can be given with --input: say what the file must hold
        eg = f" (e.g. {e.example})" if e.example else ""
        raise DataError(
            f"{source}: the counts are not integer-valued{eg}, and the model reads raw counts; give an .h5ad "
            "whose layers['counts'] (or X) holds the raw integer counts, rounded first if they are "
            "legitimately non-integer (adata.layers['counts'] = numpy.rint(adata.X))"
        ) from None
    except MissingConceptError as e:
        # the concepts are the model's, not the user's to fix: say which cells to give
        raise DataError(
            f"{source}: the cells lack the column {e.column!r}, one of the concepts the model was trained on "
            f"({list(spec.concepts)}); obs has {e.columns}. Give cells whose obs holds those columns"
        ) from None
    if part != "all":
        fold = manifest.get("fold")
        if not own or not fold:
            raise BenchError(f"--part {part} needs a model trained on a --fold of this same dataset; use --part all")
        splits = make_splits(adata, spec, fold["setting"], n_folds=fold["n_folds"], seed=fold["split_seed"])
        split = splits[fold["fold"]]
        if split.test_idx.size != fold["n_test"]:
            raise DataError("the dataset no longer gives the split the model was trained on; was it changed?")
        adata = adata[split.train_idx if part == "train" else split.test_idx]
    missing = [c for c in spec.concepts if c not in adata.obs.columns]
    if missing:
        raise DataError(f"the cells lack the model's concept column(s) {missing}; obs has {list(adata.obs.columns)}")
    return to_model_genes(adata, spec, genes)


# --- generation ----------------------------------------------------------------------------
def generate(method: Any, cells: AnnData, do: Mapping[str, str] | None, seed: int, mode: str | None) -> np.ndarray:
    """The expression (log1p CP10k, cells x genes, float32) a fitted method generates for ``cells``.

    ``do``: the intervention (``None``: the method's reconstruction of the cells themselves, the
    factual prediction a counterfactual is compared with). ``mode``: ``do`` or ``exogenous`` for a
    method with modes (``None``: its own). Errors of the method (no modes, cells it cannot
    generate, a wrongly shaped result) become a BenchError naming the method.
    """
    kwargs: dict[str, Any] = {}
    if mode is not None:
        if "mode" not in getattr(method, "generate_options", {}):  # the options its generate() declares
            raise BenchError(f"{method.name} has no counterfactual modes; leave out --mode")
        kwargs["mode"] = mode
    try:
        x = method.generate(cells, do=dict(do) if do else None, seed=seed, **kwargs)
    except NotImplementedError as e:
        raise BenchError(f"{method.name} cannot generate these cells: {e}") from None
    x = np.asarray(x, dtype=np.float32)
    if x.shape != (cells.n_obs, cells.n_vars):
        raise BenchError(f"{method.name}.generate returned shape {x.shape}, expected {(cells.n_obs, cells.n_vars)}")
    return x


def effective_mode(method: Any, mode: str | None) -> str:
    """``mode``, else the method's own mode parameter, else ``"n/a"`` (a method without modes)."""
    if mode is not None:
        return mode
    return str(getattr(method, "params", {}).get("mode", "n/a"))


def counterfactual_anndata(
    method: Any,
    cells: AnnData,
    do: Mapping[str, str],
    *,
    seed: int = 0,
    mode: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> AnnData:
    """The selected cells followed by their counterfactuals under ``do`` (one AnnData; see module doc)."""
    require_counterfactuals(type(method))
    do = {str(c): str(v) for c, v in do.items()}
    check_intervention(method, do)
    if cells.n_obs == 0:
        raise BenchError("no cells to intervene on")
    x_cf = generate(method, cells, do, seed, mode)

    spec = getattr(method, "spec_", None)
    concepts = list(spec.concepts) if spec is not None else list(do)
    descendants = sorted({d for c in do for d in spec.descendants(c)} - set(do)) if spec is not None else []

    names = [str(n) for n in cells.obs_names]
    obs_o = cells.obs.copy()
    obs_c = cells.obs.copy()
    for c, v in do.items():
        present = obs_o[c].cat.categories if hasattr(obs_o[c], "cat") else obs_o[c].unique()
        cats = list(dict.fromkeys([str(x) for x in present] + [v]))
        obs_o[c] = pd.Categorical(obs_o[c].astype(str), categories=cats)
        obs_c[c] = pd.Categorical([v] * cells.n_obs, categories=cats)
    obs_o["type"], obs_c["type"] = ORIGINAL, COUNTERFACTUAL
    obs_o["source_cell"] = obs_c["source_cell"] = names
    obs_o.index = pd.Index(names)
    obs_c.index = pd.Index([f"{n}:cf" for n in names])
    obs = pd.concat([obs_o, obs_c])
    obs["type"] = pd.Categorical(obs["type"], categories=[ORIGINAL, COUNTERFACTUAL])
    for c in do:
        obs[c] = pd.Categorical(obs[c].astype(str), categories=obs_o[c].cat.categories)

    x_orig = cells.X if sp.issparse(cells.X) else sp.csr_matrix(np.asarray(cells.X, dtype=np.float32))
    X = sp.vstack([sp.csr_matrix(x_orig, dtype=np.float32), sp.csr_matrix(x_cf)], format="csr")
    out = AnnData(X=X, obs=obs, var=cells.var.copy())
    for k, v in cells.obsm.items():  # per-cell exogenous noise etc.: the twin shares its source's
        arr = np.asarray(v)
        out.obsm[k] = np.concatenate([arr, arr])
    out.uns.update({k: v for k, v in cells.uns.items() if k != "counterfactual"})
    meta = {
        "intervention": dict(do),
        "do": format_do(do),
        "method": str(method.name),
        "mode": effective_mode(method, mode),
        "seed": int(seed),
        "n_original": int(cells.n_obs),
        "n_counterfactual": int(cells.n_obs),
        "concepts": concepts,
        # the labels of these columns are the source cell's: the model may have changed them
        "descendants_not_relabelled": descendants,
        "expression": "log1p(CP10k)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for k, v in (info or {}).items():
        meta[k] = "" if v is None else v
    out.uns["counterfactual"] = meta
    return out


def generate_counterfactuals(
    model_dir: str | Path,
    do: Mapping[str, str] | str | Sequence[str],
    *,
    cells: Mapping[str, Sequence[str]] | str | Sequence[str] | None = None,
    n_cells_max: int | None = None,
    mode: str | None = None,
    seed: int = 0,
    dataset: str | None = None,
    input: str | Path | None = None,  # shadows the builtin: mirrors the CLI option
    part: str = "all",
    device: str = "auto",
) -> AnnData:
    """Load a trained model, select cells, and return them with their counterfactuals under ``do``."""
    intervention = dict(do) if isinstance(do, Mapping) else parse_do(do)
    filters = dict(cells) if isinstance(cells, Mapping) else parse_filters(cells)
    manifest = read_manifest(model_dir)
    cls = method_class(manifest["method"], manifest.get("class"))
    require_counterfactuals(cls)
    method, manifest = load_model(model_dir, device=device)
    check_intervention(method, intervention)
    if mode is not None and mode not in ("do", "exogenous"):
        raise BenchError(f"--mode {mode!r}: choose do or exogenous")
    data = load_cells(manifest, dataset=dataset, input=input, part=part)
    chosen = select_cells(data, filters, n_cells_max, seed)
    source = str(input) if input is not None else (dataset or manifest["dataset"])
    info = {"model_dir": str(Path(model_dir).resolve()), "dataset": source, "part": part,
            "cells": ";".join(f"{c}={','.join(v)}" for c, v in filters.items()), "preset": manifest.get("preset", "")}
    return counterfactual_anndata(method, chosen, intervention, seed=seed, mode=mode, info=info)


def write_counterfactuals(adata: AnnData, path: str | Path) -> Path:
    """Write the counterfactual AnnData as .h5ad (parent folders created)."""
    path = Path(path)
    if path.suffix.lower() != ".h5ad":
        raise BenchError(f"--out {path}: the counterfactual file must end in .h5ad")
    check_interrupt()  # counterfactuals a library let run on after Ctrl-C are not written
    with atomic_path(path) as tmp:  # a full disk leaves no unreadable .h5ad behind
        adata.write_h5ad(tmp)
    return path


def top_changed_genes(adata: AnnData, n: int = 6) -> list[str]:
    """The ``n`` genes whose mean expression changes most (|counterfactual - original|)."""
    is_cf = (adata.obs["type"] == COUNTERFACTUAL).to_numpy()
    x = adata.X
    mean = lambda rows: np.asarray(x[rows].mean(axis=0)).ravel()  # noqa: E731 - sparse or dense rows
    delta = mean(is_cf) - mean(~is_cf)
    order = np.argsort(-np.abs(delta), kind="stable")[: min(n, adata.n_vars)]
    return [str(adata.var_names[i]) for i in order]


def plot_counterfactuals(adata: AnnData, out_prefix: str | Path, *, n_genes: int = 6, seed: int = 0) -> list[Path]:
    """Figures of an AnnData from :func:`counterfactual_anndata` (scanpy): a UMAP of the original and
    counterfactual cells coloured by type and by each intervened concept (``<prefix>_umap.png``), and
    violins of the genes that change most, original vs counterfactual (``<prefix>_violin.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    if "counterfactual" not in adata.uns or "type" not in adata.obs:
        raise BenchError("plot_counterfactuals needs the AnnData written by `causcell-bench counterfactual`")
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    view = adata.copy()
    n_pcs = max(1, min(30, view.n_obs - 1, view.n_vars - 1))
    sc.pp.pca(view, n_comps=n_pcs, random_state=seed)
    sc.pp.neighbors(view, n_neighbors=min(15, max(2, view.n_obs - 1)), n_pcs=n_pcs, random_state=seed)
    sc.tl.umap(view, random_state=seed)
    colour = ["type", *[c for c in view.uns["counterfactual"]["intervention"] if c in view.obs]]
    written = []
    with plt.rc_context({"figure.figsize": (4.5, 4.0)}):
        fig = sc.pl.umap(view, color=colour, show=False, return_fig=True, wspace=0.35)
        fig.suptitle(f"do({view.uns['counterfactual']['do']}) — {view.uns['counterfactual']['method']}")
        written.append(prefix.with_name(prefix.name + "_umap.png"))
        with atomic_path(written[-1]) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        genes = top_changed_genes(view, n_genes)
        axes = sc.pl.violin(view, keys=genes, groupby="type", show=False, rotation=0, stripplot=False)
        fig = (axes[0] if isinstance(axes, list) else axes).get_figure()
        fig.suptitle("genes that change most: original vs counterfactual")
        written.append(prefix.with_name(prefix.name + "_violin.png"))
        with atomic_path(written[-1]) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return written


__all__ = [
    "IN_TREE",
    "check_intervention",
    "counterfactual_anndata",
    "counterfactual_methods",
    "effective_mode",
    "format_do",
    "generate",
    "generate_counterfactuals",
    "load_cells",
    "load_data",
    "load_model",
    "method_class",
    "parse_do",
    "parse_filters",
    "plot_counterfactuals",
    "read_manifest",
    "require_counterfactuals",
    "select_cells",
    "to_model_genes",
    "train_model",
    "write_counterfactuals",
]

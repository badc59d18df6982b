"""Dataset loaders: built-ins (``synthetic``, ``pbmc68k``), the paper's five, user files.

:func:`load` returns RAW data (integer counts in ``layers["counts"]``, all
genes) and the :class:`DatasetSpec`; preprocessing and splitting happen later
(a loader never splits). The paper's datasets (Gao, Dong et al., Nat Commun
2025, "Causal disentanglement for single-cell representations and controllable
counterfactual generation") are read from local files; a missing file gives an
error saying which file, where to put it and where it comes from.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec, parse_edges, spec_from_dict
from causcell_bench.datasets.synthetic import simulate, synthetic_spec
from causcell_bench.datasets.validate import check_counts, validate_adata
from causcell_bench.errors import BenchError, DataError, NotCountsError

ZENODO_RECORD = "15242547"
ZENODO_URL = f"https://zenodo.org/records/{ZENODO_RECORD}"
DATA_ENV = "CAUSCELL_BENCH_DATA"
SPEC_DIR = Path(__file__).parent / "specs"

BUILTIN_DATASETS: dict[str, str] = {
    "synthetic": "structural causal model simulator with true counterfactuals (no download)",
    "pbmc68k": "scanpy's bundled pbmc68k_reduced: 700 PBMCs, concepts bulk_labels, phase (no download)",
}
"""Built-in dataset name -> one-line description."""


@dataclass(frozen=True)
class _PaperSource:
    stems: tuple[str, ...]  # file-name stems the authors' train/test files may use
    origin: str
    prepare: str = ""


_PAPER: dict[str, _PaperSource] = {
    "ICI_response": _PaperSource(
        ("ICI_response", "ICI_Response"),
        "Yost et al. 2019 (Nat Med), GEO GSE123813 (BCC): GSE123813_bcc_scRNA_counts.txt.gz and "
        "GSE123813_bcc_all_metadata.txt.gz",
        "to build it from the two GEO files run `causcell-bench prepare ICI_response --counts "
        "GSE123813_bcc_scRNA_counts.txt.gz --metadata GSE123813_bcc_all_metadata.txt.gz` "
        "(or causcell_bench.datasets.prepare_ici_response)",
    ),
    "MERFISH_Brain": _PaperSource(
        ("MERFISH_Brain", "Merfish_Brain"),
        "Allen et al. 2023 (Cell), CELLxGENE collection 31937775-0602-4e52-a799-b6acdd2bac2e",
    ),
    "Spatiotemporally_Liver": _PaperSource(
        ("Spatiotemporally_Liver", "Spatiotemporally_liver"),
        "Afriat et al. 2022 (Nature), Zenodo record 7081863",
    ),
    "Immun_atlas": _PaperSource(
        ("Immun_atlas", "Immune_atlas"),
        "Dominguez Conde et al. 2022 (Science), https://www.tissueimmunecellatlas.org",
    ),
    "Limb_development": _PaperSource(
        ("Limb_development", "Limb_Development"),
        "Zhang et al. 2023 (Nature), ArrayExpress E-MTAB-10514",
    ),
}

PAPER_DATASETS: dict[str, str] = {name: src.origin for name, src in _PAPER.items()}
"""The paper's five datasets (local files) -> where they come from."""

_SPEC_KEYS = {"concepts", "edges", "fine_labels", "batch", "perturbation", "ood_concepts", "counts_layer", "n_hvg",
              "description", "round_counts"}


# --- names, specs, directories ------------------------------------------------
def _match(name: str, names: Any) -> str | None:
    """Case-insensitive lookup of a dataset name."""
    low = {n.lower(): n for n in names}
    return low.get(name.lower())


def available_datasets() -> list[str]:
    return list(BUILTIN_DATASETS) + list(PAPER_DATASETS)


def data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where paper data files are looked for, in order: data_dir, $CAUSCELL_BENCH_DATA, ~/.cache/causcell-bench."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]).expanduser())
    dirs.append(Path.home() / ".cache" / "causcell-bench")
    return list(dict.fromkeys(dirs))


def paper_spec(name: str) -> DatasetSpec:
    """The package-shipped spec of one of the paper's datasets."""
    key, _ = paper_stems(name)
    return DatasetSpec.from_toml(SPEC_DIR / f"{key}.toml")


def get_spec(name: str) -> DatasetSpec:
    """The spec of a built-in or paper dataset (or a TOML path) without loading any data."""
    if _match(name, BUILTIN_DATASETS) == "synthetic":
        return synthetic_spec()
    if _match(name, BUILTIN_DATASETS) == "pbmc68k":
        return pbmc68k_spec()
    if _match(name, PAPER_DATASETS):
        return paper_spec(name)
    if str(name).lower().endswith(".toml"):
        return DatasetSpec.from_toml(name)
    raise BenchError(_unknown_message(name))


def dataset_name(name_or_path: str | Path) -> str:
    """The name a dataset's results are stored and reported under, without loading any data: a spec
    file's ``name``, a bare .h5ad's file stem, a built-in or paper dataset's canonical name; any other
    string (a plugin) as given."""
    key = str(name_or_path)
    canonical = _match(key, BUILTIN_DATASETS) or _match(key, PAPER_DATASETS)
    if canonical is not None:
        return canonical
    path = Path(key).expanduser()
    if path.suffix.lower() == ".toml":
        return DatasetSpec.from_toml(path).name
    if path.suffix.lower() == ".h5ad":
        return path.stem  # as load() names a bare .h5ad's spec
    return key


def _unknown_message(name: str) -> str:
    return (
        f"unknown dataset {name!r}; available: {', '.join(available_datasets())}; "
        "or pass the path of a .toml dataset spec or of an .h5ad file"
    )


def paper_stems(name: str) -> tuple[str, tuple[str, ...]]:
    """(canonical name, the file-name stems the authors' files of that paper dataset may use)."""
    key = _match(name, PAPER_DATASETS)
    if key is None:
        raise BenchError(f"{name!r} is not one of the paper's datasets: {', '.join(PAPER_DATASETS)}")
    return key, _PAPER[key].stems


# --- paper files ----------------------------------------------------------------
def find_paper_files(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The file(s) of a paper dataset: ``<name>.h5ad``, or the authors' training + testing pair.

    Looks in each data directory and its ``<name>/`` subfolder; raises DataError
    naming the expected file, the directories searched and the public source.
    """
    key, _ = paper_stems(name)
    src = _PAPER[key]
    dirs = data_dirs(data_dir)
    for d in dirs:
        for folder in (d, d / key):
            if not folder.is_dir():
                continue
            files = {p.name.lower(): p for p in folder.iterdir() if p.suffix.lower() == ".h5ad"}
            if f"{key.lower()}.h5ad" in files:
                return [files[f"{key.lower()}.h5ad"]]
            for stem in src.stems:
                tr, te = f"{stem.lower()}_training_data.h5ad", f"{stem.lower()}_testing_data.h5ad"
                if tr in files and te in files:
                    return [files[tr], files[te]]
    stem = src.stems[-1] if key == "MERFISH_Brain" else src.stems[0]
    msg = (
        f"data file for {key} not found: expected {dirs[0] / (key + '.h5ad')} "
        f"(or the authors' pair {stem}_training_data.h5ad + {stem}_testing_data.h5ad). "
        f"Searched: {', '.join(str(d) for d in dirs)} (each also in its {key}/ subfolder). "
        f"Download it with `causcell-bench download {key}`, or by hand from the CausCell Zenodo record {ZENODO_RECORD} "
        f"({ZENODO_URL}); original source: {src.origin}. "
        f"Put it in one of those directories, set ${DATA_ENV}, or pass --data-dir."
    )
    if src.prepare:
        msg += f" For {key}, {src.prepare}."
    raise DataError(msg)


def _read_h5ad(path: Path) -> AnnData:
    import anndata

    if not path.is_file():
        raise DataError(f"AnnData file {path} does not exist; check the path (or the spec's source)")
    try:
        return anndata.read_h5ad(path)
    except Exception as e:  # noqa: BLE001 - h5py/anndata raise many types for a bad file
        raise DataError(f"cannot read {path} as an .h5ad file ({type(e).__name__}: {e})") from None


def _read_paper(name: str, data_dir: str | Path | None) -> AnnData:
    files = find_paper_files(name, data_dir)
    if len(files) == 1:
        return _read_h5ad(files[0])
    import anndata

    parts = [_read_h5ad(f) for f in files]
    for part, tag in zip(parts, ("train", "test")):
        part.obs["paper_split"] = tag  # the authors' own split, kept for reference
    overlap = parts[0].obs_names.intersection(parts[1].obs_names)
    return anndata.concat(parts, join="inner", merge="same", index_unique="-" if len(overlap) else None)


# --- folds given as files (the authors' per-fold layout) ---------------------------
def read_fold_files(spec: DatasetSpec) -> AnnData:
    """The cells of every file ``spec.folds`` lists, once each (matched by obs_names), as one AnnData.

    Each file must carry the spec's concept columns and the same genes; a cell found in several
    files (the same cells recur across the five folds of a cross-validation) must carry the same
    labels in each. The folds themselves are made from the files by
    :func:`causcell_bench.datasets.splits.make_splits`.
    """
    import anndata

    paths = list(dict.fromkeys(p for f in spec.folds for p in (f.train, f.test)))
    parts, genes = [], None
    for path in paths:
        part = _read_h5ad(Path(path))
        missing = [c for c in spec.concepts if c not in part.obs.columns]
        if missing:
            raise DataError(f"{path} lacks the concept column(s) {missing} of {spec.name}; its obs columns are "
                            f"{list(part.obs.columns)}: give the spec's concepts the file's column names")
        if not part.obs_names.is_unique:
            raise DataError(f"{path} has duplicated cell names (obs_names); the folds match cells by name, so "
                            "give every cell a unique name")
        if genes is None:
            genes = part.var_names
        elif not part.var_names.equals(genes):
            raise DataError(f"{path} has other genes than {paths[0]} ({part.n_vars} vs {len(genes)}, or another "
                            "order); every fold file must hold the same genes")
        parts.append(part)
    seen: dict[str, tuple[str, pd.DataFrame]] = {}
    fresh = []
    for path, part in zip(paths, parts):
        labels = part.obs[spec.concepts].astype(str)
        known = labels.index.isin(list(seen))
        if known.any():
            for name in labels.index[known][:1000]:  # a sample suffices to catch files that disagree
                other_path, other = seen[name]
                if not other.loc[name].equals(labels.loc[name]):
                    raise DataError(f"cell {name!r} has other labels in {path} ({dict(labels.loc[name])}) than in "
                                    f"{other_path} ({dict(other.loc[name])}); the fold files must describe the "
                                    "same cells alike")
        for name in labels.index[~known]:
            seen[name] = (path, labels)
        fresh.append(part[~known].copy())
    return anndata.concat(fresh, join="inner", merge="same")


# --- pbmc68k ---------------------------------------------------------------------
def pbmc68k_spec() -> DatasetSpec:
    return DatasetSpec(
        name="pbmc68k",
        source="builtin:pbmc68k",
        concepts=["bulk_labels", "phase"],
        edges=[],
        fine_labels={"bulk_labels": "louvain"},
        counts_layer="counts",
        n_hvg=None,
        description="scanpy pbmc68k_reduced: 700 PBMCs x 765 genes; counts recovered from .raw",
    )


def load_pbmc68k() -> tuple[AnnData, DatasetSpec]:
    """scanpy's bundled ``pbmc68k_reduced`` with integer counts recovered from ``.raw``.

    ``.raw`` holds log1p(CP10k) of the original counts and ``obs.n_counts`` their
    totals, so counts = round(expm1(raw.X) * n_counts / 1e4); the rounding error is
    checked to be float32 noise, not a wrong recovery.
    """
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    if src.raw is None or "n_counts" not in src.obs:
        raise DataError("this scanpy's pbmc68k_reduced lacks .raw or obs['n_counts']; cannot recover counts")
    raw = sp.csr_matrix(src.raw.X, dtype=np.float64)
    raw.data = np.expm1(raw.data)
    x = sp.diags(src.obs["n_counts"].to_numpy(np.float64) / 1e4) @ raw
    x = sp.csr_matrix(x)
    rounded = np.round(x.data)
    err = float(np.abs(x.data - rounded).max()) if x.nnz else 0.0
    if err > 0.25:
        raise DataError(f"pbmc68k counts did not come back integral (max rounding error {err:.3f})")
    counts = sp.csr_matrix((rounded.astype(np.int32), x.indices, x.indptr), shape=x.shape)
    counts.eliminate_zeros()
    keep = ["bulk_labels", "phase", "louvain", "n_counts", "n_genes", "percent_mito", "S_score", "G2M_score"]
    obs = src.obs[[c for c in keep if c in src.obs]].copy()
    adata = AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=pd.Index(src.raw.var_names.astype(str))))
    adata.layers["counts"] = counts
    return adata, pbmc68k_spec()


# --- the public loader -------------------------------------------------------------
def load(
    name_or_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    n_cells: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[AnnData, DatasetSpec]:
    """Load a dataset as RAW data plus its spec.

    ``name_or_path``: a built-in name (``synthetic``, ``pbmc68k``), a paper dataset
    name (looked up in ``data_dir``, ``$CAUSCELL_BENCH_DATA``, ``~/.cache/causcell-bench``),
    a TOML spec path, or an ``.h5ad`` path (then give ``concepts=[...]`` and
    optionally ``edges=[...]``). Spec fields (``concepts``, ``edges`` as list or
    ``"A->C,B->C"``, ``fine_labels``, ``ood_concepts``, ``n_hvg``, ...) in ``kwargs``
    override the spec; ``round_counts=True`` rounds non-integer counts; any other
    kwargs go to :func:`simulate` for ``synthetic``. ``n_cells`` subsamples cells
    (or sets the simulated cell count) with ``seed``.

    Returns ``(adata, spec)``: integer counts in ``layers["counts"]``, all genes,
    concept and fine-label columns as Categorical of strings, checked with
    :func:`validate_adata`.
    """
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _SPEC_KEYS}
    key = str(name_or_path)
    builtin, paper = _match(key, BUILTIN_DATASETS), _match(key, PAPER_DATASETS)
    simulated = False
    if builtin == "synthetic":
        adata, spec = _load_synthetic(n_cells, seed, kwargs)
        simulated = True
    elif builtin == "pbmc68k":
        _no_extra(kwargs, key)
        adata, spec = load_pbmc68k()
    elif paper is not None:
        _no_extra(kwargs, key)
        spec = paper_spec(paper)
        adata = _read_paper(paper, data_dir)
    else:
        path = Path(key).expanduser()
        suffix = path.suffix.lower()
        if suffix == ".toml":
            spec = DatasetSpec.from_toml(path)
            src = spec.source
            if src.startswith("builtin:"):
                sub = src.removeprefix("builtin:")
                if _match(sub, BUILTIN_DATASETS) is None:
                    raise DataError(f"{path}: source {src!r} names no built-in dataset; built-ins: {list(BUILTIN_DATASETS)}")
                if _match(sub, BUILTIN_DATASETS) == "synthetic":
                    adata, _ = _load_synthetic(n_cells, seed, kwargs)
                    simulated = True
                else:
                    _no_extra(kwargs, key)
                    adata, _ = load_pbmc68k()
            elif src.startswith("paper:"):
                _no_extra(kwargs, key)
                adata = _read_paper(src.removeprefix("paper:"), data_dir)
            elif src.startswith("folds:"):
                _no_extra(kwargs, key)
                adata = read_fold_files(spec)
            else:
                _no_extra(kwargs, key)
                adata = _read_h5ad(Path(src))
        elif suffix == ".h5ad":
            _no_extra(kwargs, key)
            if "concepts" not in overrides:
                raise DataError(
                    f"{path} is a bare .h5ad: say which obs columns are concepts, e.g. "
                    "load(path, concepts=['age', 'celltype'], edges=['age->celltype']), or write a TOML spec"
                )
            adata = _read_h5ad(path)
            spec = spec_from_dict(
                {"name": path.stem, "source": str(path.resolve()), "concepts": _as_concepts(overrides.pop("concepts")),
                 "edges": as_edges(overrides.pop("edges", [])),
                 # a bare file: counts are in layers['counts'] if it exists, else in X
                 "counts_layer": "counts" if "counts" in adata.layers else None},
                where=str(path),
            )
        elif not path.exists():
            raise BenchError(_unknown_message(key))
        else:
            raise BenchError(f"{path} is neither a .toml dataset spec nor an .h5ad file; {_unknown_message(key)}")

    spec = _apply_overrides(spec, overrides)
    if n_cells is not None and spec.folds:
        raise DataError(f"{spec.name}'s folds are given as files, which name their cells: --n-cells cannot "
                        "subsample it; leave --n-cells out (or write smaller fold files)")
    if n_cells is not None and not simulated:
        adata = _subsample(adata, int(n_cells), seed)
    if paper is not None or spec.source.startswith("paper:"):
        spec = _drop_missing_fine_labels(adata, spec)
    adata = _standardise(adata, spec, spec.round_counts)
    validate_adata(adata, spec)
    _categorise(adata, spec)
    return adata, spec


def _load_synthetic(n_cells: int | None, seed: int, kwargs: dict[str, Any]) -> tuple[AnnData, DatasetSpec]:
    kwargs = dict(kwargs)
    kwargs.setdefault("n_genes", 500)
    try:
        adata = simulate(n_cells=3000 if n_cells is None else int(n_cells), seed=seed, **kwargs)
    except TypeError as e:  # an unknown keyword: say which ones exist
        import inspect

        known = [p for p in inspect.signature(simulate).parameters if p not in ("n_cells", "seed")]
        raise BenchError(f"synthetic: {e}; simulator options are {known}") from None
    return adata, synthetic_spec(kwargs.get("dag", "default"))


def _no_extra(kwargs: dict[str, Any], name: str) -> None:
    if "n_genes" in kwargs:
        raise BenchError(f"{name}: --n-genes sizes the synthetic simulator only; {name} has its own genes "
                         "(choose how many are kept with --n-hvg)")
    if kwargs:
        raise BenchError(
            f"{name}: unknown option(s) {sorted(kwargs)}; spec options are {sorted(_SPEC_KEYS)} and round_counts"
        )


def _as_concepts(v: Any) -> list[str]:
    if isinstance(v, str):
        return [c.strip() for c in v.split(",") if c.strip()]
    return [str(c) for c in v]


def as_edges(v: Any) -> list[tuple[str, str]]:
    """DAG edges from ``"a->b,c->b"``, a list of such strings, or ``(parent, child)`` pairs."""
    if isinstance(v, str):
        return parse_edges(v)
    out = []
    for e in v:
        if isinstance(e, str):
            out += parse_edges(e)
        elif isinstance(e, (list, tuple)) and len(e) == 2:
            out.append((str(e[0]), str(e[1])))
        else:
            raise DataError(f"cannot read DAG edge {e!r}; give (parent, child) pairs or 'parent->child' strings")
    return out


def _apply_overrides(spec: DatasetSpec, overrides: dict[str, Any]) -> DatasetSpec:
    if not overrides:
        return spec
    concepts = _as_concepts(overrides.pop("concepts")) if "concepts" in overrides else None
    edges = as_edges(overrides.pop("edges")) if "edges" in overrides else None
    return spec.with_overrides(concepts=concepts, edges=edges, **overrides)


def _drop_missing_fine_labels(adata: AnnData, spec: DatasetSpec) -> DatasetSpec:
    """Paper specs guess column names: a missing fine-label column only disables the granularity test."""
    missing = {c: f for c, f in spec.fine_labels.items() if f not in adata.obs.columns}
    if not missing:
        return spec
    warnings.warn(
        f"{spec.name}: fine label column(s) {sorted(missing.values())} not in the data; the granularity "
        "test is skipped for them (set fine_labels in a spec file to enable it)",
        stacklevel=3,
    )
    return spec.with_overrides(fine_labels={c: f for c, f in spec.fine_labels.items() if c not in missing})


def _subsample(adata: AnnData, n_cells: int, seed: int) -> AnnData:
    if n_cells < 1:
        raise BenchError(f"n_cells={n_cells}: must be a positive number of cells")
    if n_cells >= adata.n_obs:
        return adata
    idx = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False))
    return adata[idx].copy()


def _standardise(adata: AnnData, spec: DatasetSpec, round_counts: bool) -> AnnData:
    """Put the raw counts in ``layers['counts']`` (copying X when counts live there). The spec's
    ``counts_layer`` wins over a layer that happens to be called ``counts``."""
    if spec.counts_layer is not None and spec.counts_layer in adata.layers:
        counts = adata.layers[spec.counts_layer]
    elif spec.counts_layer is None:
        counts = adata.X.copy() if adata.X is not None else None
    else:
        counts = _find_counts(adata, spec)
    if counts is None:
        raise DataError(f"{spec.name}: adata.X is None and no counts layer exists; store raw counts in X or a layer")
    if round_counts:
        counts = _rounded(counts)
    adata.layers["counts"] = counts
    return adata


def _find_counts(adata: AnnData, spec: DatasetSpec) -> Any:
    """The default counts layer (``counts``) is missing: fall back to integer-valued X, raw.X (raw
    counts in X are the documented default). A layer the spec names explicitly and that is missing is
    refused: a misspelt name would otherwise read other values than the user chose."""
    if spec.counts_layer != "counts":
        raise DataError(
            f"{spec.name}: counts_layer = {spec.counts_layer!r} names a layer the data does not have "
            f"(layers: {list(adata.layers)}); set counts_layer to the layer with raw counts, or leave it out "
            "to read integer counts from X"
        )
    candidates = [adata.X]
    if adata.raw is not None and list(adata.raw.var_names) == list(adata.var_names):
        candidates.append(adata.raw.X)
    for x in candidates:
        try:
            check_counts(x)
        except DataError:
            continue
        return x.copy()
    raise NotCountsError(
        f"{spec.name}: no raw counts found: layer {spec.counts_layer!r} is missing (layers: {list(adata.layers)}) "
        "and neither X nor raw.X holds non-negative integers. Set counts_layer in the spec to the raw-count "
        "layer, or set round_counts = true in the dataset's TOML spec if the counts are legitimately non-integer",
        [],
    )


def _rounded(x: Any) -> Any:
    if sp.issparse(x):
        x = x.copy()
        if x.dtype.kind == "f":
            np.rint(x.data, out=x.data)
            x.eliminate_zeros()
        return x
    x = np.asarray(x)
    return np.rint(x) if x.dtype.kind == "f" else x.copy()


def _categorise(adata: AnnData, spec: DatasetSpec) -> None:
    """Concept and fine-label columns -> Categorical of strings (category order kept, unused dropped)."""
    for c in list(spec.concepts) + list(spec.fine_labels.values()):
        col = adata.obs[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = [str(v) for v in col.cat.categories]
            values = col.astype(str)
        else:
            values = col.astype(str)
            cats = sorted(pd.unique(values), key=_natural_key)
        present = set(values)
        adata.obs[c] = pd.Categorical(values, categories=list(dict.fromkeys(v for v in cats if v in present)))


def _natural_key(s: str) -> tuple:
    """Sort '2' before '10' for numeric-looking labels."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)

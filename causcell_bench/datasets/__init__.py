"""Datasets of the benchmark: specs, loaders, preprocessing, splits and the SCM simulator.

``load`` gives raw data and its :class:`DatasetSpec`; ``make_splits`` gives ID or
OOD folds; ``preprocess`` turns one train/test pair into the method data
contract; ``simulate`` / ``true_counterfactual`` are the synthetic ground truth.
scanpy is imported only inside the functions that need it.
"""

from __future__ import annotations

from causcell_bench.datasets.loaders import (
    BUILTIN_DATASETS,
    PAPER_DATASETS,
    data_dirs,
    find_paper_files,
    get_spec,
    load,
    load_pbmc68k,
)
from causcell_bench.datasets.prepare import prepare_ici_response
from causcell_bench.datasets.preprocess import preprocess
from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.datasets.splits import Split, load_splits, make_holdout_split, make_splits, save_splits
from causcell_bench.datasets.synthetic import (
    age_trend_genes,
    counterfactual_label_posterior,
    simulate,
    synthetic_spec,
    true_counterfactual,
)
from causcell_bench.datasets.validate import validate_adata

__all__ = [
    "BUILTIN_DATASETS",
    "PAPER_DATASETS",
    "DatasetSpec",
    "Split",
    "age_trend_genes",
    "counterfactual_label_posterior",
    "data_dirs",
    "find_paper_files",
    "get_spec",
    "load",
    "load_pbmc68k",
    "load_splits",
    "make_holdout_split",
    "make_splits",
    "prepare_ici_response",
    "preprocess",
    "save_splits",
    "simulate",
    "synthetic_spec",
    "true_counterfactual",
    "validate_adata",
]

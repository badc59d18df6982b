"""Folds given as files (issue 27): the CausCell authors publish each fold as a training and a testing
.h5ad. A spec with ``source = "folds:"`` and a ``folds`` list uses exactly those folds; the files are
checked (concept columns, same genes, consistent labels, OOD test combinations unseen in training)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causcell_bench.cli import app
from causcell_bench.datasets import load
from causcell_bench.datasets.loaders import PAPER_DATASETS, paper_spec
from causcell_bench.datasets.splits import load_splits, make_splits
from causcell_bench.errors import BenchError, DataError

N_FOLDS = 2


def _cells(concepts: list[str], n_per_combo: int = 12, seed: int = 0) -> anndata.AnnData:
    """Every combination of two labels per concept, ``n_per_combo`` cells each, Poisson counts in X."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(*[[f"{c}_{v}" for v in "ab"] for c in concepts]))
    rows = [combo for combo in combos for _ in range(n_per_combo)]
    obs = pd.DataFrame(rows, columns=concepts, index=[f"cell{i}" for i in range(len(rows))])
    x = rng.poisson(2.0, size=(len(rows), 40)).astype(np.float32)
    return anndata.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(40)]))


def _authors_layout(folder: Path, name: str, *, leak_ood: bool = False, drop: str | None = None) -> Path:
    """Per-fold <stem>_<setting>_fold<k>_training_data.h5ad / ..._testing_data.h5ad pairs and the spec
    listing them, with the paper's obs column names (the shipped spec's concepts and DAG)."""
    shipped = paper_spec(name)
    adata = _cells(shipped.concepts)
    rng = np.random.default_rng(1)
    folds = []
    # ID: the cells in N_FOLDS random parts; OOD: fold k tests one whole label combination
    part = rng.permutation(adata.n_obs) % N_FOLDS
    combos = adata.obs[shipped.concepts].astype(str).agg("/".join, axis=1)
    for setting, k in itertools.product(("ID", "OOD"), range(N_FOLDS)):
        if setting == "ID":
            test = part == k
        else:
            test = (combos == combos.iloc[0] if k == 0 else combos == combos.iloc[-1]).to_numpy()
        train = ~test
        if leak_ood and setting == "OOD" and k == 1:
            train = train | (test & (np.cumsum(test) == 1))  # one test cell's combination also trains
            test = test & (np.cumsum(test) > 1)
        stem = folder / f"{name}_{setting}_fold{k}"
        tr, te = adata[train].copy(), adata[test].copy()
        if drop is not None and setting == "ID" and k == 1:
            del te.obs[drop]
        tr.write_h5ad(f"{stem}_training_data.h5ad")
        te.write_h5ad(f"{stem}_testing_data.h5ad")
        folds.append({"setting": setting, "fold": k, "train": f"{stem.name}_training_data.h5ad",
                      "test": f"{stem.name}_testing_data.h5ad"})
    spec = folder / f"{name}.toml"
    lines = [f'name = "{name}"', 'source = "folds:"', f"concepts = {json.dumps(shipped.concepts)}",
             f"edges = {json.dumps([list(e) for e in shipped.edges])}", "n_hvg = 20"]
    for f in folds:
        lines += ["[[folds]]", *(f"{k} = {json.dumps(v)}" for k, v in f.items())]
    spec.write_text("\n".join(lines) + "\n")
    return spec


@pytest.mark.parametrize("name", list(PAPER_DATASETS))
def test_the_authors_fold_files_are_the_folds(tmp_path: Path, name: str) -> None:
    spec_path = _authors_layout(tmp_path, name)
    adata, spec = load(spec_path)
    assert adata.n_obs == 12 * 2 ** len(spec.concepts)  # every cell once, whichever files it is in
    for setting in ("ID", "OOD"):
        splits = make_splits(adata, spec, setting, n_folds=N_FOLDS, seed=0)
        for split, files in zip(splits, spec.fold_files(setting)):
            train, test = split.subset(adata)
            assert list(test.obs_names) == sorted(anndata.read_h5ad(files.test).obs_names, key=list(adata.obs_names).index)
            assert set(train.obs_names) == set(anndata.read_h5ad(files.train).obs_names)
            if setting == "OOD":
                seen = set(map(tuple, train.obs[spec.concepts].astype(str).to_numpy()))
                assert split.held_out and all(tuple(h.values()) not in seen for h in split.held_out)
    # the seed does not move a fold given as files
    a, b = (make_splits(adata, spec, "ID", n_folds=N_FOLDS, seed=s)[0] for s in (0, 7))
    np.testing.assert_array_equal(a.test_idx, b.test_idx)


def test_fold_files_that_cannot_be_the_folds_are_refused(tmp_path: Path) -> None:
    for sub in ("ok", "leak", "drop"):
        (tmp_path / sub).mkdir()
    adata, spec = load(_authors_layout(tmp_path / "ok", "MERFISH_Brain"))
    with pytest.raises(BenchError, match="gives 2 ID folds as files; pass --n-folds 2"):
        make_splits(adata, spec, "ID", n_folds=5)
    adata, spec = load(_authors_layout(tmp_path / "leak", "MERFISH_Brain", leak_ood=True))
    with pytest.raises(DataError, match=r"OOD_fold1_testing_data.h5ad: OOD fold 1 tests .* which .*training_data"):
        make_splits(adata, spec, "OOD", n_folds=N_FOLDS)
    with pytest.raises(DataError, match=r"ID_fold1_testing_data.h5ad lacks the concept column\(s\) \['Domain'\]"):
        load(_authors_layout(tmp_path / "drop", "MERFISH_Brain", drop="Domain"))
    with pytest.raises(DataError, match="cannot subsample"):
        load(tmp_path / "ok" / "MERFISH_Brain.toml", n_cells=50)


def test_a_run_uses_the_files_folds(tmp_path: Path) -> None:
    spec_path = _authors_layout(tmp_path, "ICI_response")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "--dataset", str(spec_path), "--methods", "positive_control,group_mean",
                                 "--settings", "ID,OOD", "--folds", "0", "--n-folds", str(N_FOLDS), "--no-report",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    saved = load_splits(out / "splits" / "ICI_response" / "OOD.json")[0]
    test_file = anndata.read_h5ad(tmp_path / "ICI_response_OOD_fold0_testing_data.h5ad")
    assert set(saved.obs_names[saved.test_idx]) == set(test_file.obs_names)
    r = CliRunner().invoke(app, ["run", "--dataset", str(spec_path), "--methods", "group_mean", "--settings", "ID",
                                 "--folds", "0", "--no-report", "--out", str(tmp_path / "run5")])
    assert r.exit_code == 2 and "pass --n-folds 2" in r.stderr


def test_one_fold_pair_runs_with_n_folds_one(tmp_path: Path) -> None:
    """The authors' tutorial ships one MERFISH fold (a training and a testing file): --n-folds 1 runs it,
    while a random split still needs two folds."""
    adata = _cells(paper_spec("MERFISH_Brain").concepts)
    test = np.random.default_rng(0).random(adata.n_obs) < 0.25
    adata[~test].copy().write_h5ad(tmp_path / "Merfish_Brain_training_data.h5ad")
    adata[test].copy().write_h5ad(tmp_path / "Merfish_Brain_testing_data.h5ad")
    (tmp_path / "one.toml").write_text(
        'name = "one"\nsource = "folds:"\nconcepts = ["Age", "Domain", "Celltype"]\n'
        'edges = [["Age", "Celltype"], ["Domain", "Celltype"]]\nn_hvg = 20\n[[folds]]\nsetting = "ID"\nfold = 0\n'
        'train = "Merfish_Brain_training_data.h5ad"\ntest = "Merfish_Brain_testing_data.h5ad"\n')
    r = CliRunner().invoke(app, ["run", "--dataset", str(tmp_path / "one.toml"), "--methods", "group_mean",
                                 "--settings", "ID", "--n-folds", "1", "--no-report", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.stderr
    split = load_splits(tmp_path / "run" / "splits" / "one" / "ID.json")[0]
    assert len(split.test_idx) == int(test.sum())
    r = CliRunner().invoke(app, ["run", "--dataset", str(tmp_path / "one.toml"), "--methods", "group_mean",
                                 "--settings", "OOD", "--n-folds", "1", "--no-report", "--out", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "a random OOD split needs 2 or more folds" in r.stderr

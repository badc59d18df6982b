"""Loaders, validation, preprocessing and the GEO conversion."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets import (
    BUILTIN_DATASETS,
    PAPER_DATASETS,
    DatasetSpec,
    load,
    prepare_ici_response,
    preprocess,
    validate_adata,
)
from causcell_bench.errors import BenchError, DataError


def _toy(n_cells: int = 60, n_genes: int = 30, seed: int = 0) -> tuple[AnnData, DatasetSpec]:
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(rng.gamma(1.0, 2.0, (n_cells, n_genes))).astype(np.float32))
    obs = pd.DataFrame(
        {"cond": rng.choice(["a", "b"], n_cells), "kind": rng.choice(["x", "y", "z"], n_cells)},
        index=[f"c{i}" for i in range(n_cells)],
    )
    adata = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    spec = DatasetSpec(name="toy", source="toy.h5ad", concepts=["cond", "kind"], edges=[("cond", "kind")], counts_layer=None)
    return adata, spec


# --- loaders ---------------------------------------------------------------------
def test_names_exported():
    assert set(BUILTIN_DATASETS) == {"synthetic", "pbmc68k"}
    assert set(PAPER_DATASETS) == {"ICI_response", "MERFISH_Brain", "Spatiotemporally_Liver", "Immun_atlas", "Limb_development"}


def test_load_synthetic_raw_and_overrides():
    adata, spec = load("synthetic", n_cells=300, n_genes=40, seed=2)
    assert adata.shape == (300, 40) and spec.edges == [("age", "celltype"), ("domain", "celltype")]
    assert adata.layers["counts"].dtype.kind == "i"
    assert all(adata.obs[c].dtype == "category" for c in spec.concepts)
    _, spec_none = load("synthetic", n_cells=100, n_genes=20, dag="none")
    assert spec_none.edges == []
    _, spec2 = load("synthetic", n_cells=100, n_genes=20, concepts="age,celltype", edges="age->celltype")
    assert spec2.concepts == ["age", "celltype"] and spec2.edges == [("age", "celltype")]
    with pytest.raises(BenchError, match="simulator options"):
        load("synthetic", n_cells=50, n_genes=20, bogus=1)


def test_pbmc68k_counts_are_integral():
    adata, spec = load("pbmc68k")
    assert adata.shape == (700, 765)
    counts = adata.layers["counts"]
    assert sp.issparse(counts) and counts.dtype.kind == "i" and counts.data.min() > 0
    assert spec.concepts == ["bulk_labels", "phase"] and spec.edges == []
    assert spec.fine_labels == {"bulk_labels": "louvain"}
    assert adata.obs["bulk_labels"].nunique() == 10 and adata.obs["louvain"].dtype == "category"
    # the recovered counts reproduce scanpy's log1p(CP10k) of the original totals
    import scanpy as sc

    raw = sc.datasets.pbmc68k_reduced().raw.X.toarray()
    recon = np.log1p(counts.toarray() / adata.obs["n_counts"].to_numpy()[:, None] * 1e4)
    assert np.abs(recon - raw).max() < 1e-3


def test_unknown_name_lists_available():
    with pytest.raises(BenchError, match="available: synthetic, pbmc68k, ICI_response"):
        load("no_such_dataset")


def test_missing_paper_file_names_file_dirs_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUSCELL_BENCH_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        load("MERFISH_Brain", data_dir=tmp_path / "mine")
    msg = str(e.value)
    assert str(tmp_path / "mine" / "MERFISH_Brain.h5ad") in msg
    assert "Merfish_Brain_training_data.h5ad" in msg
    assert str(tmp_path / "env") in msg and "causcell-bench" in msg  # every directory searched
    assert "15242547" in msg and "31937775-0602-4e52-a799-b6acdd2bac2e" in msg
    with pytest.raises(DataError, match="GSE123813"):
        load("ICI_response", data_dir=tmp_path)


def test_paper_dataset_from_authors_pair(tmp_path):
    adata, _ = _toy(80, 20)
    adata.obs = adata.obs.rename(columns={"cond": "Age", "kind": "Celltype"})
    adata.obs["Domain"] = np.where(np.arange(80) % 2, "d1", "d2")
    adata.layers["counts"] = adata.X.copy()
    adata[:50].copy().write_h5ad(tmp_path / "Merfish_Brain_training_data.h5ad")
    adata[50:].copy().write_h5ad(tmp_path / "Merfish_Brain_testing_data.h5ad")
    got, spec = load("merfish_brain", data_dir=tmp_path)  # names are case-insensitive
    assert got.n_obs == 80 and spec.name == "MERFISH_Brain"
    assert got.obs["paper_split"].value_counts().to_dict() == {"train": 50, "test": 30}
    assert got.obs["Domain"].dtype == "category"


def test_h5ad_path_and_toml_spec(tmp_path):
    adata, _ = _toy()
    path = tmp_path / "mine.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(DataError, match="concepts="):
        load(path)
    got, spec = load(path, concepts=["cond", "kind"], edges="cond->kind")
    assert spec.edges == [("cond", "kind")]
    np.testing.assert_array_equal(got.layers["counts"].toarray(), adata.X.toarray())
    (tmp_path / "mine.toml").write_text(
        'source = "mine.h5ad"\nconcepts = ["cond", "kind"]\nedges = "cond->kind"\nn_hvg = 10\n'
    )
    with warnings.catch_warnings():  # counts_layer left out, counts in X: the documented default, no warning
        warnings.simplefilter("error")
        got, spec = load(tmp_path / "mine.toml", n_cells=40)
    assert spec.name == "mine" and spec.n_hvg == 10 and got.n_obs == 40
    (tmp_path / "umi.toml").write_text('source = "mine.h5ad"\nconcepts = ["cond", "kind"]\ncounts_layer = "umi"\n')
    with pytest.raises(DataError, match="counts_layer = 'umi' names a layer the data does not have"):
        load(tmp_path / "umi.toml")  # a named layer that is missing is a typo, not a cue to read X
    with pytest.raises(DataError, match="cycle"):
        load(path, concepts=["cond", "kind"], edges="cond->kind,kind->cond")
    with pytest.raises(DataError, match="not a concept"):
        load(path, concepts=["cond", "kind"], edges="cond->nope")


# --- validation -------------------------------------------------------------------
def _bad(kind: str) -> tuple[AnnData, DatasetSpec]:
    adata, spec = _toy()
    x = adata.X.toarray()
    if kind == "nan":
        x[0, 0] = np.nan
    elif kind == "negative":
        x[1, 2] = -1
    elif kind == "fraction":
        x[2, 3] = 0.5
    adata.X = sp.csr_matrix(x)
    return adata, spec


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [("nan", "NaN"), ("negative", "negative"), ("fraction", "not integer-valued")],
)
def test_bad_counts(kind, pattern):
    adata, spec = _bad(kind)
    with pytest.raises(DataError, match=pattern):
        validate_adata(adata, spec)


def test_validate_messages():
    adata, spec = _toy()
    validate_adata(adata, spec)  # the good case passes
    with pytest.raises(DataError, match=r"available obs columns: \['cond', 'kind'\]"):
        validate_adata(adata, spec.with_overrides(concepts=["cond", "missing"]))
    with pytest.raises(DataError, match="fine label column"):
        validate_adata(adata, spec.with_overrides(fine_labels={"kind": "kind_fine"}))
    one = adata.copy()
    one.obs["cond"] = "a"
    with pytest.raises(DataError, match="single value"):
        validate_adata(one, spec)
    dup = adata.copy()
    dup.obs_names = ["c0"] * 2 + list(dup.obs_names[2:])
    with pytest.raises(DataError, match="duplicated cell names"):
        validate_adata(dup, spec)
    dupg = adata.copy()
    dupg.var_names = ["g0"] * 2 + list(dupg.var_names[2:])
    with pytest.raises(DataError, match="duplicated gene names"):
        validate_adata(dupg, spec)
    with pytest.raises(DataError, match="fewer than the 5 folds"):
        validate_adata(adata[:4].copy(), spec)
    with pytest.raises(DataError, match="empty"):
        validate_adata(adata[:0].copy(), spec)
    na = adata.copy()
    na.obs["kind"] = na.obs["kind"].astype(object)
    na.obs.iloc[3, 1] = None
    with pytest.raises(DataError, match="missing labels"):
        validate_adata(na, spec)


def test_dag_errors_come_from_spec():
    with pytest.raises(ValueError, match="cycle"):
        DatasetSpec(name="t", source="x", concepts=["a", "b"], edges=[("a", "b"), ("b", "a")])
    with pytest.raises(ValueError, match="not a concept"):
        DatasetSpec(name="t", source="x", concepts=["a", "b"], edges=[("a", "c")])


# --- preprocessing ------------------------------------------------------------------
def test_preprocess_contract_and_categories():
    adata, spec = _toy(90, 40)
    adata.obs["kind"] = pd.Categorical(adata.obs["kind"])
    train, test = adata[:60].copy(), adata[60:].copy()
    test.obs["kind"] = test.obs["kind"].astype(str).replace({"z": "w"})  # a value unseen in training
    tr, te = preprocess(train, test, spec, n_hvg=None)
    assert tr.n_vars == 40 and sp.issparse(tr.X) and tr.X.dtype == np.float32
    assert sp.issparse(tr.layers["counts"])
    counts = tr.layers["counts"].toarray()
    np.testing.assert_allclose(tr.X.toarray(), np.log1p(counts / counts.sum(1, keepdims=True) * 1e4), rtol=1e-5)
    assert list(tr.obs["kind"].cat.categories) == list(te.obs["kind"].cat.categories)
    assert "w" in list(tr.obs["kind"].cat.categories)
    assert train.X is not tr.layers["counts"]  # new objects
    tr_all, _ = preprocess(train, test, spec, n_hvg=500)
    assert tr_all.n_vars == 40


def test_hvgs_depend_on_training_cells_only():
    adata, spec = load("synthetic", n_cells=400, n_genes=80, seed=4)
    train, test = adata[:300].copy(), adata[300:].copy()
    other = test.copy()
    rng = np.random.default_rng(0)
    other.layers["counts"] = sp.csr_matrix(rng.poisson(30, other.shape).astype(np.int32))  # wildly different test
    a, ta = preprocess(train, test, spec, n_hvg=20)
    b, tb = preprocess(train, other, spec, n_hvg=20)
    assert a.n_vars == 20 and list(a.var_names) == list(b.var_names) == list(ta.var_names) == list(tb.var_names)
    c, _ = preprocess(test, train, spec, n_hvg=20)  # other training cells -> other genes
    assert list(c.var_names) != list(a.var_names)
    assert "synthetic" in a.uns and "gumbel" in a.obsm  # truth travels with the cells


# --- GEO conversion --------------------------------------------------------------------
@pytest.mark.parametrize("r_style_header", [True, False])
def test_prepare_ici_response_round_trip(tmp_path, r_style_header):
    rng = np.random.default_rng(0)
    genes, cells = [f"GENE{i}" for i in range(1200)], [f"bcc.p1.{j}" for j in range(30)]
    mat = rng.poisson(0.4, (len(genes), len(cells)))
    counts_path = tmp_path / "GSE123813_bcc_scRNA_counts.txt.gz"
    with gzip.open(counts_path, "wt") as fh:
        fh.write(("" if r_style_header else "gene\t") + "\t".join(cells) + "\n")
        for g, row in zip(genes, mat):
            fh.write(g + "\t" + "\t".join(map(str, row)) + "\n")
    meta = pd.DataFrame({
        "cell.id": cells[:-2],  # two cells lack metadata and are dropped
        "patient": rng.choice(["su001", "su002"], 28),
        "treatment": rng.choice(["pre", "post"], 28),
        "sort": "CD45+",
        "cluster": rng.choice(["CD8_act", "Tumor_1", "B_cells"], 28),
    })
    meta_path = tmp_path / "GSE123813_bcc_all_metadata.txt.gz"
    meta.to_csv(meta_path, sep="\t", index=False)
    out = prepare_ici_response(counts_path, meta_path, tmp_path)
    assert out.name == "ICI_response.h5ad"
    import anndata

    a = anndata.read_h5ad(out)
    assert a.shape == (28, 1200) and sp.issparse(a.layers["counts"])
    np.testing.assert_array_equal(a.layers["counts"].toarray(), mat[:, :28].T)
    assert (a.obs["celltype"].astype(str).values == meta["cluster"].values).all()
    loaded, spec = load("ICI_response", data_dir=tmp_path)
    assert spec.concepts == ["treatment", "celltype", "patient"] and loaded.n_obs == 28


def test_the_specs_counts_layer_wins_and_round_counts_is_a_spec_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = AnnData(X=rng.poisson(1.0, (40, 12)).astype(np.float32))
    a.obs["cond"] = np.tile(["x", "y"], 20)
    a.obs["kind"] = np.repeat(["p", "q"], 20)
    a.layers["umi"] = rng.poisson(3.0, (40, 12)).astype(np.float32)
    a.layers["counts"] = a.X.copy()
    a.layers["volume"] = a.layers["umi"] + 0.25
    a.write_h5ad(tmp_path / "d.h5ad")
    spec = 'source = "d.h5ad"\nconcepts = ["cond", "kind"]\ncounts_layer = "{}"\n'
    (tmp_path / "umi.toml").write_text(spec.format("umi"))
    got, _ = load(tmp_path / "umi.toml")
    np.testing.assert_array_equal(np.asarray(got.layers["counts"].todense() if hasattr(got.layers["counts"], "todense")
                                             else got.layers["counts"]), a.layers["umi"])
    (tmp_path / "vol.toml").write_text(spec.format("volume"))
    with pytest.raises(DataError, match="set round_counts = true in the dataset's TOML spec"):
        load(tmp_path / "vol.toml")
    (tmp_path / "volr.toml").write_text(spec.format("volume") + "round_counts = true\n")
    got, spec_r = load(tmp_path / "volr.toml")
    assert spec_r.round_counts and float(np.asarray(got.layers["counts"].sum())) == float(np.rint(a.layers["volume"]).sum())


def test_all_zero_cells_are_named_in_one_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = AnnData(X=rng.poisson(2.0, (40, 12)).astype(np.float32))
    a.X[:3] = 0
    a.obs["cond"] = np.tile(["x", "y"], 20)
    a.obs["kind"] = np.repeat(["p", "q"], 20)
    a.write_h5ad(tmp_path / "z.h5ad")
    with pytest.warns(UserWarning, match=r"3 cell\(s\) have no counts at all"):
        load(tmp_path / "z.h5ad", concepts=["cond", "kind"])

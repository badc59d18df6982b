"""`train` / `counterfactual`: the model directory, the counterfactual file and the user errors."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causcell_bench import counterfactual as cf
from causcell_bench.cli import app
from causcell_bench.datasets import load, make_splits
from causcell_bench.errors import BenchError
from causcell_bench.methods.controls import NegativeControl

DATA = ["--dataset", "synthetic", "--n-cells", "300", "--n-genes", "40"]
TINY_CAUSCELL = ["n_steps=20", "batch_size=64", "hidden=32", "n_blocks=1", "heads=2", "head_dim=8", "d=8",
                 "ff_mult=2", "ddim_steps=3", "pool_size=16"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def neg_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("neg") / "model"
    r = invoke("train", "--method", "negative_control", "--out", out, *DATA)
    assert r.exit_code == 0, r.output
    return out


def test_counterfactual_file_round_trips(neg_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "cf.h5ad"
    r = invoke("counterfactual", neg_model, "--do", "age=age_2", "--cells", "celltype=type_1", "--seed", "3",
               "--out", path)
    assert r.exit_code == 0, r.output
    a = anndata.read_h5ad(path)
    orig, twin = a[a.obs["type"] == "original"], a[a.obs["type"] == "counterfactual"]
    raw, _ = load("synthetic", n_cells=300, n_genes=40)
    assert orig.n_obs == twin.n_obs == int((raw.obs["celltype"] == "type_1").sum())
    assert (orig.obs["celltype"] == "type_1").all()
    # every counterfactual names its original, in order; originals point to themselves
    assert list(twin.obs["source_cell"]) == list(orig.obs_names)
    assert list(orig.obs["source_cell"]) == list(orig.obs_names)
    assert (twin.obs["age"] == "age_2").all()
    assert list(orig.obs["age"]) == list(raw.obs.loc[orig.obs_names, "age"].astype(str))
    meta = a.uns["counterfactual"]
    assert meta["intervention"] == {"age": "age_2"} and meta["method"] == "negative_control"
    assert int(meta["seed"]) == 3 and meta["dataset"] == "synthetic" and "mode" in meta
    assert list(meta["descendants_not_relabelled"]) == ["celltype"]
    # X is log1p(CP10k): the original rows equal the data re-normalised on the model's genes
    x = orig.X.toarray()
    counts = raw[orig.obs_names].layers["counts"].toarray()
    np.testing.assert_allclose(x, np.log1p(counts / counts.sum(1, keepdims=True) * 1e4), rtol=1e-5, atol=1e-5)
    assert a.n_vars == 40 and np.isfinite(a.X.toarray()).all()


def test_n_cells_max_and_joint_do(neg_model: Path) -> None:
    a = cf.generate_counterfactuals(neg_model, ["age=age_0", "domain=domain_1"], n_cells_max=25, seed=1)
    assert a.n_obs == 50
    twin = a[a.obs["type"] == "counterfactual"]
    assert (twin.obs["age"] == "age_0").all() and (twin.obs["domain"] == "domain_1").all()
    b = cf.generate_counterfactuals(neg_model, {"age": "age_0", "domain": "domain_1"}, n_cells_max=25, seed=1)
    assert list(a.obs_names) == list(b.obs_names)  # the draw of cells is seeded


def test_unknown_value_fails_clearly(neg_model: Path, tmp_path: Path) -> None:
    r = invoke("counterfactual", neg_model, "--do", "age=age_9", "--out", tmp_path / "x.h5ad")
    assert r.exit_code == 2
    assert "never seen in training" in r.output and "age_2" in r.output
    assert not (tmp_path / "x.h5ad").exists()


@pytest.mark.parametrize(
    ("do", "cells", "message"),
    [
        ("colour=red", None, "not a concept of this model"),
        ("age", None, "concept=value"),
        ("age=", None, "concept=value"),
        ("age=age_1", "celltype=type_99", "selects no cell"),
        ("age=age_1", "nosuchcol=1", "not an obs column"),
    ],
)
def test_bad_requests_fail_clearly(neg_model: Path, tmp_path: Path, do: str, cells: str | None, message: str) -> None:
    extra = ["--cells", cells] if cells else []
    r = invoke("counterfactual", neg_model, "--do", do, *extra, "--out", tmp_path / "x.h5ad")
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_select_cells() -> None:
    obs = pd.DataFrame({"a": ["x", "y", "x"], "b": ["p", "q", "q"]}, index=["c0", "c1", "c2"])
    ad = anndata.AnnData(X=np.zeros((3, 2), np.float32), obs=obs)
    assert list(cf.select_cells(ad, cf.parse_filters(["a=x", "b=q"])).obs_names) == ["c2"]
    assert list(cf.select_cells(ad, cf.parse_filters("a=x,y")).obs_names) == ["c0", "c1", "c2"]
    with pytest.raises(BenchError, match="select no cell together"):
        cf.select_cells(ad, {"a": ["y"], "b": ["p"]})
    with pytest.raises(BenchError, match="positive"):
        cf.select_cells(ad, {}, n_max=0)


def test_parse_do() -> None:
    assert cf.parse_do(["age=a", "domain=b"]) == {"age": "a", "domain": "b"}
    assert cf.parse_do("age=a, domain=b") == {"age": "a", "domain": "b"}
    with pytest.raises(BenchError, match="twice"):
        cf.parse_do(["age=a", "age=b"])
    with pytest.raises(BenchError, match="no intervention"):
        cf.parse_do([])


def test_method_without_counterfactuals_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "pos"
    r = invoke("train", "--method", "positive_control", "--out", model, *DATA)
    assert r.exit_code == 0, r.output
    r = invoke("counterfactual", model, "--do", "age=age_1", "--out", tmp_path / "x.h5ad")
    assert r.exit_code == 2
    assert "cannot generate counterfactuals" in r.output and "negative_control" in r.output


def test_mode_refused_for_a_method_without_modes(neg_model: Path, tmp_path: Path) -> None:
    r = invoke("counterfactual", neg_model, "--do", "age=age_1", "--mode", "exogenous", "--out", tmp_path / "x.h5ad")
    assert r.exit_code == 2 and "no counterfactual modes" in r.output


def test_not_a_model_dir(tmp_path: Path) -> None:
    r = invoke("counterfactual", tmp_path, "--do", "age=age_1", "--out", tmp_path / "x.h5ad")
    assert r.exit_code == 2 and "manifest.json" in r.output


def test_train_on_a_fold_never_sees_held_out_cells(tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []
    fit = NegativeControl.fit

    def spy(self, train, spec, *, seed):
        seen.append(list(train.obs_names))
        return fit(self, train, spec, seed=seed)

    monkeypatch.setattr(NegativeControl, "fit", spy)
    model = tmp_path / "m"
    r = invoke("train", "--method", "negative_control", "--out", model, "--fold", "2", "--setting", "OOD",
               "--n-folds", "3", "--n-hvg", "15", *DATA)
    assert r.exit_code == 0, r.output
    raw, spec = load("synthetic", n_cells=300, n_genes=40)
    split = make_splits(raw, spec, "OOD", n_folds=3, seed=0)[2]
    held = set(raw.obs_names[split.test_idx])
    assert len(seen) == 1 and seen[0] and not held & set(seen[0])
    assert set(seen[0]) == set(raw.obs_names[split.train_idx])
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["fold"]["fold"] == 2 and manifest["fold"]["n_test"] == len(held)
    assert len(manifest["genes"]) == 15  # HVGs of the training cells

    # the counterfactual of the held-out part uses exactly those cells, on the model's genes
    a = cf.generate_counterfactuals(model, "age=age_0", part="test")
    assert set(a.obs["source_cell"]) == held and a.n_vars == 15


def test_input_h5ad(neg_model: Path, tmp_path: Path) -> None:
    raw, _ = load("synthetic", n_cells=120, n_genes=40, seed=5)
    user = anndata.AnnData(X=raw.layers["counts"].copy(), obs=raw.obs[["age", "domain", "celltype"]].copy(),
                           var=raw.var[[]].copy())
    path = tmp_path / "mine.h5ad"
    user.write_h5ad(path)
    out = tmp_path / "cf.h5ad"
    r = invoke("counterfactual", neg_model, "--do", "domain=domain_0", "--input", path, "--out", out)
    assert r.exit_code == 0, r.output
    a = anndata.read_h5ad(out)
    assert a.n_obs == 240 and a.uns["counterfactual"]["dataset"] == str(path)
    user[:, :30].copy().write_h5ad(path)
    r = invoke("counterfactual", neg_model, "--do", "domain=domain_0", "--input", path, "--out", out)
    assert r.exit_code == 2 and "genes are missing" in r.output


def test_causcell_round_trip_with_mode(tmp_path: Path) -> None:
    model = tmp_path / "cc"
    params = [x for p in TINY_CAUSCELL for x in ("--param", p)]
    r = invoke("train", "--method", "CausCell", "--out", model, "--device", "cpu", *params, *DATA)
    assert r.exit_code == 0, r.output
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"] == "CausCell" and manifest["params"]["n_steps"] == 20
    out = tmp_path / "cf.h5ad"
    r = invoke("counterfactual", model, "--do", "age=age_1", "--n-cells-max", "12", "--mode", "exogenous",
               "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    a = anndata.read_h5ad(out)
    assert a.uns["counterfactual"]["mode"] == "exogenous" and a.n_obs == 24
    assert np.isfinite(a.X.toarray()).all()
    r = invoke("train", "--method", "CausCell", "--out", model, "--param", "no_such=1", *DATA)
    assert r.exit_code == 2 and "no_such" in r.output


def test_train_on_a_bare_h5ad(tmp_path: Path) -> None:
    raw, _ = load("synthetic", n_cells=150, n_genes=30, seed=2)
    user = anndata.AnnData(X=raw.layers["counts"].copy(), obs=raw.obs[["age", "celltype"]].copy(),
                           var=raw.var[[]].copy())
    path = tmp_path / "mine.h5ad"
    user.write_h5ad(path)
    model = tmp_path / "m"
    r = invoke("train", "--method", "negative_control", "--dataset", path, "--concepts", "age,celltype",
               "--dag", "age->celltype", "--out", model)
    assert r.exit_code == 0, r.output
    a = cf.generate_counterfactuals(model, "age=age_1", cells="celltype=type_0")
    assert a.uns["counterfactual"]["dataset"] == str(path)
    assert list(a.uns["counterfactual"]["descendants_not_relabelled"]) == ["celltype"]
    assert (a.obs["celltype"] == "type_0").all() and a.n_obs == 2 * int((raw.obs["celltype"] == "type_0").sum())


def test_counterfactual_figures(tmp_path) -> None:
    from causcell_bench.counterfactual import counterfactual_anndata, plot_counterfactuals, top_changed_genes
    from causcell_bench.datasets import load, preprocess
    from causcell_bench.methods.references import AdditiveShift

    adata, spec = load("synthetic", n_cells=300, n_genes=40)
    train, cells = preprocess(adata[:240], adata[240:], spec)
    m = AdditiveShift()
    m.fit(train, spec, seed=0)
    cf = counterfactual_anndata(m, cells, {"age": "age_2"})
    paths = plot_counterfactuals(cf, tmp_path / "cf", n_genes=4)
    assert [p.name for p in paths] == ["cf_umap.png", "cf_violin.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    # the genes shown are those whose mean moves most: a shifted gene beats one left alone
    genes = top_changed_genes(cf, 4)
    is_cf = (cf.obs["type"] == "counterfactual").to_numpy()
    delta = np.abs(np.asarray(cf.X[is_cf].mean(0) - cf.X[~is_cf].mean(0))).ravel()
    assert delta[list(cf.var_names).index(genes[0])] == pytest.approx(delta.max())
    with pytest.raises(BenchError, match="needs the AnnData"):
        plot_counterfactuals(cells, tmp_path / "x")

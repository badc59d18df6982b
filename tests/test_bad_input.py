"""Bad input gets one clear line, never a traceback, and changes no input file (issue #18).

Every case runs the CLI in-process (typer's CliRunner: each command's ``friendly`` error boundary is
what answers) and checks the exit code (2: input the user can fix; 1: a run that failed), that stderr
is one line naming the problem (a click usage error: a short message), that there is no traceback,
that no file that existed before changed (sha256), and that a rejected ``run`` wrote nothing. A few
cases go through the installed ``causcell-bench`` executable to prove the real entry point and
``--debug`` / ``$CAUSCELL_BENCH_DEBUG``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from causcell_bench.cli import app
from causcell_bench.grid.data import DATA_CACHE

CLI = str(Path(sys.executable).with_name("causcell-bench"))
RUN = ["run", "--methods", "positive_control", "--folds", "0", "--settings", "ID", "--no-report"]
TINY = ["--n-cells", "300", "--n-genes", "60"]


def _adata(n: int = 60, seed: int = 0) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    a = anndata.AnnData(X=rng.poisson(2.0, size=(n, 20)).astype(np.float32))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.var_names = [f"g{i}" for i in range(20)]
    a.obs["age"] = pd.Categorical(np.tile(["young", "old"], n // 2))
    a.obs["kind"] = pd.Categorical(np.repeat(["a", "b", "c"], n // 3))
    return a


def _spec(d: Path, name: str, body: str) -> None:
    (d / f"{name}.toml").write_text(body)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bad (and a few good) input files the cases point at."""
    d = tmp_path_factory.mktemp("inputs")
    good = _adata()
    good.write_h5ad(d / "good.h5ad")
    for name, change in {
        "nan": lambda a: a.X.__setitem__((0, 0), np.nan),
        "negative": lambda a: a.X.__setitem__((0, 0), -3),
        "fractional": lambda a: a.X.__setitem__((0, 0), 0.5),
        "onevalue": lambda a: a.obs.__setitem__("kind", pd.Categorical(["a"] * a.n_obs)),
        "blanklabels": lambda a: a.obs.__setitem__("kind", pd.Categorical(["a", " ", "b", ""] * (a.n_obs // 4))),
        "percell": lambda a: a.obs.__setitem__("kind", pd.Categorical([f"k{i}" for i in range(a.n_obs)])),
    }.items():
        a = _adata()
        change(a)
        a.write_h5ad(d / f"{name}.h5ad")
    a = _adata()
    a.obs_names = ["same"] * a.n_obs
    a.write_h5ad(d / "dupcells.h5ad")
    a = _adata()
    a.var_names = ["gene"] * a.n_vars
    a.write_h5ad(d / "dupgenes.h5ad")
    (d / "empty.h5ad").write_bytes(b"")
    (d / "truncated.h5ad").write_bytes((d / "good.h5ad").read_bytes()[:700])
    (d / "text.h5ad").write_text("cell,age\nc0,young\n")
    concepts = 'concepts = ["age", "kind"]\n'
    _spec(d, "cyclic", f'name = "cyclic"\nsource = "good.h5ad"\n{concepts}edges = [["age", "kind"], ["kind", "age"]]\n')
    _spec(d, "badtoml", 'name = "x"\nsource = "good.h5ad\n')
    _spec(d, "nosource", f'name = "nosource"\nsource = "missing.h5ad"\n{concepts}')
    _spec(d, "extrakey", f'name = "extrakey"\nsource = "good.h5ad"\n{concepts}colour = "red"\n')
    _spec(d, "unknowncol", 'name = "unknowncol"\nsource = "good.h5ad"\nconcepts = ["age", "tissue"]\n')
    _spec(d, "roundstr", 'name = "roundstr"\nsource = "good.h5ad"\nconcepts = ["age", "kind"]\nround_counts = "maybe"\n')
    _spec(d, "neghvg", 'name = "neghvg"\nsource = "good.h5ad"\nconcepts = ["age", "kind"]\nn_hvg = -10\n')
    _spec(d, "same1", f'name = "same"\nsource = "good.h5ad"\n{concepts}')
    _spec(d, "same2", f'name = "same"\nsource = "nan.h5ad"\n{concepts}')
    (d / "afile").write_text("not a directory\n")
    (d / "plain.txt.gz").write_text("gene\tcell1\nG1\t3\n")  # named .gz, not compressed
    (d / "empty.csv").write_bytes(b"")
    (d / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (d / "quote.csv").write_text('dataset,method,setting,metric,mean\n"synthetic,x,ID,pcc,0.5\n')
    (d / "columns.csv").write_text("a,b\n1,2\n")
    (d / "nomean.csv").write_text("dataset,method,setting,metric,sd\nsynthetic,x,ID,pcc,0.1\n")
    (d / "textmean.csv").write_text("dataset,method,setting,metric,mean\nsynthetic,x,ID,pcc,high\n")
    listcell = d / "listrun/cells/synthetic/positive_control/ID"
    listcell.mkdir(parents=True)
    (listcell / "fold0_seed0.json").write_text("[1, 2, 3]")
    (d / "norun").mkdir()
    (d / "folder.h5ad").mkdir()
    (d / "usedmodel").mkdir()
    (d / "usedmodel/notes.txt").write_text("keep me\n")
    from causcell_bench.counterfactual import train_model

    for name in ("model", "badpickle", "listmanifest", "nospec"):
        train_model("group_mean", "synthetic", d / name, device="cpu", load_kwargs={"n_cells": 300, "n_genes": 60})
    manifest = json.loads((d / "nospec/manifest.json").read_text())
    del manifest["spec"]
    (d / "nospec/manifest.json").write_text(json.dumps(manifest))
    pkl = d / "badpickle/method/state.pkl"
    pkl.write_bytes(pkl.read_bytes()[:100])
    (d / "listmanifest/manifest.json").write_text("[1, 2]")
    (d / "nomanifest").mkdir()
    # folds given as files (the authors' layout): a good pair, a test file without a concept column
    half = _adata()
    half[:30].copy().write_h5ad(d / "fold_train.h5ad")
    half[30:].copy().write_h5ad(d / "fold_test.h5ad")
    nokind = half[30:].copy()
    del nokind.obs["kind"]
    nokind.write_h5ad(d / "fold_test_nokind.h5ad")
    fold = '[[folds]]\nsetting = "ID"\nfold = {k}\ntrain = "fold_train.h5ad"\ntest = "{test}"\n'
    head = f'source = "folds:"\n{concepts}'
    _spec(d, "folds1", f'name = "folds1"\n{head}' + fold.format(k=0, test="fold_test.h5ad"))
    _spec(d, "foldsgap", f'name = "foldsgap"\n{head}' + fold.format(k=1, test="fold_test.h5ad"))
    _spec(d, "foldsnokind", f'name = "foldsnokind"\n{head}' + fold.format(k=0, test="fold_test_nokind.h5ad"))
    _spec(d, "foldsnone", f'name = "foldsnone"\n{head}')
    _spec(d, "nolayer", f'name = "nolayer"\nsource = "good.h5ad"\n{concepts}counts_layer = "umi"\n')
    a = _adata()
    a.layers["raw"] = a.X * np.float32(0.37)  # a layer of volume-normalised values, not counts
    a.write_h5ad(d / "fraclayer.h5ad")
    _spec(d, "fraclayer", f'name = "fraclayer"\nsource = "fraclayer.h5ad"\n{concepts}counts_layer = "raw"\n')
    a = _adata()  # the synthetic model's concept columns, other genes
    a.obs["domain"], a.obs["celltype"] = a.obs["kind"], a.obs["kind"]
    a.obs["age"] = pd.Categorical(np.tile(["age_0", "age_1"], a.n_obs // 2))
    a.write_h5ad(d / "othergenes.h5ad")
    from causcell_bench.datasets import simulate

    a = simulate(n_cells=40, n_genes=60, seed=0)  # the model's genes and concepts, counts not integers
    a.X = a.layers.pop("counts").toarray().astype(np.float32) * np.float32(0.37)
    a.obs = a.obs[["age", "domain", "celltype"]]
    a.write_h5ad(d / "fracinput.h5ad")
    # a finished run, then copies with one cell of another version / with a renamed metric
    done = d / "donerun"
    r = CliRunner().invoke(app, [*RUN, *TINY, "--out", str(done)])
    assert r.exit_code == 0, r.stderr
    for name, change in (("oldversion", lambda rec: rec["versions"].update({"causcell-bench": "0.0.9"})),
                         ("renamedmetric", lambda rec: rec["metrics"].update({"pcc_v2": rec["metrics"].pop("pcc")}))):
        shutil.copytree(done, d / name)
        cell = next((d / name / "cells").rglob("*.json"))
        rec = json.loads(cell.read_text())
        change(rec)
        cell.write_text(json.dumps(rec))
    a = _adata()
    a.X[:6] = 0  # six cells with no counts at all
    a.write_h5ad(d / "zerocells.h5ad")
    (d / "foreignconfig").mkdir()  # a config.json, but not a run's
    (d / "foreignconfig/config.json").write_text('{"colour": "red"}\n')
    return d


def _can_write(path: str) -> bool:
    try:
        os.mkdir(path)
    except OSError:
        return False
    os.rmdir(path)
    return True


# (id, arguments with {d} = inputs folder and {o} = a fresh output folder, exit code, text in the message)
CASES: list[tuple[str, list[str], int, str]] = [
    # data
    ("nan-counts", [*RUN, "--dataset", "{d}/nan.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "NaN"),
    ("negative-counts", [*RUN, "--dataset", "{d}/negative.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "negative"),
    ("non-integer-counts", [*RUN, "--dataset", "{d}/fractional.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "integer"),
    ("duplicate-cells", [*RUN, "--dataset", "{d}/dupcells.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "duplicated cell"),
    ("duplicate-genes", [*RUN, "--dataset", "{d}/dupgenes.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "duplicated gene"),
    ("empty-h5ad", [*RUN, "--dataset", "{d}/empty.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "cannot read"),
    ("truncated-h5ad", [*RUN, "--dataset", "{d}/truncated.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "cannot read"),
    ("text-as-h5ad", [*RUN, "--dataset", "{d}/text.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "cannot read"),
    ("one-value-concept", [*RUN, "--dataset", "{d}/onevalue.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "single value"),
    ("blank-labels", [*RUN, "--dataset", "{d}/blanklabels.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2,
     "30 empty or blank labels"),
    ("a-value-per-cell", [*RUN, "--dataset", "{d}/percell.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2,
     "60 values for 60 cells"),
    ("n-genes-of-a-real-dataset", [*RUN, "--dataset", "pbmc68k", "--n-genes", "100", "--out", "{o}/r"], 2,
     "--n-genes sizes the synthetic simulator only; pbmc68k has its own genes"),
    ("too-few-genes", [*RUN, "--n-cells", "300", "--n-genes", "5", "--out", "{o}/r"], 2, "need at least 10"),
    ("cyclic-dag-option", [*RUN, "--dataset", "{d}/good.h5ad", "--concepts", "age,kind", "--dag", "age->kind,kind->age",
                           "--out", "{o}/r"], 2, "cycle"),
    ("cyclic-dag-spec", [*RUN, "--dataset", "{d}/cyclic.toml", "--out", "{o}/r"], 2, "cycle"),
    ("spec-not-toml", [*RUN, "--dataset", "{d}/badtoml.toml", "--out", "{o}/r"], 2, "not valid TOML"),
    ("spec-source-missing", [*RUN, "--dataset", "{d}/nosource.toml", "--out", "{o}/r"], 2, "does not exist"),
    ("spec-unknown-key", [*RUN, "--dataset", "{d}/extrakey.toml", "--out", "{o}/r"], 2, "colour"),
    ("spec-unknown-column", [*RUN, "--dataset", "{d}/unknowncol.toml", "--out", "{o}/r"], 2, "tissue"),
    ("two-specs-one-name", [*RUN, "--dataset", "{d}/same1.toml,{d}/same2.toml", "--out", "{o}/r"], 2, "both named"),
    ("bare-h5ad-no-concepts", [*RUN, "--dataset", "{d}/good.h5ad", "--out", "{o}/r"], 2, "--concepts"),
    ("missing-h5ad", [*RUN, "--dataset", "{d}/nope.h5ad", "--concepts", "age,kind", "--out", "{o}/r"], 2, "does not exist"),
    ("unknown-dataset", [*RUN, "--dataset", "nope_data", "--out", "{o}/r"], 2, "unknown dataset"),
    ("malformed-dag", [*RUN, "--dataset", "{d}/good.h5ad", "--concepts", "age,kind", "--dag", "age-kind",
                       "--out", "{o}/r"], 2, "Parent->Child"),
    # run options, all checked before data is loaded
    ("folds-out-of-range", [*RUN, "--folds", "7", *TINY, "--out", "{o}/r"], 2, "0..4"),
    ("folds-not-a-number", [*RUN, "--folds", "a", *TINY, "--out", "{o}/r"], 2, "not a whole number"),
    ("seeds-not-a-number", [*RUN, "--seeds", "x", *TINY, "--out", "{o}/r"], 2, "not a whole number"),
    ("seeds-negative", [*RUN, "--seeds", "-1", *TINY, "--out", "{o}/r"], 2, "out of range"),
    ("jobs-zero", [*RUN, "--jobs", "0", *TINY, "--out", "{o}/r"], 2, "--jobs 0"),
    ("jobs-not-a-number", [*RUN, "--jobs", "abc", *TINY, "--out", "{o}/r"], 2, "Invalid value"),
    ("cell-parts-negative", [*RUN, "--cell-parts", "-1", *TINY, "--out", "{o}/r"], 2, "--cell-parts -1"),
    ("truth-samples-zero", [*RUN, "--truth-samples", "0", *TINY, "--out", "{o}/r"], 2, "--truth-samples 0"),
    ("n-folds-one", [*RUN, "--n-folds", "1", *TINY, "--out", "{o}/r"], 2, "--n-folds 1"),
    ("n-cells-zero", [*RUN, "--n-cells", "0", "--out", "{o}/r"], 2, "--n-cells 0"),
    ("threads-zero", [*RUN, "--threads", "0", *TINY, "--out", "{o}/r"], 2, "--threads 0"),
    ("unknown-setting", [*RUN, "--settings", "XX", *TINY, "--out", "{o}/r"], 2, "choose ID, OOD"),
    ("unknown-device", [*RUN, "--device", "gpu", *TINY, "--out", "{o}/r"], 2, "choose auto, cpu or cuda"),
    ("unknown-preset", [*RUN, "--preset", "fast", *TINY, "--out", "{o}/r"], 2, "fast"),
    ("unknown-probe", [*RUN, "--probe", "svm", *TINY, "--out", "{o}/r"], 2, "probe"),
    ("unknown-method", ["run", "--methods", "CausCel", *TINY, "--out", "{o}/r"], 2, "Did you mean CausCell"),
    ("unknown-executor", [*RUN, "--executor", "slurm", *TINY, "--out", "{o}/r"], 2, "unknown executor"),
    ("missing-data-dir", [*RUN, "--data-dir", "{d}/nowhere", *TINY, "--out", "{o}/r"], 2, "--data-dir"),
    ("malformed-holdout", [*RUN, "--holdout", "age", *TINY, "--out", "{o}/r"], 2, "--holdout"),
    ("holdout-unknown-value", [*RUN, "--holdout", "age=age_9", *TINY, "--out", "{o}/r"], 2, "no cell has that value"),
    ("holdout-unknown-concept", [*RUN, "--holdout", "tissue=liver", *TINY, "--out", "{o}/r"], 2, "not concepts"),
    ("cf-concept-unknown", [*RUN, "--cf-concept", "tissue", *TINY, "--out", "{o}/r"], 2, "not a concept"),
    ("param-bad-type", ["run", "--methods", "scVI", "--param", "scVI.n_latent=abc", *TINY, "--out", "{o}/r"], 2,
     "takes an integer"),
    ("param-unknown-method", [*RUN, "--param", "scVl.n_latent=5", *TINY, "--out", "{o}/r"], 2, "Did you mean scVI"),
    ("param-method-not-in-run", [*RUN, "--param", "CausCell.n_steps=5", *TINY, "--out", "{o}/r"], 2,
     "not among this run's methods"),
    ("param-unknown-name", ["run", "--methods", "scVI", "--param", "scVI.n_latnt=5", *TINY, "--out", "{o}/r"], 2,
     "Did you mean n_latent"),
    ("param-malformed", [*RUN, "--param", "n_latent", *TINY, "--out", "{o}/r"], 2, "Method.name=value"),
    ("param-out-of-range", ["run", "--methods", "scVI", "--param", "scVI.n_latent=-5", *TINY, "--out", "{o}/r"], 2,
     "n_latent must be >= 1"),
    ("param-fraction-out-of-range", ["run", "--methods", "scVI", "--param", "scVI.val_fraction=1.5", *TINY,
                                     "--out", "{o}/r"], 2, "val_fraction must be in [0, 1)"),
    # pre-flight: the splits of every requested setting are made before any cell runs
    ("n-folds-beyond-combinations", [*RUN[:5], "--settings", "OOD", "--no-report", "--n-folds", "50", *TINY,
                                     "--out", "{o}/r"], 2, "fewer than the 50 folds"),
    ("n-folds-beyond-cells", [*RUN, "--n-folds", "400", *TINY, "--out", "{o}/r"], 2, "300 cells, fewer than the 400 folds"),
    ("cell-parts-beyond-test-cells", [*RUN, "--cell-parts", "50", *TINY, "--out", "{o}/r"], 2,
     "--cell-parts 50: the ID test cells"),
    ("out-is-a-file", [*RUN, *TINY, "--out", "{d}/afile"], 2, "is a file"),
    ("out-parent-is-a-file", [*RUN, *TINY, "--out", "{d}/afile/run"], 2, "is a file"),
    ("out-holds-other-files", [*RUN, *TINY, "--out", "{d}/usedmodel"], 2, "holds other files (notes.txt)"),
    ("out-holds-a-foreign-config", [*RUN, *TINY, "--out", "{d}/foreignconfig"], 2, "--force-out"),
    ("holdout-unquoted-comma", [*RUN, "--holdout", "age=age 1, 2", *TINY, "--out", "{o}/r"], 2,
     "a value holding a comma goes in double quotes"),
    ("holdout-unclosed-quote", [*RUN, "--holdout", 'age="age_1', *TINY, "--out", "{o}/r"], 2, "is not closed"),
    # train
    ("train-out-is-a-file", ["train", "--method", "group_mean", *TINY, "--out", "{d}/afile"], 2, "is a file"),
    ("train-out-not-empty", ["train", "--method", "group_mean", *TINY, "--out", "{d}/usedmodel"], 2, "--overwrite"),
    ("train-over-a-model", ["train", "--method", "group_mean", *TINY, "--out", "{d}/model"], 2, "--overwrite"),
    ("train-unknown-method", ["train", "--method", "nope", *TINY, "--out", "{o}/m"], 2, "unknown method"),
    ("train-param-bad-type", ["train", "--method", "CausCell", "--param", "n_steps=abc", *TINY, "--out", "{o}/m"], 2,
     "takes an integer"),
    ("train-param-unknown", ["train", "--method", "CausCell", "--param", "n_step=5", *TINY, "--out", "{o}/m"], 2,
     "Did you mean n_steps"),
    ("train-fold-out-of-range", ["train", "--method", "group_mean", "--fold", "9", *TINY, "--out", "{o}/m"], 2, "0..4"),
    ("train-unknown-setting", ["train", "--method", "group_mean", "--setting", "XX", *TINY, "--out", "{o}/m"], 2,
     "ID or OOD"),
    # check
    ("reference-empty", ["check", "{d}/listrun", "--reference", "{d}/empty.csv"], 2, "is empty"),
    ("reference-binary", ["check", "{d}/listrun", "--reference", "{d}/binary.csv"], 2, "cannot read reference"),
    ("reference-unterminated-quote", ["check", "{d}/listrun", "--reference", "{d}/quote.csv"], 2, "cannot read reference"),
    ("reference-wrong-columns", ["check", "{d}/listrun", "--reference", "{d}/columns.csv"], 2, "lacks the column(s)"),
    ("reference-no-mean", ["check", "{d}/listrun", "--reference", "{d}/nomean.csv"], 2, "lacks the column(s) mean"),
    ("reference-text-mean", ["check", "{d}/listrun", "--reference", "{d}/textmean.csv"], 2, "not numbers"),
    ("reference-missing", ["check", "{d}/listrun", "--reference", "{d}/nope.csv"], 2, "does not exist"),
    ("check-validity-of-a-file", ["check-validity", "{d}/afile"], 2, "is a file, not a run directory"),
    ("check-validity-missing-run", ["check-validity", "{d}/norun/gone"], 2, "does not exist; pass the --out directory"),
    ("report-of-a-file", ["report", "{d}/afile"], 2, "holds no results (no cells/ folder)"),
    ("holdout-a-whole-value", [*RUN, "--holdout", "age=age_1", *TINY, "--out", "{o}/r"], 2,
     "leaves no training cell with age"),
    ("download-unknown-dataset", ["download", "MERFISH", "--data-dir", "{o}/data", "--url", "http://127.0.0.1:9/x"], 2,
     "is not one of the paper's datasets"),
    ("download-unreachable", ["download", "MERFISH_Brain", "--data-dir", "{o}/data", "--url", "http://127.0.0.1:9/x"], 2,
     "cannot reach the server"),
    ("prepare-gz-not-gzip", ["prepare", "ICI_response", "--counts", "{d}/plain.txt.gz", "--metadata",
                             "{d}/plain.txt.gz", "--out", "{o}/ici.h5ad"], 2, "is not gzip-compressed"),
    ("spec-round-counts-not-bool", [*RUN, "--dataset", "{d}/roundstr.toml", "--out", "{o}/r"], 2, "round_counts"),
    ("spec-counts-layer-missing", [*RUN, "--dataset", "{d}/nolayer.toml", "--out", "{o}/r"], 2,
     "counts_layer = 'umi' names a layer the data does not have (layers: [])"),
    ("spec-counts-layer-not-counts", [*RUN, "--dataset", "{d}/fraclayer.toml", "--out", "{o}/r"], 2,
     "set round_counts = true in the dataset's TOML spec"),
    ("spec-n-hvg-negative", [*RUN, "--dataset", "{d}/neghvg.toml", "--out", "{o}/r"], 2, "n_hvg"),
    ("fold-files-n-folds", [*RUN, "--dataset", "{d}/folds1.toml", "--out", "{o}/r"], 2,
     "gives 1 ID folds as files; pass --n-folds 1"),
    ("fold-files-numbered-from-one", [*RUN, "--dataset", "{d}/foldsgap.toml", "--out", "{o}/r"], 2,
     "the ID folds are numbered [1]"),
    ("fold-files-without-a-concept", [*RUN, "--dataset", "{d}/foldsnokind.toml", "--out", "{o}/r"], 2,
     "fold_test_nokind.h5ad lacks the concept column(s) ['kind']"),
    ("fold-files-none-listed", [*RUN, "--dataset", "{d}/foldsnone.toml", "--out", "{o}/r"], 2,
     "source = 'folds:' needs a folds list"),
    ("fold-files-n-cells", [*RUN, "--dataset", "{d}/folds1.toml", "--n-cells", "40", "--out", "{o}/r"], 2,
     "cannot subsample"),
    # report
    ("report-no-cells", ["report", "{d}/norun"], 2, "no cells/ folder"),
    ("report-strict-cell-of-another-version", ["report", "{d}/oldversion", "--strict", "--out", "{o}/rep"], 1,
     "1 cell file(s) of"),
    ("report-strict-renamed-metric", ["report", "{d}/renamedmetric", "--strict", "--out", "{o}/rep"], 1,
     "hold metrics this version does not know"),
    ("report-strict-list-cell", ["report", "{d}/listrun", "--strict", "--out", "{o}/rep"], 1, "unreadable or stale"),
    ("report-out-is-a-file", ["report", "{d}/listrun", "--out", "{d}/afile"], 2, "is a file"),
    # counterfactual
    ("cf-truncated-pickle", ["counterfactual", "{d}/badpickle", "--do", "age=age_1", "--out", "{o}/cf.h5ad"], 2,
     "truncated"),
    ("cf-no-manifest", ["counterfactual", "{d}/nomanifest", "--do", "age=age_1", "--out", "{o}/cf.h5ad"], 2,
     "not a trained model directory"),
    ("cf-manifest-without-spec", ["counterfactual", "{d}/nospec", "--do", "age=age_1", "--out", "{o}/cf.h5ad"], 2,
     "lacks spec"),
    ("experiment-preset-test", ["experiment", "causal_consistency", "--preset", "test", "--out", "{o}/e"], 2,
     "has presets quick, paper"),
    ("cf-manifest-is-a-list", ["counterfactual", "{d}/listmanifest", "--do", "age=age_1", "--out", "{o}/cf.h5ad"], 2,
     "not a causcell-bench model manifest"),
    ("cf-malformed-do", ["counterfactual", "{d}/model", "--do", "age", "--out", "{o}/cf.h5ad"], 2, "concept=value"),
    ("cf-do-unclosed-quote", ["counterfactual", "{d}/model", "--do", 'age="age_1', "--out", "{o}/cf.h5ad"], 2,
     "is not closed"),
    ("cf-cells-unclosed-quote", ["counterfactual", "{d}/model", "--do", "age=age_1", "--cells", 'age=age_0,"age_1',
                                 "--out", "{o}/cf.h5ad"], 2, "is not closed"),
    ("cf-input-without-the-models-concepts", ["counterfactual", "{d}/model", "--do", "age=age_1", "--input",
                                             "{d}/good.h5ad", "--out", "{o}/cf.h5ad"], 2,
     "lack the column 'domain', one of the concepts the model was trained on"),
    ("cf-input-other-genes", ["counterfactual", "{d}/model", "--do", "age=age_1", "--input", "{d}/othergenes.h5ad",
                              "--out", "{o}/cf.h5ad"], 2, "60 of the model's 60 genes are missing from these cells"),
    ("cf-input-not-counts", ["counterfactual", "{d}/model", "--do", "age=age_1", "--input", "{d}/fracinput.h5ad",
                             "--out", "{o}/cf.h5ad"], 2, "fracinput.h5ad: the counts are not integer-valued (e.g. [2.22, 4.81, 1.85]), and the model reads raw counts"),
    ("cf-do-unquoted-comma", ["counterfactual", "{d}/model", "--do", "age=age 1, 2", "--out", "{o}/cf.h5ad"], 2,
     "a value holding a comma goes in double quotes"),
    ("cf-unknown-concept", ["counterfactual", "{d}/model", "--do", "tissue=x", "--out", "{o}/cf.h5ad"], 2,
     "cannot intervene on 'tissue'"),
    ("cf-out-not-h5ad", ["counterfactual", "{d}/model", "--do", "age=age_1", "--out", "{o}/cf.csv"], 2, ".h5ad"),
    ("cf-out-is-a-directory", ["counterfactual", "{d}/model", "--do", "age=age_1", "--out", "{d}/folder.h5ad"], 2,
     "is a directory"),
    # experiment
    ("experiment-bad-option-type", ["experiment", "small_sample_trends", "--out", "{o}/x", "--set", "n_per_age=abc"], 2,
     "n_per_age"),
    ("experiment-unknown-option", ["experiment", "small_sample_trends", "--out", "{o}/x", "--set", "n_per_ag=3"], 2,
     "Did you mean n_per_age"),
    ("experiment-set-unknown-value", ["experiment", "causal_consistency", "--out", "{o}/x", "--set", "values=age_9"],
     2, "values ['age_9'] are not values of age"),
    ("experiment-unknown", ["experiment", "small_trends", "--out", "{o}/x"], 2, "unknown experiment"),
    ("experiment-out-holds-other-files", ["experiment", "small_sample_trends", "--out", "{d}/usedmodel"], 2,
     "holds other files (notes.txt) and no experiment's results.json"),
    ("experiment-out-foreign-results", ["experiment", "small_sample_trends", "--out", "{d}/foreignconfig"], 2,
     "--force-out"),
    ("experiment-param-not-in-run", ["experiment", "small_sample_trends", "--out", "{o}/x", "--param", "scVI.n_latent=3"],
     2, "not among this run's methods"),
    ("list-unknown", ["list", "things"], 2, "cannot list"),
    ("list-unknown-format", ["list", "metrics", "--format", "xml"], 2, "--format 'xml': choose table, csv or json"),
    ("list-methods-unknown-format", ["list", "methods", "--format", "yaml"], 2, "--format 'yaml': choose table"),
    ("out-at-the-datasets-folder", [*RUN, *TINY, "--out", "{d}"], 2, "holds other files"),
    ("experiment-refused-leaves-no-folder", ["experiment", "causal_consistency", "--out", "{o}/fresh", "--device",
                                            "cpu", "--set", "concept=tissue"], 2, "not a concept"),
]
if not torch.cuda.is_available():
    CASES.append(("cuda-without-gpu", [*RUN, "--device", "cuda", *TINY, "--out", "{o}/r"], 2, "sees no CUDA GPU"))
if not _can_write("/sys/causcell-bench-probe"):
    CASES.append(("out-not-writable", [*RUN, *TINY, "--out", "/sys/causcell-bench-run"], 2, "cannot write"))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("args", "code", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(inputs: Path, tmp_path: Path, args: list[str], code: int, text: str) -> None:
    (tmp_path / "out").mkdir()
    argv = [a.replace("{d}", str(inputs)).replace("{o}", str(tmp_path / "out")) for a in args]
    before = _hashes(inputs)
    DATA_CACHE.clear()
    r = CliRunner().invoke(app, argv)
    after = _hashes(inputs)
    assert r.exit_code == code, (r.exit_code, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    if "Invalid value" in text:  # click's own usage error: short, not ours to reformat
        assert len(lines) <= 8
    else:
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and text in errors[0], r.stderr
        assert all(not line.startswith(" ") for line in lines), r.stderr  # nothing wrapped onto more lines
    assert {k: v for k, v in after.items() if k in before} == before  # no input file changed
    if argv[0] == "run":
        assert not list((tmp_path / "out").rglob("config.json"))  # a rejected run wrote nothing
    if argv[0] == "experiment" and "{o}" in " ".join(args):
        assert not list((tmp_path / "out").iterdir())  # nor a refused experiment, not even an empty folder


def test_full_disk_and_read_only_while_writing_the_report(inputs: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import causcell_bench.leaderboard as lb

    for err, code, text in ((errno.ENOSPC, 1, "no space left on the device"), (errno.EROFS, 2, "cannot write")):
        def full(*a, _err=err, **k):
            raise OSError(_err, os.strerror(_err), str(tmp_path / "report/leaderboard.md"))

        monkeypatch.setattr(lb, "build_report", full)
        r = CliRunner().invoke(app, ["report", str(inputs / "listrun"), "--out", str(tmp_path / "report")])
        assert r.exit_code == code and r.stderr.count("\n") == 1 and text in r.stderr, r.stderr
        assert "leaderboard.md" in r.stderr


def test_an_unexpected_error_is_one_line_pointing_at_debug(inputs: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import causcell_bench.leaderboard as lb

    monkeypatch.setattr(lb, "build_report", lambda *a, **k: 1 / 0)
    r = CliRunner().invoke(app, ["report", str(inputs / "listrun"), "--out", str(tmp_path / "report")])
    assert r.exit_code == 1 and "ZeroDivisionError" in r.stderr and "--debug" in r.stderr
    assert r.stderr.count("\n") == 1


def test_the_installed_command_and_debug(inputs: Path, tmp_path: Path) -> None:
    """The real entry point: one line and exit 2; a traceback only with --debug or $CAUSCELL_BENCH_DEBUG."""
    env = {k: v for k, v in os.environ.items() if k != "CAUSCELL_BENCH_DEBUG"}
    args = ["run", "--folds", "a", "--out", str(tmp_path / "r")]
    plain = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run([CLI, "--debug", *args], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "BenchError" in debug.stderr
    by_env = subprocess.run([CLI, *args], capture_output=True, text=True, env={**env, "CAUSCELL_BENCH_DEBUG": "1"},
                            timeout=120, check=False)
    assert by_env.returncode == 1 and "Traceback" in by_env.stderr
    cf = subprocess.run([CLI, "counterfactual", str(inputs / "badpickle"), "--do", "age=age_1", "--out",
                         str(tmp_path / "cf.h5ad")], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert cf.returncode == 2 and cf.stderr.count("\n") == 1 and "truncated" in cf.stderr, cf.stderr


# --- issue 31: --out at a folder of the user's, the heatmap of one method, lists in a pipe, quoting --------------
def test_run_out_at_a_folder_that_is_not_a_run_is_refused_unless_forced(tmp_path: Path) -> None:
    folder = tmp_path / "my_data"
    folder.mkdir()
    (folder / "counts.csv").write_text("keep me\n")
    args = [*RUN, *TINY, "--out", str(folder)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"--out {folder} holds other files (counts.csv)" in r.stderr and "pass --force-out" in r.stderr
    assert [p.name for p in folder.iterdir()] == ["counts.csv"]  # nothing written among the user's files
    r = CliRunner().invoke(app, [*args, "--force-out"])
    assert r.exit_code == 0, r.stderr
    assert (folder / "config.json").is_file() and (folder / "counts.csv").read_text() == "keep me\n"
    r = CliRunner().invoke(app, args)  # now a run directory: resumed without the flag
    assert r.exit_code == 0 and "1 skipped" in r.stderr, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    from causcell_bench.store import check_run_out

    check_run_out(empty, flag="--out", force="pass --force-out")  # an empty folder is fine


def test_benchmark_refuses_an_out_folder_that_is_not_a_run(tmp_path: Path) -> None:
    import causcell_bench as cb
    from causcell_bench.errors import BenchError

    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(BenchError, match=r"out= .* holds other files \(notes.txt\).*pass force_out=True"):
        cb.benchmark(_adata(), concepts=["age", "kind"], methods=["positive_control"], out=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_run_with_one_method_draws_its_heatmap_and_a_failed_one_is_named(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # one method whose overall score is 1: funkyheatmappy 0.7 failed with KeyError 'x' (every score >= 0.8)
    out = tmp_path / "one"
    r = CliRunner().invoke(app, [*[a for a in RUN if a != "--no-report"], *TINY, "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    report = out / "report"
    assert (report / "heatmap_synthetic.png").is_file() and (report / "heatmap_synthetic.svg").is_file()
    assert not (report / "heatmap_error.txt").exists() and "warning" not in r.stderr, r.stderr
    # any other failure of the figure: the tables are written, and the terminal says so in one line
    import causcell_bench.leaderboard.report as report_module

    def broken(*a, **k):
        raise KeyError("x")

    monkeypatch.setattr(report_module, "heatmap", broken)
    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0 and (report / "leaderboard.md").is_file()
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: no heatmap was drawn (KeyError: 'x', kept in {report / 'heatmap_error.txt'}); "
                        "the tables and leaderboard are complete"], r.stderr
    monkeypatch.undo()
    r = CliRunner().invoke(app, ["report", str(out)])  # drawn again: the old error file goes
    assert r.exit_code == 0 and not (report / "heatmap_error.txt").exists()


def test_lists_are_whole_outside_a_terminal_and_readable_as_csv_and_json() -> None:
    import csv
    import io
    import json

    from causcell_bench.metrics import list_metrics
    from causcell_bench.registry import method_names

    names = [m.name for m in list_metrics()]
    for what in ("methods", "datasets", "metrics"):
        r = CliRunner().invoke(app, ["list", what])  # CliRunner's stdout is not a terminal
        assert r.exit_code == 0 and "…" not in r.stdout, r.stdout
    table = CliRunner().invoke(app, ["list", "metrics"]).stdout
    cells = {c.strip() for line in table.splitlines() for c in line.split("│")}
    assert set(names) <= cells, set(names) - cells  # every name whole, in a cell of its own row
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(app, ["list", "metrics", "--format", "csv"]).stdout)))
    assert [r["metric"] for r in rows] == names and {r["better"] for r in rows} == {"higher", "lower"}
    methods = json.loads(CliRunner().invoke(app, ["list", "methods", "--format", "json", "--verbose"]).stdout)
    assert [m["method"] for m in methods] == method_names()
    causcell = next(m for m in methods if m["method"] == "CausCell")
    assert causcell["counterfactual"] is True and "n_steps" in causcell["presets"]["quick"]
    datasets = json.loads(CliRunner().invoke(app, ["list", "datasets", "--format", "json"]).stdout)
    assert {"synthetic", "ICI_response"} <= {d["dataset"] for d in datasets}


def test_list_metrics_in_a_real_pipe_finds_exclusivity_dag() -> None:
    out = subprocess.run(f"'{CLI}' list metrics | grep exclusivity_dag", shell=True, capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "COLUMNS": "60"})
    assert out.returncode == 0, out.stderr
    assert any(line.split("│")[1].strip() == "exclusivity_dag" for line in out.stdout.splitlines()), out.stdout


def test_labels_with_commas_and_equals_signs_can_be_quoted(tmp_path: Path) -> None:
    a = _adata()
    a.obs["kind"] = pd.Categorical(np.repeat(["T, CD4", "B=1", "NK"], a.n_obs // 3))
    a.write_h5ad(tmp_path / "quoted.h5ad")
    model, cf = tmp_path / "model", tmp_path / "cf.h5ad"
    r = CliRunner().invoke(app, ["train", "--method", "group_mean", "--dataset", str(tmp_path / "quoted.h5ad"),
                                 "--concepts", "age,kind", "--dag", "", "--device", "cpu", "--out", str(model)])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(app, ["counterfactual", str(model), "--do", 'kind="T, CD4"', "--cells", 'kind="B=1",NK',
                                 "--out", str(cf)])
    assert r.exit_code == 0, r.stderr
    made = anndata.read_h5ad(cf)
    assert made.uns["counterfactual"]["intervention"] == {"kind": "T, CD4"}
    assert made.uns["counterfactual"]["do"] == 'kind="T, CD4"'


def test_check_validity_says_when_nothing_was_comparable(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, [*RUN, *TINY, "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(app, ["check-validity", str(tmp_path / "r")])
    assert r.exit_code == 0 and "nothing was comparable: bracketing needs both controls" in r.stdout
    assert "no trivial reference ran" in r.stdout


def test_report_names_cells_of_another_version_unknown_metrics_and_text_values(tmp_path: Path) -> None:
    run = tmp_path / "r"
    r = CliRunner().invoke(app, [*RUN, *TINY, "--out", str(run)])
    assert r.exit_code == 0, r.stderr
    cell = next((run / "cells").rglob("*.json"))
    original = json.loads(cell.read_text())
    cases = [
        ({**original, "metrics": {**original["metrics"], "pcc_v2": 0.5}}, "has pcc_v2, which this version does not know"),
        ({**original, "metrics": {**original["metrics"], "pcc": "0.5"}}, "not numbers (pcc='0.5')"),
        ({**original, "versions": {**original["versions"], "causcell-bench": "0.0.9"}}, "written by causcell-bench 0.0.9"),
    ]
    for rec, text in cases:
        cell.write_text(json.dumps(rec))
        r = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
        assert r.exit_code == 0 and text in " ".join(r.stderr.split()), r.stderr
        r = CliRunner().invoke(app, ["report", str(run), "--strict", "--out", str(tmp_path / "rep")])
        assert r.exit_code == 1 and "left out" in r.stderr, r.stderr
    cell.write_text(json.dumps(cases[0][0]))  # an unknown metric costs only itself: pcc stays in the tables
    CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert "pcc" in set(summary["metric"]) and "pcc_v2" not in set(summary["metric"])


def test_check_on_the_command_line_says_when_the_reference_is_not_this_runs(tmp_path: Path) -> None:
    """The audit: against another dataset's reference, check printed the cause and then "1 regression(s)",
    and wrapped the line in a pipe. Now the cause is one whole line and the tail says the reference does not
    fit; a real difference is counted as values."""
    run = tmp_path / "r"
    r = CliRunner().invoke(app, [*RUN, *TINY, "--out", str(run)])
    assert r.exit_code == 0, r.stderr
    CliRunner().invoke(app, ["report", str(run)])
    summary = pd.read_csv(run / "report" / "summary.csv")
    other = summary.assign(dataset="ICI_response")
    other.to_csv(tmp_path / "other.csv", index=False)
    r = CliRunner().invoke(app, ["check", str(run), "--reference", str(tmp_path / "other.csv")])
    lines = r.stderr.splitlines()
    assert r.exit_code == 1 and len(lines) == 2, r.stderr
    assert lines[0].startswith("the reference is for dataset(s) ICI_response and the run for synthetic")
    assert "does not fit this run" in lines[1] and "regression" not in r.stderr
    shifted = summary.assign(mean=summary["mean"] + 10.0)
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    r = CliRunner().invoke(app, ["check", str(run), "--reference", str(tmp_path / "shifted.csv")])
    lines = r.stderr.splitlines()
    n = sum(line.startswith(("regressed", "changed", "missing")) for line in lines)
    assert r.exit_code == 1 and n > 20 and lines[-1].startswith(f"{n} value(s) differ from"), r.stderr[-500:]


def test_a_notice_about_the_data_is_shown_once(inputs: Path, tmp_path: Path) -> None:
    """The data are checked when loaded and again against the run's folds; the user reads the notice once."""
    DATA_CACHE.clear()
    r = CliRunner().invoke(app, [*RUN, "--dataset", str(inputs / "zerocells.h5ad"), "--concepts", "age,kind",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.stderr
    notices = [line for line in r.stderr.splitlines() if "have no counts at all" in line]
    assert len(notices) == 1 and notices[0].startswith("warning: zerocells: 6 cell(s)"), r.stderr


def test_the_oversubscription_warning_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAUSCELL_BENCH_THREADS", raising=False)  # the suite's one thread would override --threads
    r = CliRunner().invoke(app, [*RUN, "--jobs", "2", "--threads", "64", "--dataset", "nosuchdataset",
                                 "--out", str(tmp_path / "r")])
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and warning[0].endswith("lower --jobs or --threads"), r.stderr
    assert r.exit_code == 2 and "nosuchdataset" in r.stderr

"""Our DES, PDS and pseudobulk MAE (metrics/perturbation.py) agree with cell-eval's own numbers on the
same small inputs. Skipped without cell-eval (the optional extra: pip install 'causcell-bench[celleval]')."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causcell_bench.metrics import des, discrimination, pseudobulk_mae

cell_eval = pytest.importorskip("cell_eval")
ad = pytest.importorskip("anndata")

N_GENES = 60
PERTS = ["p0", "p1", "p2", "p3"]


def _cells(rng: np.random.Generator, n: int, scale: np.ndarray) -> np.ndarray:
    """log1p of Poisson counts: what cell-eval expects (and the project's preprocessing gives)."""
    return np.log1p(rng.poisson(scale, size=(n, scale.size))).astype(np.float64)


def _data() -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.5, N_GENES)
    control = _cells(rng, 120, base)
    real, pred, folds = {}, {}, []
    for i, p in enumerate(PERTS):
        fold = np.ones(N_GENES)
        fold[rng.choice(N_GENES, 12, replace=False)] = rng.choice([0.2, 4.0], 12)
        folds.append(fold)
        real[p] = _cells(rng, 80, base * fold)
        # predictions of varying quality: p0 right, p1 and p2 with part of the effect on the wrong genes,
        # p3 given p2's effect (so that it is nearer another population: PDS < 1)
        wrong = fold.copy() if i < 3 else folds[2].copy()
        wrong[rng.choice(N_GENES, 3 * i, replace=False)] = rng.choice([0.3, 3.0], 3 * i)
        pred[p] = _cells(rng, 60, base * wrong)
    return control, real, pred


def _adata(control: np.ndarray, groups: dict[str, np.ndarray]) -> ad.AnnData:
    x = np.vstack([control, *groups.values()])
    labels = ["control"] * control.shape[0] + [p for p, g in groups.items() for _ in range(g.shape[0])]
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(x.shape[0])])
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))


def test_des_pds_mae_agree_with_cell_eval(tmp_path) -> None:
    control, real, pred = _data()
    evaluator = cell_eval.MetricsEvaluator(
        adata_pred=_adata(control, pred), adata_real=_adata(control, real), control_pert="control",
        pert_col="perturbation", num_threads=1, outdir=str(tmp_path))
    results, _ = evaluator.compute(profile="vcc", write_csv=False)
    theirs = results.to_pandas().set_index("perturbation")

    # cell-eval reads float32 AnnData: so do we, to compare like with like
    both = {**real, **{f"pred_{p}": pred[p] for p in pred}}
    x32 = {k: v.astype(np.float32).astype(np.float64) for k, v in both.items()}
    c32 = control.astype(np.float32).astype(np.float64)
    ours_des = {p: des(x32[f"pred_{p}"], x32[p], c32) for p in PERTS}
    ours_mae = {p: pseudobulk_mae(x32[f"pred_{p}"], x32[p]) for p in PERTS}
    cm = c32.mean(axis=0)
    pds = discrimination(np.stack([x32[f"pred_{p}"].mean(0) - cm for p in PERTS]),
                         np.stack([x32[p].mean(0) - cm for p in PERTS]))
    ours_pds = dict(zip(PERTS, pds))

    for p in PERTS:
        assert ours_des[p] == pytest.approx(theirs.loc[p, "overlap_at_N"], abs=1e-9), p
        assert ours_pds[p] == pytest.approx(theirs.loc[p, "discrimination_score_l1"], abs=1e-9), p
        assert ours_mae[p] == pytest.approx(theirs.loc[p, "mae"], rel=1e-4), p
    # the inputs separate the predictions: agreement is not on a constant
    assert len({round(v, 6) for v in ours_des.values()}) > 1 and min(ours_des.values()) < 1.0
    assert min(ours_pds.values()) < 1.0

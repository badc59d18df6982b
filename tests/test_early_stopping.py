"""Early stopping on held-out training cells (issue "Scores that mean what they say", item 6): the shared
helpers (holdout_split, EarlyStopping), and for each trained baseline that the validation cells are never
trained on, that training stops when the validation loss stops improving, the best weights are kept,
the fit stays seeded, and bad settings are refused clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from causcell_bench.errors import BenchError
from causcell_bench.methods.base import Progress
from causcell_bench.models.utils import MIN_CELLS_TO_VALIDATE, EarlyStopping, holdout_split
from causcell_bench.testing import check_progress, tiny_dataset, tiny_split


# --- the shared helpers ---------------------------------------------------------------------------
def test_holdout_split_is_seeded_disjoint_and_a_tenth() -> None:
    tr, va = holdout_split(1000, 0.1, seed=3)
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr) & set(va) and sorted([*tr, *va]) == list(range(1000))
    _, va2 = holdout_split(1000, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, holdout_split(1000, 0.1, seed=4)[1])
    # its own random stream: not the first draws a training loop seeded alike would make
    assert not np.array_equal(np.sort(np.random.default_rng(3).permutation(1000)[:100]), va)


def test_holdout_split_small_data() -> None:
    tr, va = holdout_split(MIN_CELLS_TO_VALIDATE - 1, 0.1, seed=0)
    assert len(va) == 0 and len(tr) == MIN_CELLS_TO_VALIDATE - 1  # too few to validate: train on all
    _, va = holdout_split(MIN_CELLS_TO_VALIDATE, 0.1, seed=0)
    assert len(va) == 5  # at least five cells when validating at all
    for bad in (0.0, -0.1, 0.6):
        with pytest.raises(ValueError, match="fraction"):
            holdout_split(100, bad, seed=0)


def test_early_stopping_counts_patience_and_restores_the_best() -> None:
    net = nn.Linear(2, 1)
    stop = EarlyStopping(patience=2)
    losses = [5.0, 4.0, 3.0, 3.5, 2.9, 3.2, 3.1, 1.0]
    stopped_at, best_weight = None, None
    for step, loss in enumerate(losses, start=1):
        with torch.no_grad():
            net.weight.fill_(float(step))
        if loss == 2.9:
            best_weight = float(step)
        if stop.check(step, loss, net, train=loss + 1):
            stopped_at = step
            break
    assert stopped_at == 7 and stop.best_step == 5 and stop.best == 2.9  # 3.2 and 3.1 do not beat 2.9
    stop.restore(net)
    assert float(net.weight[0, 0].detach()) == best_weight
    rec = stop.summary(cap=100, unit="epoch", monitor="m", last_step=7)
    assert rec["stopped"] and rec["best"] == 5 and [h["val"] for h in rec["history"]] == losses[:7]


def test_early_stopping_min_delta_is_relative_and_warm_up_is_ignored() -> None:
    net = nn.Linear(2, 1)
    stop = EarlyStopping(patience=2, min_delta=0.01, checks_from=3)
    assert not stop.check(1, 0.1, net) and not stop.check(2, 0.1, net)  # warm-up: not counted
    assert stop.best_step is None
    assert not stop.check(3, 100.0, net)  # the first counted check is the best so far
    assert not stop.check(4, 99.5, net)  # 0.5% better: below min_delta, a bad check
    assert stop.check(5, 99.2, net) and stop.best_step == 3
    nan_stop = EarlyStopping(patience=1)
    nan_stop.check(1, 1.0, net)
    assert nan_stop.check(2, math.nan, net)  # a diverged check is never an improvement


@pytest.mark.parametrize("kwargs", [{"patience": 0}, {"patience": 1.5}, {"patience": 2, "min_delta": -0.1}])
def test_early_stopping_refuses_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EarlyStopping(**kwargs)


# --- our models: validation cells never trained on, stop, restore -------------------------------
def _recording_rows(x: np.ndarray, net: nn.Module, seen: set[int]):
    """A RowFn that records every cell requested while ``net`` is in training mode."""
    def rows(idx: np.ndarray) -> np.ndarray:
        if net.training:
            seen.update(int(i) for i in idx)
        return x[idx]
    return rows


def test_cpa_trains_only_on_training_cells_and_keeps_the_best() -> None:
    from causcell_bench.models.cpa import CPANet, train_cpa, validation_recon

    adata, _ = tiny_dataset(n_cells=200, n_genes=30)
    x = adata.layers["counts"].toarray().astype(np.float32)
    pert = adata.obs["age"].cat.codes.to_numpy()
    covs = adata.obs[["domain"]].apply(lambda s: s.cat.codes).to_numpy()
    train_idx, val_idx = holdout_split(200, 0.1, seed=0)
    torch.manual_seed(0)
    net = CPANet(n_genes=30, n_perts=3, covariate_sizes=[2], latent_dim=8, hidden=32, n_layers=2)
    seen: set[int] = set()
    stop = EarlyStopping(patience=1, checks_from=2)  # patience 1: stops at the first epoch that does not improve
    reports: list[tuple[int, int]] = []
    hist = train_cpa(net, _recording_rows(x, net, seen), pert, covs, epochs=200, batch_size=32, lr_ae=3e-2,
                     adv_warmup=2, seed=0, val_idx=val_idx, early_stopping=stop,
                     callback=lambda d, t, loss: reports.append((d, t)))
    assert seen == set(train_idx.tolist()), "validation cells were used in training"
    assert stop.stopped_step is not None and len(hist) == stop.stopped_step < 200
    assert reports[-1][0] == reports[-1][1], "an early stop must end the progress at done == total"
    targets = np.column_stack([pert, covs])[val_idx]
    restored = validation_recon(net, lambda i: x[i], val_idx, targets, device=torch.device("cpu"))
    assert restored == pytest.approx(stop.best, rel=1e-5)
    assert restored < hist[-1]["val_recon"]  # the last epoch was worse: the best was put back


def test_scdisinfact_trains_only_on_training_cells_and_keeps_the_best() -> None:
    from causcell_bench.models.scdisinfact import ScDisInFactNet, train_scdisinfact, validation_recon

    adata, _ = tiny_dataset(n_cells=200, n_genes=30)
    x = adata.layers["counts"].toarray().astype(np.float32)
    labels = adata.obs[["age"]].apply(lambda s: s.cat.codes).to_numpy()
    batch = adata.obs["domain"].cat.codes.to_numpy()
    library = x.sum(1)
    train_idx, val_idx = holdout_split(200, 0.1, seed=0)
    torch.manual_seed(0)
    net = ScDisInFactNet(n_genes=30, n_classes=[3], n_batches=2, hidden=32)
    seen: set[int] = set()
    stop = EarlyStopping(patience=1)
    hist = train_scdisinfact(net, _recording_rows(x, net, seen), labels, batch, library, epochs=300,
                             batch_per_group=8, lr=2e-2, seed=0, val_idx=val_idx, early_stopping=stop)
    assert seen == set(train_idx.tolist())
    assert stop.stopped_step is not None and len(hist) == stop.stopped_step < 300
    restored = validation_recon(net, lambda i: x[i], val_idx, batch[val_idx], library[val_idx],
                                device=torch.device("cpu"))
    assert restored == pytest.approx(stop.best, rel=1e-5) and restored < hist[-1]["val_recon"]


def test_michigan_stages_train_only_on_training_cells_and_keep_the_best() -> None:
    from causcell_bench.models import michigan as mm

    adata, _ = tiny_dataset(n_cells=200, n_genes=30)
    x = adata.X.toarray().astype(np.float32)
    train_idx, val_idx = holdout_split(200, 0.1, seed=0)
    torch.manual_seed(0)
    vae = mm.TCVAE(30, 4, [32], 0.0)
    seen: set[int] = set()
    stop = EarlyStopping(patience=1)
    hist = mm.train_tcvae(vae, _recording_rows(x, vae, seen), 200, epochs=300, batch_size=32, lr=1e-2, lambda_tc=1.0,
                          rng=np.random.default_rng(0), device=torch.device("cpu"), val_idx=val_idx,
                          early_stopping=stop)
    assert seen == set(train_idx.tolist())
    assert stop.stopped_step is not None and len(hist["val_loss"]) == stop.stopped_step < 300
    restored = mm.validation_neg_elbo(vae, lambda i: x[i], val_idx, device=torch.device("cpu"))
    assert restored == pytest.approx(stop.best, rel=1e-5) and restored < hist["val_loss"][-1]

    codes, _ = mm.encode_rows(vae, lambda i: x[i], 200, device=torch.device("cpu"))
    gen, critic = mm.CodeGenerator(30, 4, 8, [32]), mm.ProjectionCritic(30, 4, [32])
    drawn: set[int] = set()

    def rows(idx: np.ndarray) -> np.ndarray:
        if len(idx) != len(val_idx) or not np.array_equal(idx, val_idx):
            drawn.update(int(i) for i in idx)
        return x[idx]

    gstop = EarlyStopping(patience=2)
    ghist = mm.train_wgan_gp(gen, critic, rows, codes, steps=2000, batch_size=16, lr=1e-3, n_critic=2,
                             rng=np.random.default_rng(0), device=torch.device("cpu"), log_every=10,
                             val_idx=val_idx, early_stopping=gstop)
    assert drawn <= set(train_idx.tolist())
    assert len(ghist["val_energy"]) == len(ghist["step"]) and ghist["step"][-1] == gstop.stopped_step
    assert gstop.stopped_step is not None and gstop.stopped_step < 2000, "the energy distance never stopped improving"


def test_energy_distance() -> None:
    from causcell_bench.models.michigan import energy_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g)
    same, shifted = energy_distance(a, b), energy_distance(a, b + 1.0)
    assert abs(same) < 0.05 and shifted > 0.5


# --- the adapters -----------------------------------------------------------------------------------
OURS = {
    "CPA": ("causcell_bench.methods.cpa", "CPA", {"epochs": 60, "batch_size": 32, "patience": 2}),
    "scDisInFact": ("causcell_bench.methods.scdisinfact", "ScDisInFact", {"epochs": 200, "batch_per_group": 8, "patience": 2}),
    "MichiGAN": ("causcell_bench.methods.michigan", "MichiGAN",
                 {"vae_epochs": 200, "gan_steps": 200, "vae_patience": 2, "gan_patience": 2, "gan_check_every": 10,
                  "gan_batch_size": 32}),
}


def _cls(name: str) -> type:
    import importlib

    module, attr, _ = OURS[name]
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("name", list(OURS))
def test_quick_preset_stops_early_is_seeded_and_reports_it(name: str) -> None:
    train, test, spec = tiny_split()
    params = OURS[name][2]
    fits, reports = [], []
    for _ in range(2):
        m = _cls(name)(preset="quick", device="cpu", **params)
        got: list[Progress] = []
        m.progress_callback = got.append
        m.fit(train, spec, seed=0)
        fits.append(m)
        reports.append(got)
    check_progress(reports[0])
    np.testing.assert_array_equal(fits[0].generate(test, seed=0), fits[1].generate(test, seed=0))
    for phase, rec in fits[0].convergence_.items():
        assert rec["patience"] == 2 and rec["best"] is not None and rec["best"] <= rec["last"]
        vals = [h["val"] for h in rec["history"]]
        assert all(math.isfinite(v) for v in vals), phase
        if rec["stopped"]:
            assert rec["last"] < rec["cap"]
    assert any(rec["stopped"] for rec in fits[0].convergence_.values()), "patience 2 never stopped a run"


@pytest.mark.parametrize("name", list(OURS))
def test_paper_preset_keeps_its_fixed_budget(name: str) -> None:
    m = _cls(name)(preset="paper", device="cpu")
    assert m.params["early_stopping"] is False


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("bad", [{"val_fraction": 0.0}, {"val_fraction": 0.7}, {"patience": 0}, {"min_delta": -1.0}])
def test_bad_stopping_settings_are_refused(name: str, bad: dict) -> None:
    train, _, spec = tiny_split()
    if name == "MichiGAN" and "patience" in bad:
        bad = {"gan_patience": bad["patience"]}
    with pytest.raises(BenchError, match=next(iter(bad)).replace("gan_", "")):
        _cls(name)(preset="quick", device="cpu", **{**OURS[name][2], **bad}).fit(train, spec, seed=0)


def test_too_few_cells_train_on_all_for_the_whole_budget() -> None:
    from causcell_bench.methods.cpa import CPA

    adata, spec = tiny_dataset(n_cells=MIN_CELLS_TO_VALIDATE - 10, n_genes=20)
    m = CPA(device="cpu", epochs=3, batch_size=16)
    m.fit(adata, spec, seed=0)
    rec = m.convergence_["training"]
    assert rec["patience"] is None and rec["last"] == 3 and len(m.history_) == 3
    assert "val_recon" not in m.history_[0]


# --- the scvi-tools based adapters -------------------------------------------------------------------
def test_scvi_stops_on_its_validation_elbo_and_keeps_the_best() -> None:
    from causcell_bench.methods.scvi import SCVI

    train, _, spec = tiny_split()
    m = SCVI(device="cpu", max_epochs=400, patience=3)
    m.fit(train, spec, seed=0)
    rec = m.convergence_["training"]
    assert rec["stopped"] and rec["last"] < 400 and rec["best"] == rec["last"] - 3
    vals = {h["step"]: h["val"] for h in rec["history"]}
    assert rec["best_val"] == pytest.approx(vals[rec["best"]]) and rec["best_val"] == pytest.approx(min(vals.values()))
    assert all(math.isfinite(h["train"]) for h in rec["history"])
    with pytest.raises(BenchError, match="val_fraction"):
        SCVI(device="cpu", val_fraction=0.9).fit(train, spec, seed=0)
    with pytest.raises(BenchError, match="patience"):
        SCVI(device="cpu", patience=0).fit(train, spec, seed=0)
    assert SCVI(preset="paper").params["early_stopping"] is False


def test_biolord_records_its_monitor_and_refuses_an_unknown_one() -> None:
    pytest.importorskip("biolord")
    from causcell_bench.methods.biolord import Biolord

    train, _, spec = tiny_split()
    small = {"batch_size": 64, "n_latent": 8, "decoder_width": 64, "infer_steps": 5}
    m = Biolord(device="cpu", max_epochs=30, patience=2, check_val_every_n_epoch=1, **small)
    m.fit(train, spec, seed=0)
    rec = m.convergence_["training"]
    assert rec["monitor"].startswith("val_generative_mean_accuracy") and rec["best"] is not None
    vals = [h["val"] for h in rec["history"] if math.isfinite(h["val"])]
    assert rec["best_val"] == pytest.approx(max(vals))  # maximised
    with pytest.raises(BenchError, match="early_stopping_monitor"):
        Biolord(device="cpu", early_stopping_monitor="nope", **small).fit(train, spec, seed=0)

"""CausCell's early stopping: a deterministic validation loss on held-out cells, a stop before the
budget when it stops improving, and the weights of the best check restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causcell_bench.errors import BenchError
from causcell_bench.methods.causcell import CausCell
from causcell_bench.models.causcell import CausCellModel
from causcell_bench.models.utils import EarlyStopping
from causcell_bench.testing import tiny_split

TINY = dict(d=8, hidden=32, n_blocks=1, heads=2, head_dim=8, ff_mult=2, device="cpu")


def _toy(n: int, g: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n)], axis=1)
    centres = rng.gamma(2.0, 1.0, size=(2, 3, g))
    x = np.log1p(rng.poisson(centres[codes[:, 0], codes[:, 1]] * 3)).astype(np.float32)
    return x, codes


def _model() -> CausCellModel:
    a = np.zeros((3, 3), dtype=np.float32)
    a[0, 1] = 1.0
    return CausCellModel(12, [2, 3], a, **TINY)


def test_validation_loss_is_deterministic_and_leaves_random_state_alone() -> None:
    x, codes = _toy(60)
    model = _model()
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = model.validation_loss(x, codes, seed=3)
    after = torch.rand(1)
    assert a == model.validation_loss(x, codes, seed=3)
    assert np.isfinite(a) and a > 0
    assert torch.equal(before, after)  # the global torch stream is untouched
    assert a != model.validation_loss(x, codes, seed=4)


def test_stops_before_the_budget_and_restores_the_best_weights() -> None:
    x, codes = _toy(120)
    model = _model()
    # a stopper that no validation loss can satisfy after its first check: it must stop at the
    # second check and hand back the weights of the first
    stopper = EarlyStopping(patience=1, min_delta=0.99)
    model.fit(x[:100], codes[:100], n_steps=200, batch_size=32, lr=1e-3, seed=0,
              validation=(x[100:], codes[100:]), val_every=10, stopper=stopper)
    assert stopper.stopped_step == 20 and stopper.best_step == 10
    assert model.n_updates == 20  # 180 of the 200 steps were never taken
    restored = model.validation_loss(x[100:], codes[100:], seed=0)
    assert restored == pytest.approx(stopper.best, rel=1e-6)


def test_without_a_stopper_the_budget_is_the_length() -> None:
    x, codes = _toy(60)
    model = _model()
    model.fit(x, codes, n_steps=15, batch_size=16, seed=0)
    assert model.n_updates == 15
    with pytest.raises(ValueError, match="both"):
        _model().fit(x, codes, n_steps=5, validation=(x, codes))


def test_adapter_holds_out_a_tenth_and_reports_convergence() -> None:
    train, _, spec = tiny_split(n_cells=300, n_genes=20)
    m = CausCell(n_steps=60, val_every=20, patience=50, hidden=32, n_blocks=1, head_dim=8, d=8)
    m.fit(train, spec, seed=0)
    cv = m.convergence_["training"]
    assert cv["unit"] == "step" and cv["cap"] == 60 and not cv["stopped"]
    assert [h["step"] for h in cv["history"]] == [20, 40, 60]
    assert all(np.isfinite(h["val"]) for h in cv["history"])
    # trained on the other nine tenths only
    assert m.model_.n_updates == 60
    off = CausCell(n_steps=30, early_stopping=False, hidden=32, n_blocks=1, head_dim=8, d=8)
    off.fit(train, spec, seed=0)
    assert off.convergence_["training"]["patience"] is None


def test_min_steps_is_a_floor_under_the_kept_and_the_last_step() -> None:
    """Checks before min_steps are recorded but never kept nor counted against patience."""
    train, _, spec = tiny_split(n_cells=300, n_genes=20)
    m = CausCell(n_steps=120, val_every=20, patience=1, min_delta=0.5, min_steps=60,
                 hidden=32, n_blocks=1, head_dim=8, d=8)
    m.fit(train, spec, seed=0)
    cv = m.convergence_["training"]
    assert [h["step"] for h in cv["history"]][:3] == [20, 40, 60]
    # min_delta 0.5 (a halving) is never met after the first counted check: it stops at the next one
    assert cv["best"] == 60 and cv["stopped"] and cv["last"] == 80


@pytest.mark.parametrize("bad", [{"val_fraction": 0.0}, {"val_fraction": 0.9}, {"patience": 0},
                                 {"val_every": 0}, {"early_stopping": "yes"}, {"min_delta": -1},
                                 {"min_steps": -1}])
def test_bad_early_stopping_settings_are_clear_errors(bad: dict) -> None:
    with pytest.raises(BenchError):
        CausCell(**bad)

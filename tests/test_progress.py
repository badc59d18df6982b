"""Progress reporting (issue #16, item 4): Method.report_progress, its throttling and safety, and every
built-in trained method reporting steps/epochs done of its budget during fit."""

from __future__ import annotations

import itertools
import math
import pickle
import types
import warnings
from typing import Any

import numpy as np
import pytest

from causcell_bench.methods.base import (
    Capabilities,
    Method,
    Progress,
    _lightning_progress_class,
    lightning_progress,
)
from causcell_bench.registry import BUILTIN_METHODS, get_method
from causcell_bench.testing import check_progress, tiny_split

# tiny budgets: the point is the reports, not the model
CAUSCELL = {"n_steps": 40, "batch_size": 64, "hidden": 32, "n_blocks": 1, "heads": 2, "head_dim": 8, "d": 8,
            "ff_mult": 2, "ddim_steps": 5, "pool_size": 16}
TINY: dict[str, dict[str, Any]] = {
    "CausCell": CAUSCELL,
    "CausCell_IND": CAUSCELL,
    "scDisInFact": {"epochs": 3, "batch_per_group": 8},
    "CPA": {"epochs": 3, "batch_size": 64},
    "MichiGAN": {"vae_epochs": 3, "gan_steps": 6, "gan_batch_size": 32},
    "scVI": {"max_epochs": 4},
    "scGen": {"max_epochs": 4, "batch_size": 256, "n_hidden": 32, "n_latent": 8},
    "Biolord": {"max_epochs": 4, "batch_size": 64, "n_latent": 8, "decoder_width": 64, "infer_steps": 20},
}
# phases (what, unit, total) each method must report, where the total follows from TINY directly
PHASES: dict[str, list[tuple[str, str, int | None]]] = {
    "CausCell": [("training", "steps", 40)],
    "CausCell_IND": [("training", "steps", 40)],
    "scDisInFact": [("training", "steps", None)],
    "CPA": [("training", "steps", None)],
    "MichiGAN": [("VAE training", "steps", None), ("GAN training", "steps", 6)],
    "scVI": [("training", "epochs", 4)],
    "scGen": [("training", "epochs", 4)],
    "Biolord": [("training", "epochs", 4)],
}


@pytest.fixture(scope="module")
def split():
    return tiny_split()


_FITS: dict[str, tuple[Method, list[Progress]]] = {}


def _fit_reporting(name: str, split: tuple) -> tuple[Method, list[Progress]]:
    """``name`` fitted on the tiny split with a recording callback (once per module)."""
    if name not in _FITS:
        train, _, spec = split
        m = get_method(name)(preset="quick", device="cpu", **TINY[name])
        reports: list[Progress] = []
        m.progress_callback = lambda r: reports.append(r)  # a closure: cannot be pickled
        m.fit(train, spec, seed=0)
        _FITS[name] = (m, reports)
    return _FITS[name]


def test_every_trained_builtin_is_covered():
    trained = {n for n in BUILTIN_METHODS if get_method(n).kind == "method"}
    assert trained == set(TINY), "give every built-in trained method a tiny budget here"


@pytest.mark.parametrize("name", list(TINY))
def test_trained_method_reports_progress(name, split, tmp_path):
    m, reports = _fit_reporting(name, split)
    assert len(reports) >= 2, f"{name} gave {len(reports)} progress report(s)"
    check_progress(reports)
    phases = [(r.what, r.unit, r.total) for r in reports if r.done == r.total]
    for (what, unit, total), got in zip(PHASES[name], phases, strict=True):
        assert got[:2] == (what, unit)
        assert total is None or got[2] == total
    assert all(r.loss is not None and math.isfinite(r.loss) for r in reports), "every built-in logs a loss"
    # at least every 1% of the budget (the tiny budgets here have < 100 updates: every one)
    for prev, r in itertools.pairwise(reports):
        if prev.what == r.what:
            assert r.done - prev.done <= max(1, math.ceil(r.total / 100)), f"gap {prev.done} -> {r.done}"

    # a method with a callback set (an unpicklable closure) saves and loads, without it
    test = split[1]
    before = m.generate(test, seed=0)
    m.save(tmp_path)
    loaded = type(m).load(tmp_path)
    assert loaded.progress_callback is None
    assert m.progress_callback is not None, "save() must not take the callback from the fitted method"
    np.testing.assert_allclose(loaded.generate(test, seed=0), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["CausCell", "CPA", "scVI"])
def test_reporting_leaves_the_fit_bit_identical(name, split):
    """Progress must not draw random numbers or reorder training: a committed reference table depends on it."""
    reporting, _ = _fit_reporting(name, split)
    train, test, spec = split
    silent = get_method(name)(preset="quick", device="cpu", **TINY[name])
    silent.fit(train, spec, seed=0)
    np.testing.assert_array_equal(silent.generate(test, seed=0), reporting.generate(test, seed=0))
    emb_a, emb_b = silent.embed(test), reporting.embed(test)
    for c in emb_a:
        np.testing.assert_array_equal(emb_a[c], emb_b[c])


@pytest.mark.parametrize("name", ["CausCell", "scVI"])
def test_a_raising_callback_does_not_break_fit(name, split):
    train, test, spec = split
    params = {**TINY[name], "n_steps": 5} if "n_steps" in TINY[name] else TINY[name]
    m = get_method(name)(preset="quick", device="cpu", **params)
    calls = []

    def broken(r: Progress) -> None:
        calls.append(r)
        raise RuntimeError("display is broken")

    m.progress_callback = broken
    with pytest.warns(RuntimeWarning, match="display is broken") as record:
        m.fit(train, spec, seed=0)
    assert len(calls) >= 2, "the callback is still called after it failed"
    assert sum("progress callback raised" in str(w.message) for w in record) == 1, "warned once only"
    assert m.generate(test, seed=0).shape == (test.n_obs, test.n_vars)


# --- report_progress itself, on a method that does not train --------------------------------------
class _Dummy(Method):
    name = "dummy"
    capabilities = Capabilities()

    def fit(self, train: Any, spec: Any, *, seed: int) -> None:
        pass


def test_no_callback_no_reports_and_no_state():
    m = _Dummy()
    assert m.progress_callback is None and m.progress_hook() is None
    m.report_progress(1, 10, loss=1.0)
    assert "_progress_state" not in m.__dict__


def test_reports_are_throttled_to_one_per_percent_with_the_recent_mean_loss(monkeypatch):
    clock = iter(range(10**6))  # a clock that advances 1 ms per call: never the time limit
    monkeypatch.setattr("causcell_bench.methods.base.time.monotonic", lambda: next(clock) / 1000)
    m, got = _Dummy(), []
    m.progress_callback = got.append
    for step in range(1, 1001):
        m.report_progress(step, 1000, loss=float(step))
    assert [r.done for r in got] == [1, *range(10, 1001, 10)]
    assert got[-1] == Progress(done=1000, total=1000, unit="steps", what="training", loss=np.mean(range(991, 1001)))
    check_progress(got)


def test_reports_also_come_every_few_seconds(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("causcell_bench.methods.base.time.monotonic", lambda: now[0])
    m, got = _Dummy(), []
    m.progress_callback = got.append
    for step in range(1, 5):  # 1e6 steps: the 1% mark is 10,000 steps away
        now[0] += 3.0
        m.report_progress(step, 10**6, unit="epochs")
    assert [r.done for r in got] == [1, 2, 3, 4]
    assert got[0].unit == "epochs" and got[0].loss is None


def test_a_new_phase_is_reported_from_its_start():
    m, got = _Dummy(), []
    m.progress_callback = got.append
    for what, total in (("VAE training", 3), ("GAN training", 2)):
        for step in range(1, total + 1):
            m.progress_hook(what)(step, total, 0.5)
    assert [(r.what, r.done) for r in got] == [("VAE training", 1), ("VAE training", 2), ("VAE training", 3),
                                               ("GAN training", 1), ("GAN training", 2)]
    check_progress(got)


def test_check_progress_catches_insane_reports():
    ok = [Progress(1, 2), Progress(2, 2)]
    check_progress(ok)
    for bad in (
        [Progress(1, 2)],  # never finished
        [Progress(2, 2), Progress(1, 2), Progress(2, 2)],  # went back
        [Progress(3, 2)],  # beyond the total
        [Progress(2, 2, unit="bananas")],
        [Progress(2, 2, loss=float("nan"))],
    ):
        with pytest.raises(AssertionError):
            check_progress(bad)


def test_pickling_leaves_the_callback_out():
    m = _Dummy()
    m.progress_callback = lambda r: None  # unpicklable
    m.report_progress(1, 10)
    m.report_progress(2, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = pickle.loads(pickle.dumps(m))
    assert restored.progress_callback is None
    assert "_progress_state" not in restored.__dict__
    assert m.progress_callback is not None


def test_lightning_callback_reports_finished_epochs_and_shrinks_the_total_on_early_stop():
    import enum

    class Key(str, enum.Enum):  # biolord logs its metrics under str Enum keys
        RECON = "reconstruction_loss"

    m, got = _Dummy(), []
    assert lightning_progress(m) == []  # nothing listens: nothing added to the trainer
    m.progress_callback = got.append
    (cb,) = lightning_progress(m, "reconstruction_loss")
    assert isinstance(cb, _lightning_progress_class())
    trainer = types.SimpleNamespace(current_epoch=0, max_epochs=10, callback_metrics={})
    cb.on_train_epoch_start(trainer, None)  # nothing finished yet
    for epoch in (1, 2, 3):
        trainer.current_epoch, trainer.callback_metrics = epoch, {Key.RECON: np.float32(10.0 - epoch)}
        cb.on_train_epoch_start(trainer, None)
    cb.on_train_end(trainer, None)  # stopped early after 3 of 10 epochs
    assert [(r.done, r.total, r.unit, r.loss) for r in got] == [
        (1, 10, "epochs", 9.0), (2, 10, "epochs", 8.0), (3, 10, "epochs", 7.0), (3, 3, "epochs", 7.0)
    ]
    check_progress(got)

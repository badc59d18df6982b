"""scGen adapter (pertpy's Scgen): seeding, latent-arithmetic counterfactuals (the conformance kit runs in
test_conformance.py)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

pytest.importorskip("pertpy")

from causcell_bench.errors import BenchError
from causcell_bench.methods.scgen import ScGen
from causcell_bench.testing import check_counterfactual_direction, tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()  # the data and split check_method uses


@pytest.fixture(scope="module")
def fitted(split):
    train, _, spec = split
    m = ScGen(preset="test", device="cpu")
    m.fit(train, spec, seed=0)
    return m


@pytest.mark.slow  # a second fit: ~15 s of XLA compilation on CPU
def test_seed_is_honoured(fitted, split):
    train, test, spec = split
    again = ScGen(preset="test", device="cpu")
    again.fit(train, spec, seed=0)
    np.testing.assert_allclose(again.embed(test)["age"], fitted.embed(test)["age"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(again.generate(test, seed=0), fitted.generate(test, seed=0), rtol=1e-4, atol=1e-4)


def test_counterfactual_moves_cells_towards_target(fitted, split):
    """A classifier trained on real cells gives the target label more probability after do() than before."""
    check_counterfactual_direction(fitted, *split, min_gain=0.1)


def test_counterfactual_is_latent_arithmetic(fitted, split):
    """do() shifts each latent by the centroid difference of target and own label; a no-op do() changes nothing."""
    _, test, _ = split
    z = fitted.embed(test)["domain"]
    cats = fitted.categories_["domain"]
    own = fitted._codes(test, "domain")
    shifted = z + fitted.centroids_["domain"][cats.index("dom1")] - fitted.centroids_["domain"][own]
    np.testing.assert_allclose(fitted.generate(test, do={"domain": "dom1"}, seed=0),
                               np.clip(fitted._decode(shifted.astype(np.float32)), 0, None), rtol=1e-4, atol=1e-4)
    dom1 = test[(test.obs["domain"] == "dom1").to_numpy()].copy()
    np.testing.assert_allclose(fitted.generate(dom1, do={"domain": "dom1"}, seed=0), fitted.generate(dom1, seed=0),
                               rtol=1e-5, atol=1e-5)


def test_unseen_label_is_refused(fitted, split):
    _, test, _ = split
    bad = test.copy()
    bad.obs["age"] = bad.obs["age"].cat.add_categories(["age9"])
    bad.obs.iloc[0, bad.obs.columns.get_loc("age")] = "age9"
    with pytest.raises(BenchError, match="age9"):
        fitted.generate(bad, do={"age": "age0"}, seed=0)


def test_load_prints_nothing(fitted, tmp_path, capfd):
    """scvi-tools' load runs one training step with a progress bar; the adapter swallows it."""
    fitted.save(tmp_path)
    capfd.readouterr()
    ScGen.load(tmp_path)
    out, err = capfd.readouterr()
    assert "Epoch" not in out + err and "Training" not in out + err


def test_old_layout_with_adapter_json_loads(fitted, split, tmp_path):
    """What ScGen.save wrote before the manifest: pertpy's own save plus adapter.json with the centroids."""
    import json

    _, test, _ = split
    fitted.model_.save(str(tmp_path / "scgen_model"), overwrite=True, save_anndata=False)
    (tmp_path / "adapter.json").write_text(json.dumps({
        "preset": fitted.preset, "device": fitted.device, "params": fitted.params,
        "spec": fitted.spec_.model_dump(), "var_names": fitted.var_names_, "categories": fitted.categories_,
        "centroids": {c: v.tolist() for c, v in fitted.centroids_.items()},
    }))
    old = ScGen.load(tmp_path, device="cpu")
    assert old.params == fitted.params and old.categories_ == fitted.categories_
    for c, v in fitted.centroids_.items():
        np.testing.assert_array_equal(old.centroids_[c], v)
    do = {"age": "age0"}
    # the centroids come back as fit() made them (float32): the very outputs of the fitted model
    np.testing.assert_array_equal(old.generate(test, do=do, seed=0), fitted.generate(test, do=do, seed=0))


@pytest.mark.slow  # another fit: ~15 s of XLA compilation on CPU
def test_quick_preset_stops_on_the_validation_loss_and_keeps_the_best(split):
    train, _, spec = split
    m = ScGen(preset="test", device="cpu", early_stopping=True, batch_size=64, patience=3)
    m.fit(train, spec, seed=0)
    rec = m.convergence_["training"]
    assert rec["stopped"] and rec["last"] < ScGen.test_params["max_epochs"] and rec["best"] == rec["last"] - 3
    vals = {h["step"]: h["val"] for h in rec["history"]}
    assert rec["best_val"] == pytest.approx(min(vals.values())) == pytest.approx(vals[rec["best"]])
    assert rec["monitor"].startswith("validation_loss")
    with pytest.raises(BenchError, match="val_fraction"):
        ScGen(preset="quick", device="cpu", val_fraction=0.0).fit(train, spec, seed=0)


def test_missing_pertpy_names_the_extra(split, monkeypatch):
    real_import = builtins.__import__

    def no_pertpy(name, *args, **kwargs):
        if name == "pertpy" or name.startswith("pertpy."):
            raise ImportError("No module named 'pertpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pertpy)
    train, _, spec = split
    with pytest.raises(BenchError, match=r"causcell-bench\[scgen\]"):
        ScGen(preset="quick", device="cpu").fit(train, spec, seed=0)

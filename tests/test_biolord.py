"""Biolord adapter: seeding, counterfactual direction, the checkpointing workaround (the conformance kit runs in
test_conformance.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("biolord")

from causcell_bench.errors import BenchError
from causcell_bench.methods.base import UNEXPLAINED
from causcell_bench.methods.biolord import Biolord
from causcell_bench.testing import check_counterfactual_direction, tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()  # the data and split check_method uses


@pytest.fixture(scope="module")
def fitted(split):
    train, _, spec = split
    m = Biolord(preset="test", device="cpu")
    m.fit(train, spec, seed=0)
    return m


def test_seed_is_honoured(fitted, split):
    train, test, spec = split
    again = Biolord(preset="test", device="cpu")
    again.fit(train, spec, seed=0)
    np.testing.assert_allclose(again.generate(test, seed=0), fitted.generate(test, seed=0), rtol=1e-4, atol=1e-4)
    other = Biolord(preset="test", device="cpu", max_epochs=2)
    other.fit(train, spec, seed=1)
    first = Biolord(preset="test", device="cpu", max_epochs=2)
    first.fit(train, spec, seed=0)
    assert not np.allclose(other.embed(test)["age"], first.embed(test)["age"]), "seed has no effect"


def test_counterfactual_moves_cells_towards_target(fitted, split):
    """A classifier trained on real cells gives the target label more probability after do() than before."""
    check_counterfactual_direction(fitted, *split, min_gain=0.02)


def test_label_lookup_and_inferred_unexplained(fitted, split):
    _, test, spec = split
    emb = fitted.embed(test)
    table = fitted.model_.module.categorical_embeddings["attr2"].weight.detach().numpy()
    codes = fitted._codes(test, "celltype")
    np.testing.assert_allclose(emb["celltype"], table[codes])
    # the unknown-attribute code is optimised per cell: it beats the zero code it starts from
    z = emb[UNEXPLAINED]
    assert z.shape == (test.n_obs, fitted.params["n_latent"]) and np.abs(z).sum() > 0
    x = test.X.toarray()
    err = ((fitted.generate(test, seed=0) - x) ** 2).mean()
    fitted._cache = (fitted._cache[0], np.zeros_like(z))  # decode with the starting point instead
    try:
        err_zero = ((fitted.generate(test, seed=0) - x) ** 2).mean()
    finally:
        fitted._cache = None
    assert err < err_zero


def test_training_cells_keep_their_trained_codes(fitted, split, tmp_path):
    """As biolord's compute_prediction_adata does for a source subset of the training data: a trained
    cell's code is its row of the code table; a validation cell (untrained code) or a cell that only
    shares a name is inferred; a saved and loaded model does the same."""
    train, _, _ = split
    table = fitted.model_.module.latent_codes.embedding.weight.detach().numpy()
    rows, known = fitted._training_rows(train)
    n_val = train.n_obs - len(fitted.trained_cells_)
    assert n_val > 0 and known.sum() == train.n_obs - n_val  # early stopping held a tenth out
    z = fitted.embed(train)[UNEXPLAINED]
    np.testing.assert_array_equal(z[known], table[rows[known]])
    assert np.abs(z[known]).mean() > 0 and np.abs(table[~np.isin(np.arange(train.n_obs), rows[known])]).sum() == 0
    # same names, other expression: inferred, not looked up
    other = train.copy()
    other.X = other.X * 1.5
    assert not fitted._training_rows(other)[1].any()
    fitted.save(tmp_path / "m")
    loaded = Biolord.load(tmp_path / "m", device="cpu")
    np.testing.assert_array_equal(loaded._training_rows(train)[0], rows)
    do = {"age": "age0"}
    np.testing.assert_allclose(loaded.generate(train, do=do, seed=0), fitted.generate(train, do=do, seed=0),
                               rtol=1e-4, atol=1e-4)


def test_unseen_label_is_refused(fitted, split):
    _, test, _ = split
    bad = test.copy()
    bad.obs["age"] = bad.obs["age"].cat.add_categories(["age9"])
    bad.obs.iloc[0, bad.obs.columns.get_loc("age")] = "age9"
    with pytest.raises(BenchError, match="age9"):
        fitted.generate(bad, seed=0)


def test_old_layout_with_adapter_json_loads(fitted, split, tmp_path):
    """What Biolord.save wrote before the manifest: biolord's own save plus adapter.json with the row count."""
    import json

    _, test, _ = split
    fitted.model_.save(str(tmp_path / "biolord_model"), overwrite=True, save_anndata=False)
    (tmp_path / "adapter.json").write_text(json.dumps({
        "preset": fitted.preset, "device": fitted.device, "params": fitted.params,
        "spec": fitted.spec_.model_dump(), "var_names": fitted.var_names_, "categories": fitted.categories_,
        "n_train": fitted.n_train_,
    }))
    old = Biolord.load(tmp_path, device="cpu")
    assert old.params == fitted.params and old.n_train_ == fitted.n_train_
    do = {"age": "age0"}
    np.testing.assert_allclose(old.generate(test, do=do, seed=0), fitted.generate(test, do=do, seed=0),
                               rtol=1e-4, atol=1e-4)


def test_training_disables_checkpointing(split, monkeypatch):
    """The adapter must pass enable_checkpointing=False (see the comment in Biolord.fit)."""
    import biolord

    seen = {}
    original = biolord.Biolord.train

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(biolord.Biolord, "train", spy)
    train, _, spec = split
    Biolord(preset="test", device="cpu", max_epochs=1).fit(train, spec, seed=0)
    assert seen.get("enable_checkpointing") is False
    assert seen.get("enable_progress_bar") is False and seen.get("logger") is False


def test_package_still_needs_the_checkpointing_workaround(split, tmp_path):
    """Upstream canary: biolord 0.0.3 + scvi-tools 1.4 fail with checkpointing on.

    If this starts failing, the package was fixed and the workaround in Biolord.fit can go.
    """
    import biolord
    import scvi

    train, _, spec = split
    m = Biolord(preset="test", device="cpu")
    m._remember(train, spec)
    data = m._lean(train, m._label_codes(train))
    biolord.Biolord.setup_anndata(data, categorical_attributes_keys=m._attr_keys())
    scvi.settings.seed = 0
    model = biolord.Biolord(data, n_latent=4, module_params={"decoder_width": 16, "decoder_depth": 1})
    with pytest.raises(TypeError, match="isnan"):
        model.train(
            max_epochs=1, accelerator="cpu", enable_progress_bar=False, logger=False, default_root_dir=str(tmp_path)
        )


def test_bad_preset_and_parameter():
    with pytest.raises(BenchError):
        Biolord(preset="nope")
    with pytest.raises(BenchError):
        Biolord(no_such_param=1)

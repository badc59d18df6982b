"""Method.save / Method.load: the manifest the base class writes, its checks, the default state hook
(torch modules as CPU state dicts), the older layouts that must still load, and the declared generate
options that replace signature sniffing. (The conformance kit's round trip over every built-in method
runs in test_conformance.py; CausCell's, scGen's and Biolord's old layouts in their own test files.)"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.sparse as sp

from causcell_bench.counterfactual import generate as cf_generate
from causcell_bench.errors import BenchError, NotFittedError
from causcell_bench.methods.base import (
    LEGACY_PICKLE,
    MANIFEST_FILE,
    STATE_FILE,
    Capabilities,
    Method,
    SavedNet,
    class_path,
)
from causcell_bench.methods.causcell import CausCell
from causcell_bench.methods.cpa import CPA
from causcell_bench.methods.references import AdditiveShift, GroupMean, NoChange
from causcell_bench.testing import tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()


@pytest.fixture(scope="module")
def group_mean(split):
    train, _, spec = split
    m = GroupMean()
    m.fit(train, spec, seed=0)
    return m


@pytest.fixture(scope="module")
def cpa(split):
    train, _, spec = split
    m = CPA(preset="test", device="cpu")
    m.fit(train, spec, seed=0)
    return m


@pytest.fixture
def saved(group_mean, tmp_path) -> Path:
    group_mean.save(tmp_path)
    return tmp_path


def _edit_manifest(path: Path, **changes: Any) -> None:
    f = path / MANIFEST_FILE
    manifest = json.loads(f.read_text())
    manifest.update(changes)
    f.write_text(json.dumps(manifest))


# --- the manifest ----------------------------------------------------------------------------------
def test_manifest_holds_what_the_base_remembers(group_mean, saved, split):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    assert manifest["class"] == "causcell_bench.methods.references:GroupMean" == class_path(GroupMean)
    assert manifest["method"] == "group_mean" and manifest["state_version"] == GroupMean.state_version
    assert manifest["preset"] == "quick" and manifest["params"] == group_mean.params
    assert manifest["var_names"] == group_mean.var_names_ and manifest["categories"] == group_mean.categories_
    assert manifest["spec"] == group_mean.spec_.model_dump(mode="json")
    assert sorted(p.name for p in saved.iterdir()) == sorted([MANIFEST_FILE, STATE_FILE])
    state = pickle.loads((saved / STATE_FILE).read_bytes())
    assert not {"preset", "params", "spec_", "var_names_", "categories_", "progress_callback"} & set(state)
    loaded = GroupMean.load(saved, device="cpu")
    assert loaded.device == "cpu" and loaded.categories_ == group_mean.categories_
    assert list(loaded.categories_) == list(group_mean.spec_.concepts)  # the spec's order, not the JSON's sorted one
    test = split[1]
    np.testing.assert_array_equal(loaded.generate(test, seed=0), group_mean.generate(test, seed=0))


def test_save_before_fit_is_refused(tmp_path):
    with pytest.raises(NotFittedError, match="fit"):
        GroupMean().save(tmp_path)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_wrong_class_names_the_saved_one(saved):
    with pytest.raises(BenchError, match=r"holds a group_mean model .*not a additive_shift; load it with"):
        AdditiveShift.load(saved)
    _edit_manifest(saved, method="CPA", **{"class": "causcell_bench.methods.cpa:CPA"})
    with pytest.raises(BenchError, match="holds a CPA model"):
        GroupMean.load(saved)


def test_a_moved_or_renamed_class_still_loads(saved):
    _edit_manifest(saved, **{"class": "somewhere.else:GroupMean"})  # same method name: the class moved
    assert isinstance(GroupMean.load(saved), GroupMean)
    _edit_manifest(saved, method="old_name", **{"class": class_path(GroupMean)})  # same class path: renamed
    assert isinstance(GroupMean.load(saved), GroupMean)


def test_wrong_state_version_says_train_again(saved):
    _edit_manifest(saved, state_version=GroupMean.state_version + 1)
    with pytest.raises(BenchError, match=r"version 2 of group_mean's state.*reads version 1.*Train the model again"):
        GroupMean.load(saved)


def test_newer_manifest_version_says_upgrade(saved):
    _edit_manifest(saved, version=99)
    with pytest.raises(BenchError, match="manifest version 99.*upgrade causcell-bench, or train the model again"):
        GroupMean.load(saved)


def test_missing_save_says_where_and_what(tmp_path):
    with pytest.raises(BenchError, match=rf"no saved group_mean in .*no {MANIFEST_FILE}.*train the model again"):
        GroupMean.load(tmp_path)
    with pytest.raises(BenchError, match="no saved"):
        GroupMean.load(tmp_path / "no-such-dir")


@pytest.mark.parametrize("text", ["{not json", "", '{"format": "causcell-bench-method", "version": 1'])
def test_corrupt_manifest_says_train_again(saved, text):
    (saved / MANIFEST_FILE).write_text(text)
    with pytest.raises(BenchError, match="is not valid JSON.*train the model again"):
        GroupMean.load(saved)


@pytest.mark.parametrize("content", [[1, 2], {"format": "something-else"}, "a string"])
def test_a_json_that_is_no_manifest_is_refused(saved, content):
    (saved / MANIFEST_FILE).write_text(json.dumps(content))
    with pytest.raises(BenchError, match="not a causcell-bench method manifest"):
        GroupMean.load(saved)


def test_manifest_without_fields_says_damaged(saved):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    del manifest["params"], manifest["spec"]
    (saved / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match=r"lacks \['params', 'spec'\].*train the model again"):
        GroupMean.load(saved)


def test_missing_or_truncated_state_says_train_again(saved):
    state = saved / STATE_FILE
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(BenchError, match="cannot load the group_mean.*truncated.*train the model again"):
        GroupMean.load(saved)
    state.unlink()
    with pytest.raises(BenchError, match="cannot load the group_mean.*FileNotFoundError.*missing"):
        GroupMean.load(saved)


def test_resaving_replaces_the_save(group_mean, saved, split):
    other = NoChange()
    other.fit(split[0], split[2], seed=0)
    other.save(saved)  # another method into the same directory: the new manifest describes it
    assert isinstance(NoChange.load(saved), NoChange)
    with pytest.raises(BenchError, match="holds a no_change model"):
        GroupMean.load(saved)


# --- the default state hook: torch modules as CPU state dicts ---------------------------------------
def test_default_hook_saves_torch_modules_as_cpu_state_dicts(cpa, split, tmp_path):
    import torch

    test = split[1]
    cpa.progress_callback = lambda r: None  # a closure: must not be saved
    try:
        cpa.save(tmp_path)
    finally:
        cpa.progress_callback = None
    state = pickle.loads((tmp_path / STATE_FILE).read_bytes())
    net = state["net_"]
    assert isinstance(net, SavedNet) and net.cls is type(cpa.net_) and net.config == cpa.net_.config
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in net.weights.values())
    loaded = CPA.load(tmp_path, device="cpu")
    assert type(loaded.net_) is type(cpa.net_) and loaded.net_ is not cpa.net_
    assert loaded.net_.training == cpa.net_.training
    assert {p.device.type for p in loaded.net_.parameters()} == {"cpu"}
    assert loaded.perturbation_ == cpa.perturbation_ and loaded.history_ == cpa.history_
    do = {"age": str(split[0].obs["age"].cat.categories[-1])}
    np.testing.assert_array_equal(loaded.generate(test, do=do, seed=0), cpa.generate(test, do=do, seed=0))


# --- older layouts still load ----------------------------------------------------------------------
def test_the_old_whole_object_pickle_loads(group_mean, split, tmp_path):
    with open(tmp_path / LEGACY_PICKLE, "wb") as fh:  # what Method.save wrote before the manifest
        pickle.dump(group_mean, fh, protocol=pickle.HIGHEST_PROTOCOL)
    old = GroupMean.load(tmp_path, device="cpu")
    assert isinstance(old, GroupMean) and old.device == "cpu" and old.params == group_mean.params
    test = split[1]
    np.testing.assert_array_equal(old.generate(test, seed=0), group_mean.generate(test, seed=0))
    with pytest.raises(BenchError, match="holds a GroupMean, not a AdditiveShift"):
        AdditiveShift.load(tmp_path)
    old.save(tmp_path)  # saved again in the new layout, the old file beside it: the manifest wins
    assert (tmp_path / MANIFEST_FILE).is_file()
    np.testing.assert_array_equal(GroupMean.load(tmp_path).generate(test, seed=0), group_mean.generate(test, seed=0))


def test_the_old_cpu_pickled_net_loads(cpa, split, tmp_path):
    """The former CpuPickledNet mixin pickled the method with its net as (class, config, CPU weights)."""
    old = copy.copy(cpa)
    old.__dict__ = {k: v for k, v in cpa.__dict__.items() if k != "net_"}
    old.net_state_ = (type(cpa.net_), cpa.net_.config, {k: v.detach().cpu() for k, v in cpa.net_.state_dict().items()})
    with open(tmp_path / LEGACY_PICKLE, "wb") as fh:
        pickle.dump(old, fh, protocol=pickle.HIGHEST_PROTOCOL)
    loaded = CPA.load(tmp_path, device="cpu")
    assert "net_state_" not in loaded.__dict__ and not loaded.net_.training
    test = split[1]
    do = {"domain": "dom0"}
    np.testing.assert_array_equal(loaded.generate(test, do=do, seed=0), cpa.generate(test, do=do, seed=0))


def test_the_old_scvi_adapter_json_loads(split, tmp_path):
    pytest.importorskip("scvi")
    from causcell_bench.methods.scvi import SCVI

    train, test, spec = split
    m = SCVI(preset="test", device="cpu", max_epochs=5)
    m.fit(train, spec, seed=0)
    # what SCVI.save wrote before the manifest: scvi-tools' own save plus adapter.json
    m.model_.save(str(tmp_path / "scvi_model"), overwrite=True, save_anndata=False)
    (tmp_path / "adapter.json").write_text(json.dumps({
        "preset": m.preset, "device": m.device, "params": m.params, "spec": m.spec_.model_dump(),
        "var_names": m.var_names_, "categories": m.categories_,
    }))
    old = SCVI.load(tmp_path, device="cpu")
    assert old.params == m.params and old.categories_ == m.categories_
    np.testing.assert_allclose(old.embed(test)["age"], m.embed(test)["age"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(old.generate(test, seed=0), m.generate(test, seed=0), rtol=1e-4, atol=1e-4)


# --- declared generate options instead of signature sniffing ----------------------------------------
class _Recorder(Method):
    """Records the keyword arguments its generate() gets."""

    name = "recorder"
    capabilities = Capabilities(reconstruct=True, counterfactual=True)
    presets: ClassVar[dict[str, dict[str, Any]]] = {"quick": {}, "paper": {}}
    generate_options: ClassVar[dict[str, str]] = {"mode": "how to intervene"}

    def fit(self, train: Any, spec: Any, *, seed: int) -> None:
        self._remember(train, spec)

    def generate(self, adata: Any, do: Any = None, *, seed: int, **options: Any) -> np.ndarray:
        self.got = options
        x = adata.X
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def test_causcell_declares_its_generate_options():
    import inspect

    assert "mode" in CausCell.generate_options and Method.generate_options == {}
    takes = inspect.signature(CausCell.generate).parameters
    extra = {p for p in takes if p not in ("self", "adata", "do", "seed")}
    assert set(CausCell.generate_options) == extra, "declare every extra keyword argument of CausCell.generate"
    assert all(isinstance(v, str) and v for v in CausCell.generate_options.values())


def test_counterfactual_generate_passes_declared_options_only(group_mean, split):
    train, test, spec = split
    rec = _Recorder()
    rec.fit(train, spec, seed=0)
    cf_generate(rec, test, None, 0, "exogenous")
    assert rec.got == {"mode": "exogenous"}
    cf_generate(rec, test, None, 0, None)
    assert rec.got == {}
    # a method that declares no mode: the clear error, even though its generate() would take **options
    rec.generate_options = {}
    with pytest.raises(BenchError, match="recorder has no counterfactual modes; leave out --mode"):
        cf_generate(rec, test, None, 0, "do")
    with pytest.raises(BenchError, match="group_mean has no counterfactual modes; leave out --mode"):
        cf_generate(group_mean, test, {"age": "age0"}, 0, "do")


def test_saved_parameters_this_version_lacks_say_train_again(saved):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    _edit_manifest(saved, params={**manifest["params"], "retired_knob": 3})
    with pytest.raises(BenchError, match="does not fit this version.*retired_knob.*train the model again"):
        GroupMean.load(saved)

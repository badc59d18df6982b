"""The conformance kit (:func:`causcell_bench.testing.check_method`) on every built-in method, each under
its tiny ``test`` preset, and that preset itself: derived from ``quick``, accepted by ``run``.

The kit's checks (shapes, capabilities, determinism under a seed, the save/load round trip, the scale
of reconstructions, progress reports, device="cpu") run here once per method; the per-method test files
check what is particular to each method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from causcell_bench.cli import app
from causcell_bench.config import RunConfig, check_params
from causcell_bench.errors import BenchError
from causcell_bench.methods.base import Capabilities, Method
from causcell_bench.registry import BUILTIN_METHODS, CONTROLS, REFERENCES, get_method
from causcell_bench.store import ResultStore
from causcell_bench.testing import check_method

# method -> the third-party package its fit() imports: the test is skipped, with the reason, where it is missing
OPTIONAL = {"scGen": "pertpy", "Biolord": "biolord", "scVI": "scvi"}


def _method(name: str, fit: bool = True) -> type[Method]:
    """The registered class, or a skip naming what is missing (the optional package only when it will ``fit``)."""
    if fit and name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name], reason=f"{name} needs the package {OPTIONAL[name]!r}")
    try:
        return get_method(name)
    except BenchError as e:  # the registry turns a failed import into a BenchError naming the fix
        pytest.skip(f"{name} is not importable here: {e}")


@pytest.mark.parametrize("name", list(BUILTIN_METHODS))
def test_test_preset_is_quick_with_test_params(name: str) -> None:
    cls = _method(name, fit=False)
    quick, test = cls.presets["quick"], cls.presets["test"]
    invented = sorted(set(test) - set(quick))
    assert not invented, f"{name}'s test preset sets {invented}, which its quick preset lacks"
    assert test == {**quick, **cls.test_params}
    if name in CONTROLS or name in REFERENCES:  # nothing to shrink
        assert cls.test_params == {} and test == quick
    else:  # a trained method: the test preset is smaller than quick somewhere
        assert cls.test_params and test != quick


class _Toy(Method):
    name = "toy"
    capabilities = Capabilities()
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"epochs": 20, "width": 64}, "paper": {"epochs": 400, "width": 256},
    }
    test_params: ClassVar[dict[str, Any]] = {"epochs": 2}

    def fit(self, train: Any, spec: Any, *, seed: int) -> None:
        self._remember(train, spec)


def test_test_preset_is_derived_inherited_or_written_by_hand() -> None:
    assert _Toy.presets["test"] == {"epochs": 2, "width": 64}
    assert _Toy(preset="test").params == {"epochs": 2, "width": 64}
    assert _Toy(preset="test", width=8).params == {"epochs": 2, "width": 8}

    class Narrow(_Toy):  # new test_params on inherited presets: derived again, the parent's kept
        test_params: ClassVar[dict[str, Any]] = {"width": 4}

    class Same(_Toy):
        pass

    class OwnTest(_Toy):
        presets: ClassVar[dict[str, dict[str, Any]]] = {"quick": {"epochs": 5}, "test": {"epochs": 1}}

    class NoQuick(_Toy):  # nothing to derive from
        presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {"epochs": 400}}

    assert Narrow.presets["test"] == {"epochs": 20, "width": 4}
    assert _Toy.presets["test"] == {"epochs": 2, "width": 64}
    assert Same.presets["test"] == _Toy.presets["test"]
    assert OwnTest.presets["test"] == {"epochs": 1}
    assert "test" not in NoQuick.presets
    assert Method.presets["test"] == {}


def test_check_method_refuses_a_test_preset_that_invents_parameters() -> None:
    class Inventive(_Toy):
        test_params: ClassVar[dict[str, Any]] = {"secret_knob": 1}

    with pytest.raises(AssertionError, match="secret_knob"):
        check_method(Inventive, preset="test")


def test_check_method_refuses_weights_off_the_cpu() -> None:
    torch = pytest.importorskip("torch")

    class OffCpu(_Toy):
        def fit(self, train: Any, spec: Any, *, seed: int) -> None:
            self._remember(train, spec)
            self.net_ = torch.nn.Linear(2, 2, device="meta")  # "meta": a non-CPU device on any machine

    with pytest.raises(AssertionError, match=r"net_ \(Linear\) is on \['meta'\]"):
        check_method(OffCpu, preset="test")


def test_config_checks_accept_the_test_preset() -> None:
    assert RunConfig(datasets=["synthetic"], methods=["group_mean"], preset="test").preset == "test"
    cpa = get_method("CPA")
    assert check_params(cpa, "test", {"epochs": 1}) == {"epochs": 1}
    with pytest.raises(BenchError, match="no parameter"):
        check_params(cpa, "test", {"n_epochs": 1})


def test_run_with_the_test_preset(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "--methods", "group_mean", "--preset", "test", "--n-cells", "300",
                                 "--n-genes", "60", "--folds", "0", "--settings", "ID", "--no-report",
                                 "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert json.loads((out / "config.json").read_text())["preset"] == "test"
    records = list(ResultStore(out).records())
    assert [(rec["status"], rec["preset"]) for rec in records] == [("ok", "test")]


# last: the fits load heavy packages (JAX for scGen) that the forked cells of the run above need not inherit
@pytest.mark.parametrize("name", list(BUILTIN_METHODS))
def test_conforms_under_the_test_preset(name: str) -> None:
    check_method(_method(name), preset="test")

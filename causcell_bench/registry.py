"""Registry of methods and datasets: built-ins plus third-party plugins.

Plugins register through Python entry points, so installing a package is all
it takes for ``causcell-bench list methods`` and ``run --methods`` to see it::

    [project.entry-points."causcell_bench.methods"]
    MyMethod = "my_package.adapter:MyMethod"

    [project.entry-points."causcell_bench.datasets"]
    my_data = "my_package.data:load_my_data"   # () -> (AnnData, DatasetSpec)

Built-ins are imported lazily: listing methods never imports torch models or
optional packages (pertpy for scGen).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from causcell_bench.errors import BenchError

METHOD_GROUP = "causcell_bench.methods"
DATASET_GROUP = "causcell_bench.datasets"

# name -> "module:Class"; controls first, then the references (cheap baselines), then methods in the paper's order
BUILTIN_METHODS: dict[str, str] = {
    "positive_control": "causcell_bench.methods.controls:PositiveControl",
    "negative_control": "causcell_bench.methods.controls:NegativeControl",
    "group_mean": "causcell_bench.methods.references:GroupMean",
    "additive_shift": "causcell_bench.methods.references:AdditiveShift",
    "no_change": "causcell_bench.methods.references:NoChange",
    "CausCell": "causcell_bench.methods.causcell:CausCell",
    "CausCell_IND": "causcell_bench.methods.causcell:CausCellIND",
    "scDisInFact": "causcell_bench.methods.scdisinfact:ScDisInFact",
    "Biolord": "causcell_bench.methods.biolord:Biolord",
    "CPA": "causcell_bench.methods.cpa:CPA",
    "MichiGAN": "causcell_bench.methods.michigan:MichiGAN",
    "scVI": "causcell_bench.methods.scvi:SCVI",
    "scGen": "causcell_bench.methods.scgen:ScGen",
}

CONTROLS = ("positive_control", "negative_control")
# the field's simple baselines: shown on the leaderboard, not ranked (Method.kind == "reference")
REFERENCES = ("group_mean", "additive_shift", "no_change")


def _plugin_entries(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def method_names() -> list[str]:
    """All registered method names: built-ins, then plugins."""
    names = list(BUILTIN_METHODS)
    names += [n for n in sorted(_plugin_entries(METHOD_GROUP)) if n not in BUILTIN_METHODS]
    return names


def _unknown(kind: str, name: str, known: list[str]) -> BenchError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return BenchError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(known)}")


def get_method(name: str) -> type:
    """The Method class registered under ``name`` (case-insensitive match as a fallback)."""
    from causcell_bench.methods.base import Method

    known = method_names()
    if name not in known:
        folded = {n.lower(): n for n in known}
        if name.lower() not in folded:
            raise _unknown("method", name, known)
        name = folded[name.lower()]
    try:
        if name in BUILTIN_METHODS:
            module, attr = BUILTIN_METHODS[name].split(":")
            cls = getattr(importlib.import_module(module), attr)
        else:
            cls = _plugin_entries(METHOD_GROUP)[name].load()
    except ImportError as e:
        raise BenchError(
            f"method {name!r} cannot be imported ({e}). "
            + ("scGen needs the extra: pip install 'causcell-bench[scgen]'" if name == "scGen" else
               "Is its package installed?")
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise BenchError(f"{name!r} is registered as {cls!r}, which is not a causcell_bench Method subclass")
    return cls


def resolve_methods(spec: str | list[str]) -> list[str]:
    """``"all"``, ``"A,B"`` or a list -> validated method names (``all`` includes the controls)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise BenchError("no methods given; use --methods all or a comma-separated list")
    out: list[str] = []
    known = method_names()
    for item in items:
        if item.lower() == "all":
            out += [n for n in known if n not in out]
            continue
        if item.lower() == "controls":
            out += [n for n in CONTROLS if n not in out]
            continue
        if item not in known:
            folded = {n.lower(): n for n in known}
            if item.lower() not in folded:
                raise _unknown("method", item, known)
            item = folded[item.lower()]
        if item not in out:
            out.append(item)
    return out


def dataset_names() -> list[str]:
    from causcell_bench.datasets import BUILTIN_DATASETS, PAPER_DATASETS

    names = list(BUILTIN_DATASETS) + list(PAPER_DATASETS)
    names += [n for n in sorted(_plugin_entries(DATASET_GROUP)) if n not in names]
    return names


def dataset_loader(name: str) -> Callable[..., Any]:
    """A callable ``(**kwargs) -> (AnnData, DatasetSpec)`` for a dataset name, TOML spec or h5ad path."""
    plugins = _plugin_entries(DATASET_GROUP)
    if name in plugins:
        return plugins[name].load()
    from causcell_bench import datasets

    def _load(**kw: Any) -> Any:
        return datasets.load(name, **kw)

    return _load

"""The CausCell paper's counterfactual experiments (Fig. 2), rerun on the synthetic SCM where truth is known.

- ``causal_consistency`` (Fig. 2b/c): do counterfactuals move the descendants
  of an intervened concept as the DAG says? CausCell vs CausCell_IND.
- ``small_sample_trends`` (Fig. 2d/e): do counterfactuals of a small sample
  recover age-trend genes that the sample itself hides?

Each writes ``DIR/report.md``, ``DIR/results.json`` and PNG figures; runs are
seeded and rerunnable (``causcell-bench experiment NAME --out DIR``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from causcell_bench.errors import BenchError
from causcell_bench.experiments.common import parse_options

EXPERIMENTS: dict[str, tuple[str, str]] = {
    "causal_consistency": ("causcell_bench.experiments.causal_consistency", "descendants of an intervened concept (Fig. 2b/c)"),
    "small_sample_trends": ("causcell_bench.experiments.small_sample_trends", "age trends from a small sample (Fig. 2d/e)"),
}


def get_experiment(name: str) -> Callable[..., dict[str, Any]]:
    """The ``run`` function of experiment ``name``."""
    import importlib

    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise BenchError(f"unknown experiment {name!r}.{hint} Available: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name][0]).run


def run_experiment(
    name: str,
    out: str | Path,
    *,
    preset: str = "quick",
    seed: int = 0,
    methods: list[str] | None = None,
    device: str = "auto",
    params: dict[str, dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one experiment into ``out``; returns its results (``results["report"]`` is the report path).
    A refused or failed experiment leaves no empty ``out`` behind that it created."""
    out = Path(out)
    created = not out.exists()
    try:
        return get_experiment(name)(out, preset=preset, seed=seed, methods=methods, device=device, params=params,
                                    options=options)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


__all__ = ["EXPERIMENTS", "get_experiment", "parse_options", "run_experiment"]

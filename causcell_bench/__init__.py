"""causcell-bench: benchmarking disentangled representation learning and
counterfactual generation on single-cell omics data.

Built around CausCell (Gao, Dong et al., "Causal disentanglement for
single-cell representations and controllable counterfactual generation",
Nat Commun 16, 6775, 2025) and the baselines it was compared with.
"""

from __future__ import annotations

__version__ = "0.1.0"

from causcell_bench.threads import prefer_fork_safe_numba as _prefer_fork_safe_numba

_prefer_fork_safe_numba()  # before numba starts a threading layer: grid cells are forked (threads.py)


__all__ = ["BenchError", "BenchmarkResult", "__version__", "benchmark"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> object:
    # lazy: `import causcell_bench` (the CLI's first import) must not pull in AnnData and friends
    if name in ("benchmark", "BenchmarkResult"):
        from causcell_bench import api

        return getattr(api, name)
    if name == "BenchError":  # the one exception type every refused input raises
        from causcell_bench.errors import BenchError

        return BenchError
    raise AttributeError(f"module 'causcell_bench' has no attribute {name!r}")

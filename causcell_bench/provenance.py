"""What a result was made with: the versions of the packages that shape a cell's numbers.

One list for every writer of provenance (grid cell records, saved models), so two records of one
run never name different packages.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

VERSIONED = ("causcell-bench", "torch", "numpy", "scanpy", "anndata", "scikit-learn", "scvi-tools", "biolord", "pertpy")


def package_versions() -> dict[str, str]:
    """{package: version} of the :data:`VERSIONED` packages installed here (absent ones left out)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out

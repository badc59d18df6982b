"""The ``causcell-bench`` command line (typer + rich).

:mod:`~causcell_bench.cli.core` holds the app, the error boundary and the options several commands
share; :mod:`~causcell_bench.cli.grid` the grid commands (``run``, ``report``, ``check``,
``check-validity``, ``list``, ``prepare``, ``download``); :mod:`~causcell_bench.cli.model` the commands around one
trained model (``train``, ``counterfactual``, ``experiment``). Importing this package registers them all.
"""

from __future__ import annotations

from causcell_bench.cli import grid, model  # noqa: F401 - importing registers the commands
from causcell_bench.cli.core import app


def main() -> None:  # pragma: no cover
    """Run the command line (the ``causcell-bench`` executable's entry point is :data:`app` itself)."""
    app()


__all__ = ["app", "main"]

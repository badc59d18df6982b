"""The ``causcell-bench`` executable's entry point: the command line of :mod:`causcell_bench.cli`, with
Ctrl-C and SIGTERM handled from the first instruction. Importing the CLI (typer, rich, the
registry) takes a second or more on a busy machine; an interrupt then would otherwise end in a
Python traceback, and one during argument parsing in click's "Aborted!" with exit 1. Here every
interrupt, wherever it lands, ends as "interrupted" and exit 130.
"""

from __future__ import annotations

from causcell_bench.interrupts import announce, interrupted, watching


def main() -> None:
    with watching():
        try:
            from causcell_bench.cli import app

            app()
        except KeyboardInterrupt:
            announce()
            raise SystemExit(130) from None
        except SystemExit:
            # typer turns a KeyboardInterrupt outside the command body into a silent exit 130:
            # say it here unless the command's own boundary already did
            if interrupted():
                announce()
                raise SystemExit(130) from None
            raise

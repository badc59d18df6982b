"""The ``causcell-bench`` executable's entry point: the command line of :mod:`causcell_bench.cli`, with
Ctrl-C and SIGTERM handled from the first instruction. Importing the CLI (typer, rich, the
registry) takes a second or more on a busy machine; an interrupt then would otherwise end in a
Python traceback, and one during argument parsing in click's "Aborted!" with exit 1. Here every
interrupt, wherever it lands, ends as "interrupted" and exit 130.
"""

from __future__ import annotations

import sys

from causcell_bench.interrupts import interrupted, watching


def main() -> None:
    with watching():
        try:
            from causcell_bench.cli import app

            app()
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise SystemExit(130) from None
        except SystemExit as e:
            if interrupted() and e.code != 130:
                sys.stderr.write("interrupted\n")
                raise SystemExit(130) from None
            raise

"""``python -m causcell_bench.cli ...``: the same command as the ``causcell-bench`` executable."""

import sys

from causcell_bench.cli import main

sys.exit(main())

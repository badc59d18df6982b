"""Report helpers shared by the experiments: markdown tables, JSON results, figure files.

Every experiment writes ``DIR/report.md`` (text, tables, figure links),
``DIR/results.json`` (every number plus the configuration, seed and package
versions) and its figures as PNG files next to them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causcell_bench.fileio import atomic_path, atomic_write_json, atomic_write_text, jsonable
from causcell_bench.interrupts import check_interrupt
from causcell_bench.provenance import package_versions
from causcell_bench.store import refuse_other_files


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, NaN as 'n/a'."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(float(v)):
            return "n/a"
        return f"{float(v):.{digits}f}"
    return str(v)


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """A GitHub-flavoured markdown table of ``df`` (no extra dependency)."""
    if index:
        df = df.reset_index()
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, digits).replace("|", "/") for v in row) + " |")
    return "\n".join(lines)


def check_experiment_out(path: Path, *, flag: str = "--out", force: str = "pass --force-out") -> None:
    """Refuse to spread an experiment's files among a user's: a BenchError when ``path`` is a folder
    that holds files but no earlier experiment's ``results.json`` (a new or empty folder, or an
    experiment's own folder, to run it again, passes)."""
    if not path.is_dir():
        return
    try:
        earlier = json.loads((path / "results.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        earlier = None
    if isinstance(earlier, dict) and "experiment" in earlier:
        return
    refuse_other_files(path, flag=flag, lacks="no experiment's results.json", force=force, what="the experiment")


def write_results(out: Path, results: Mapping[str, Any]) -> Path:
    """``out/results.json``, written atomically."""
    path = out / "results.json"
    check_interrupt()  # an experiment a library let run on after Ctrl-C writes nothing
    atomic_write_json(path, results, indent=2)
    return path


def write_report(out: Path, title: str, blocks: Sequence[str], config: Mapping[str, Any]) -> Path:
    """``out/report.md``: the title, the blocks (markdown) and a reproducibility footer."""
    cfg = "\n".join(f"- {k}: `{jsonable(v)}`" for k, v in config.items())
    text = "\n\n".join([f"# {title}", *blocks, "## Configuration", cfg,
                        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}; versions: "
                        + ", ".join(f"{k} {v}" for k, v in package_versions().items())]) + "\n"
    path = out / "report.md"
    check_interrupt()
    atomic_write_text(path, text)
    return path


def figure_link(name: str, caption: str) -> str:
    return f"![{caption}]({name})\n\n*{caption}*"


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path, name: str) -> str:
    check_interrupt()
    with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(name).suffix.lstrip(".") or None)
    pyplot().close(fig)
    return name

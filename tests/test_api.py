"""The notebook API: the README's example runs as written, resumes, and refuses another dataset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from causcell_bench.errors import BenchError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## In a notebook"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_notebook_example_runs(tmp_path: Path) -> None:
    code = _readme_example()
    assert "cb.benchmark(" in code
    # run as a notebook would (no __main__ guard: spawned cells must cope), in a scratch directory
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CAUSCELL_BENCH_THREADS": "1"}, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "group_mean" in out.stdout and "overall" in out.stdout
    report = tmp_path / "runs" / "notebook" / "report"
    assert (report / "index.html").is_file() and list(report.glob("heatmap_*.png"))


def test_benchmark_resumes_and_refuses_other_data(tmp_path: Path) -> None:
    import causcell_bench as cb
    from causcell_bench.datasets import load

    adata, spec = load("synthetic", n_cells=300, n_genes=40)
    kw = dict(concepts=spec.concepts, dag=spec.edges, methods=["positive_control", "group_mean"], settings=["ID"],
              folds=[0], n_folds=3, out=tmp_path, progress=False, report=False, start_method="fork")
    first = cb.benchmark(adata, **kw)
    assert set(first.scores["method"]) == {"positive_control", "group_mean"}
    assert (first.status["status"] == "ok").all()
    again = cb.benchmark(adata, **kw)  # nothing left to run: same tables
    assert again.results.equals(first.results)
    with pytest.raises(BenchError, match="another dataset"):
        cb.benchmark(adata[:200].copy(), **kw)
    with pytest.raises(BenchError, match="not in adata.obs"):
        cb.benchmark(adata, **{**kw, "concepts": ["nope"]})

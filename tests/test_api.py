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


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_readme_notebook_example_runs(tmp_path: Path, how: str) -> None:
    code = _readme_example()
    assert "cb.benchmark(" in code
    # unchanged, with no __main__ guard: as a script file and fed on stdin (cell processes must not
    # re-run the caller's script), in a scratch directory
    (tmp_path / "snippet.py").write_text(code)
    args, stdin = ([sys.executable, "snippet.py"], None) if how == "script" else ([sys.executable, "-"], code)
    out = subprocess.run(args, input=stdin, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CAUSCELL_BENCH_THREADS": "1"}, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "group_mean" in out.stdout and "overall" in out.stdout
    assert "cell failed" not in out.stderr
    report = tmp_path / "runs" / "notebook" / "report"
    assert (report / "index.html").is_file() and list(report.glob("heatmap_*.png"))
    assert (tmp_path / "heatmap.png").is_file()


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


def _small(tmp_path: Path) -> tuple:
    from causcell_bench.datasets import load

    adata, spec = load("synthetic", n_cells=300, n_genes=40)
    kw = dict(concepts=spec.concepts, dag=spec.edges, methods=["positive_control", "group_mean"], settings=["ID"],
              folds=[0], n_folds=3, out=tmp_path / "run", progress=False, report=False)
    return adata, kw


@pytest.mark.parametrize(("change", "message"), [
    ({"seeds": [-1]}, "seed -1 is out of range"),
    ({"methods": ["scVI"], "params": {"scVI": {"n_latnt": 5}}}, "Did you mean n_latent"),
    ({"methods": ["scVI"], "params": {"scVI": {"n_latent": -5}}}, "n_latent must be >= 1"),
    ({"methods": ["scVI"], "params": {"scVI": {"val_fraction": 1.5}}}, r"val_fraction must be in \[0, 1\)"),
    ({"jobs": 0}, "jobs: .*greater than or equal to 1"),
    ({"preset": "fast"}, "unknown preset 'fast'"),
    ({"settings": "XX"}, "settings"),
    ({"folds": [7]}, r"fold\(s\) \[7\] out of range 0..2"),
    ({"concepts": "age,nope"}, r"\['nope'\] not in adata.obs"),
    ({"start_method": "thread"}, "start_method='thread'"),
    ({"settings": ["OOD"], "n_folds": 50}, "cannot make the OOD splits .*fewer than the 50 folds"),
    ({"cell_parts": 40}, "--cell-parts 40: the ID test cells"),
])
def test_benchmark_refuses_what_the_cli_refuses_before_writing(tmp_path: Path, change: dict, message: str) -> None:
    import causcell_bench as cb

    adata, kw = _small(tmp_path)
    with pytest.raises(cb.BenchError, match=message):
        cb.benchmark(adata, **{**kw, **change})
    assert not (tmp_path / "run").exists()


def test_a_concept_column_of_mixed_types_is_named(tmp_path: Path) -> None:
    import causcell_bench as cb

    adata, kw = _small(tmp_path)
    adata.obs["age"] = [1 if i % 2 else "old" for i in range(adata.n_obs)]
    with pytest.raises(cb.BenchError, match=r"concept column 'age' mixes value types \(int, str\)"):
        cb.benchmark(adata, **kw)


def test_one_concept_as_a_string_is_one_concept(tmp_path: Path) -> None:
    import causcell_bench as cb

    adata, kw = _small(tmp_path)
    res = cb.benchmark(adata, **{**kw, "concepts": "celltype", "dag": None})
    assert len(res.failed) == 0
    per_concept = {m.split(":", 1)[1] for m in res.results["metric"] if ":" in m}
    assert "celltype" in per_concept and not per_concept & {"c", "e", "age", "domain"}


def test_changed_labels_in_the_same_out_are_refused(tmp_path: Path) -> None:
    import causcell_bench as cb

    adata, kw = _small(tmp_path)
    cb.benchmark(adata, **kw)
    relabelled = adata.copy()
    relabelled.obs["age"] = relabelled.obs["age"].to_numpy()[::-1]  # same counts, other labels
    with pytest.raises(cb.BenchError, match="another dataset .*concept labels.*delete"):
        cb.benchmark(relabelled, **kw)


def test_failed_cells_warn_raise_and_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import causcell_bench as cb
    from causcell_bench.methods.references import GroupMean

    adata, kw = _small(tmp_path)
    kw["start_method"] = "fork"  # the patched fit reaches the forked cell processes

    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(GroupMean, "fit", boom)
    with pytest.warns(UserWarning, match=r"cell failed: group_mean/ID/fold0/seed0: .*boom.*retry_failed=True"):
        res = cb.benchmark(adata, **kw)
    assert list(res.failed["method"]) == ["group_mean"] and "failed" in repr(res)
    assert set(res.results["method"]) == {"positive_control"}
    with pytest.raises(cb.BenchError, match="every cell failed .*boom"):
        cb.benchmark(adata, **{**kw, "methods": ["group_mean"]})
    monkeypatch.undo()
    fixed = cb.benchmark(adata, **{**kw, "retry_failed": True})
    assert len(fixed.failed) == 0 and set(fixed.results["method"]) == {"positive_control", "group_mean"}


def test_a_cell_interrupt_a_library_swallowed_is_named_and_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C reaching a cell's process, caught there by a library that carries on (as Lightning does):
    the cell is not scored as a finished fit; the call names it, and calling again reruns it."""
    import os
    import signal

    import causcell_bench as cb
    from causcell_bench.methods.references import GroupMean

    adata, kw = _small(tmp_path)
    kw["start_method"] = "fork"
    fit = GroupMean.fit

    def swallowing(self: object, *args: object, **kwargs: object) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(GroupMean, "fit", swallowing)
    with pytest.warns(UserWarning, match=r"cell interrupted: group_mean/ID/fold0/seed0: .*calling again reruns it"):
        res = cb.benchmark(adata, **kw)
    assert list(res.failed["status"]) == ["interrupted"] and "group_mean" not in set(res.results["method"])
    monkeypatch.undo()
    again = cb.benchmark(adata, **kw)
    assert len(again.failed) == 0 and "group_mean" in set(again.results["method"])


def test_plot_writes_exactly_the_path_and_returns_the_figure(tmp_path: Path) -> None:
    import matplotlib.figure

    import causcell_bench as cb

    adata, kw = _small(tmp_path)
    res = cb.benchmark(adata, **kw)
    fig = res.plot(tmp_path / "figs" / "fig.pdf")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["fig.pdf"]
    assert (tmp_path / "figs" / "fig.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(cb.BenchError, match="give a file name with an extension"):
        res.plot(tmp_path / "figs")


def test_the_api_is_documented_and_listed() -> None:
    import causcell_bench as cb

    assert {"benchmark", "BenchmarkResult", "BenchError"} <= set(dir(cb))
    doc = cb.benchmark.__doc__
    for section in ("Parameters", "Returns", "Raises", "retry_failed", "cell_parts", "truth_samples", "probe",
                    "cf_concept"):
        assert section in doc
    assert "Attributes" in cb.BenchmarkResult.__doc__


def test_a_heatmap_that_cannot_be_drawn_is_said_not_swallowed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import causcell_bench as cb
    import causcell_bench.leaderboard as leaderboard
    import causcell_bench.leaderboard.report as report

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("x")  # what funkyheatmappy raised on a one-method run

    monkeypatch.setattr(report, "heatmap", broken)
    monkeypatch.setattr(leaderboard, "heatmap", broken)
    adata, kw = _small(tmp_path)
    with pytest.warns(UserWarning, match=r"the heatmap could not be drawn \(KeyError: 'x'.*tables and leaderboard are complete"):
        res = cb.benchmark(adata, **{**kw, "report": True})
    assert (res.run_dir / "report" / "summary.csv").is_file()
    with pytest.raises(cb.BenchError, match=r"the heatmap could not be drawn \(KeyError: 'x'\)"):
        res.plot(tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()


_AFTER_SCANPY = """
import sys
import numpy as np
if sys.argv[1] == "scanpy-first":
    import numba  # numba-parallel code (scanpy's, say) run before causcell_bench is imported

    @numba.njit(parallel=True)
    def total(x):
        s = 0.0
        for i in numba.prange(x.shape[0]):
            s += x[i]
        return s

    total(np.ones(1000))
import causcell_bench as cb
from causcell_bench.datasets import load
from causcell_bench.datasets.preprocess import select_hvg
adata, spec = load("synthetic", n_cells=300, n_genes=40)
select_hvg(adata.X, 20)  # the parent runs numba's parallel kernels (scanpy's HVG), then forks cells
import numba
print("layer", numba.threading_layer())
try:
    res = cb.benchmark(adata, concepts=spec.concepts, methods=["group_mean"], settings=["ID"], folds=[0], n_folds=3,
                       out=sys.argv[2], progress=False, report=False, start_method="fork")
    print("status", *res.status["status"])
except cb.BenchError as e:
    print("refused", e)
"""


@pytest.mark.parametrize("order", ["causcell-bench-first", "scanpy-first"])
def test_cells_forked_after_numba_parallel_code_survive_or_are_refused(tmp_path: Path, order: str) -> None:
    """numba's OpenMP layer terminates a forked child that runs a parallel kernel: every cell of a
    second benchmark() call in a notebook (after the first call's HVG selection) died 'interrupted'."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env.update(CAUSCELL_BENCH_THREADS="2", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _AFTER_SCANPY, order, str(tmp_path / "run")], capture_output=True,
                         text=True, timeout=300, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    if order == "causcell-bench-first":
        assert "layer workqueue" in out.stdout and "status ok" in out.stdout, out.stdout + out.stderr[-2000:]
    else:  # the OpenMP layer was already running: refused up front with the fixes, not cells dying one by one
        assert "layer omp" in out.stdout, out.stdout
        assert "refused numba's OpenMP threading layer is already running" in out.stdout
        assert "import causcell_bench first" in out.stdout


# Every field of the run request, and where each entry point takes it (issue 30: an option is declared
# once, in RunConfig, and the CLI flag and the API keyword must follow it). A field added to RunConfig
# without a row here fails the test below until both entry points take it (or it is named internal).
REQUEST_FIELDS = {
    # field: (CLI `run` parameter(s), benchmark() parameter(s))
    "datasets": (("dataset",), ("adata", "name")),
    "methods": (("methods",), ("methods",)),
    "settings": (("settings",), ("settings",)),
    "n_folds": (("n_folds",), ("n_folds",)),
    "folds": (("folds",), ("folds",)),
    "seeds": (("seeds",), ("seeds",)),
    "preset": (("preset",), ("preset",)),
    "device": (("device",), ("device",)),
    "jobs": (("jobs",), ("jobs",)),
    "threads": (("threads",), ("threads",)),
    "dataset_kwargs": (("n_cells", "n_genes"), ("counts_layer", "fine_labels", "perturbation")),
    "method_params": (("param",), ("params",)),
    "concepts": (("concepts",), ("concepts",)),
    "edges": (("dag",), ("dag",)),
    "n_hvg": (("n_hvg",), ("n_hvg",)),
    "data_dir": (("data_dir",), ()),  # the API is given the AnnData itself
    "probe": (("probe",), ("probe",)),
    "holdout": (("holdout",), ("holdout",)),
    "cf_concept": (("cf_concept",), ("cf_concept",)),
    "truth_samples": (("truth_samples",), ("truth_samples",)),
    "cell_parts": (("cell_parts",), ("cell_parts",)),
}
INTERNAL_FIELDS = {"split_seed", "counterfactual"}  # set by the code, not by a user
# options of the run itself (not of the request), in both entry points under the same names
RUN_OPTIONS = {"retry_failed", "start_method", "out", "force_out", "report"}


def test_every_request_field_is_taken_by_the_cli_and_the_api_with_the_same_default() -> None:
    import inspect

    from causcell_bench.api import benchmark
    from causcell_bench.cli.grid import run
    from causcell_bench.config import RunConfig

    fields = RunConfig.model_fields
    assert set(fields) == set(REQUEST_FIELDS) | INTERNAL_FIELDS, "a RunConfig field the entry points do not take"
    cli, api = inspect.signature(run).parameters, inspect.signature(benchmark).parameters
    for field, (cli_names, api_names) in REQUEST_FIELDS.items():
        assert set(cli_names) <= set(cli) and set(api_names) <= set(api), field
    assert RUN_OPTIONS <= set(cli) and RUN_OPTIONS <= set(api)
    # where a field is one option of the same name, its default is the request's own in both
    for field, (cli_names, api_names) in REQUEST_FIELDS.items():
        if fields[field].is_required() or field == "concepts":  # methods: no default of its own (the
            continue  # entry points' "all"); concepts: required by the API (an AnnData has no spec)
        default = fields[field].get_default(call_default_factory=True)
        if cli_names == api_names == (field,) and not isinstance(default, list):
            assert cli[field].default == default == api[field].default, field
    assert cli["methods"].default == api["methods"].default == "all"
    for field, parse in (("seeds", lambda v: [int(x) for x in v.split(",")]), ("settings", lambda v: v.split(","))):
        default = fields[field].get_default(call_default_factory=True)
        assert parse(cli[field].default) == list(api[field].default) == default, field

"""Progress inside a cell, shown by the grid's process; third-party output kept in the cell's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from causcell_bench.methods.base import Progress as Report
from causcell_bench.progress import CellProgressWriter, ProgressMonitor, describe, progress_path
from causcell_bench.store import CellKey

KEY = CellKey("synthetic", "CausCell", "ID", 0, 0)


def test_monitor_prints_a_line_per_running_cell_in_a_pipe(tmp_path: Path) -> None:
    lines: list[str] = []
    mon = ProgressMonitor(tmp_path, None, lines.append, interactive=False, line_every=0.0)
    mon.started(KEY)
    mon.poll()
    assert lines == [f"  {KEY}: starting"]
    CellProgressWriter(tmp_path, KEY)(Report(300, 1500, "steps", "training", 0.25))
    mon.poll()
    assert "training 300/1500 steps, loss 0.25" in lines[-1]
    mon.finished(KEY)
    assert not progress_path(tmp_path, KEY).exists()
    mon.poll()
    assert len(lines) == 2  # nothing running, nothing printed


def test_monitor_draws_a_bar_per_cell_in_a_terminal(tmp_path: Path) -> None:
    console = Console(file=open(os.devnull, "w"), force_terminal=True)  # noqa: SIM115 - closed with the console
    with Progress(console=console) as bar:
        mon = ProgressMonitor(tmp_path, bar, print, interactive=True)
        mon.started(KEY)
        CellProgressWriter(tmp_path, KEY)(Report(3, 10, "epochs", "training", None))
        mon.poll()
        (task,) = [t for t in bar.tasks if "CausCell" in t.description]
        assert task.completed == 3 and task.total == 10 and "3/10 epochs" in task.description
        mon.finished(KEY)
        assert not [t for t in bar.tasks if "CausCell" in t.description]


def test_describe_gives_an_eta() -> None:
    p = {"done": 50, "total": 100, "unit": "steps", "what": "training", "loss": None, "time": 110.0, "started": 100.0}
    assert describe(p) == "training 50/100 steps, ETA 10s"
    assert describe(None) == "starting"


def test_the_eta_ignores_the_start_up_before_the_first_report(tmp_path, monkeypatch) -> None:
    """A first epoch that takes 20 s (JAX compiling scGen's step) must not make 149 epochs of 0.1 s
    look like 50 minutes; a second phase (MichiGAN's GAN) gets a rate of its own."""
    clock = iter([0.0, 20.0, 20.1, 21.0, 40.0, 41.0, 42.0])
    monkeypatch.setattr("causcell_bench.progress.time.time", lambda: next(clock))
    w = CellProgressWriter(tmp_path, KEY)

    def report(done: int, total: int, what: str) -> None:
        w(Report(done=done, total=total, unit="epochs", what=what))

    report(1, 150, "training")  # t=20: set-up and the first epoch
    assert "ETA" not in describe(json.loads(w.path.read_text()))  # one report: no rate yet
    report(2, 150, "training")  # t=20.1
    report(11, 150, "training")  # t=21: 10 epochs in 1 s
    assert describe(json.loads(w.path.read_text())).endswith("ETA 14s")  # 139 x 0.1 s, not 139 x 1.9 s
    report(0, 100, "GAN")  # t=40: a new phase starts its own clock
    report(10, 100, "GAN")  # t=41: 10 steps in 1 s
    assert describe(json.loads(w.path.read_text())).endswith("ETA 9s")


def test_cell_output_goes_to_its_log(tmp_path: Path) -> None:
    code = ("import os, sys, warnings\n"
            "from causcell_bench.progress import cell_output_to\n"
            f"with cell_output_to({str(tmp_path / 'cell.log')!r}):\n"
            "    print('lightning bar'); os.write(2, b'c-level\\n'); warnings.warn('noisy')\n"
            "print('after')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "after\n" and "noisy" not in out.stderr and "c-level" not in out.stderr
    log = (tmp_path / "cell.log").read_text()
    assert "lightning bar" in log and "c-level" in log and "noisy" in log


def test_a_grid_in_a_pipe_shows_no_third_party_output(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "causcell-bench"), "run", "--methods", "negative_control,scVI",
         "--dataset", "synthetic", "--n-cells", "300", "--n-genes", "60", "--folds", "0", "--settings", "ID",
         "--param", "scVI.max_epochs=3", "--out", str(tmp_path / "run"), "--no-report"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "CAUSCELL_BENCH_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    terminal = out.stdout + out.stderr
    for noise in ("GPU available", "Epoch", "LOCAL_RANK", "Warning"):
        assert noise not in terminal, f"{noise!r} reached the terminal:\n{terminal[-2000:]}"
    assert all(p.stat().st_size > 0 for p in (tmp_path / "run").rglob("*.log"))  # quiet cells leave none

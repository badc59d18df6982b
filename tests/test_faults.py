"""Faults (issue #31 points 1-2). A full, failing or read-only disk while writing any file: one line
naming the file, its folder and the free space, exit 1, and no partial file left; the failures are
injected (an OSError, or a library's own wrapping of one), and on a real 1 MB tmpfs where the test
may mount one. Ctrl-C or SIGTERM anywhere in a command: "interrupted", exit 130, and nothing saved
or a complete model, even when a library swallows the KeyboardInterrupt."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from causcell_bench.cli import app
from causcell_bench.errors import DiskError
from causcell_bench.fileio import atomic_dir, atomic_path, atomic_write_text

TINY = ["--n-cells", "300", "--n-genes", "60"]
# what torch.save raises on a full disk: the OSError's text inside its own RuntimeError
TORCH_FULL = "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def _half_then(err: BaseException):
    def write(target: Path) -> None:
        Path(target).write_bytes(b"x" * 5000)  # part of the file made it to disk
        raise err
    return write


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), OSError(errno.EIO, "I/O error"),
                                 OSError(errno.EROFS, os.strerror(errno.EROFS)), RuntimeError(TORCH_FULL)])
def test_atomic_path_names_the_file_and_leaves_nothing(tmp_path: Path, err: BaseException) -> None:
    target = tmp_path / "out" / "cf.h5ad"
    with pytest.raises(DiskError) as info, atomic_path(target) as tmp:
        _half_then(err)(tmp)
    msg = str(info.value)
    assert "cf.h5ad" in msg and str(target.parent) in msg and "free" in msg and "written before it failed" in msg
    assert "\n" not in msg
    assert ("free some space" in msg) != (getattr(err, "errno", None) == errno.EROFS)  # nothing to free on a read-only disk
    assert not target.exists() and _leftovers(tmp_path) == []


def test_the_split_files_of_a_run_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit found save_splits with its own fixed-name .tmp: left behind on a full disk, and the
    message without folder or free space."""
    from causcell_bench import fileio
    from causcell_bench.datasets import load_splits, make_splits, save_splits, simulate, synthetic_spec

    adata = simulate(n_cells=300, n_genes=20, seed=0)
    spl = make_splits(adata, synthetic_spec(), "ID", n_folds=2, seed=0)
    save_splits(spl, tmp_path / "splits" / "ID.json")
    assert len(load_splits(tmp_path / "splits" / "ID.json", adata)) == 2

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "replace", full)
    with pytest.raises(DiskError, match=r"cannot write OOD.json in .*splits: no space left on device \(.* free"):
        save_splits(spl, tmp_path / "splits" / "OOD.json")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["ID.json"]


def test_other_errors_pass_through_and_a_good_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(ValueError, match="not a disk problem"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("not a disk problem")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _leftovers(tmp_path) == []


def test_atomic_dir_keeps_the_old_save_when_the_new_one_fails(tmp_path: Path) -> None:
    model = tmp_path / "method"
    with atomic_dir(model) as d:
        (d / "state.pkl").write_text("old")
    with pytest.raises(DiskError, match="method"), atomic_dir(model) as d:
        _half_then(RuntimeError(TORCH_FULL))(d / "state.pkl")
    assert (model / "state.pkl").read_text() == "old" and _leftovers(tmp_path) == []


def test_saving_into_a_folder_keeps_its_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "state.pkl").write_text("old")
    with atomic_dir(folder, last=("method.json",)) as d:
        (d / "state.pkl").write_text("new")
        (d / "method.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["method.json", "notes.txt", "state.pkl"]
    assert (folder / "state.pkl").read_text() == "new" and _leftovers(tmp_path) == []


def test_counterfactual_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anndata import AnnData

    r = CliRunner().invoke(app, ["train", "--method", "group_mean", *TINY, "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.stderr
    monkeypatch.setattr(AnnData, "write_h5ad", lambda self, f, **k: _half_then(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))(f))
    out = tmp_path / "cf"
    r = CliRunner().invoke(app, ["counterfactual", str(tmp_path / "m"), "--do", "age=age_1", "--out",
                                 str(out / "cf.h5ad")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "cf.h5ad" in r.stderr and "no space left on device" in r.stderr and "free" in r.stderr
    assert not (out / "cf.h5ad").exists() and _leftovers(tmp_path) == []


def test_train_on_a_full_disk_leaves_nothing_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from causcell_bench.methods.references import GroupMean

    monkeypatch.setattr(GroupMean, "_save_state", lambda self, path: _half_then(RuntimeError(TORCH_FULL))(
        Path(path) / "state.pkl"))
    args = ["train", "--method", "group_mean", *TINY, "--out", str(tmp_path / "m")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot write method in" in r.stderr and "full or failing disk" in r.stderr
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    r = CliRunner().invoke(app, args)  # the next train needs no --overwrite
    assert r.exit_code == 0, r.stderr


def test_report_on_a_full_disk_leaves_no_truncated_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    r = CliRunner().invoke(app, ["run", "--methods", "positive_control,group_mean", "--folds", "0", "--settings", "ID",
                                 "--no-report", *TINY, "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.stderr
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, f, **k: _half_then(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))(f))
    rep = tmp_path / "rep"
    r = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(rep)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "heatmap_synthetic" in r.stderr and "no space left on device" in r.stderr
    assert not list(rep.glob("heatmap*")) and _leftovers(tmp_path) == []


def test_a_real_full_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the injected errors cover the logic")
    try:
        with pytest.raises(DiskError, match=r"big.txt in .*small: no space left on device \(.*free"):
            atomic_write_text(mnt / "big.txt", "x" * 3_000_000)
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


CLI = str(Path(sys.executable).with_name("causcell-bench"))


SWALLOWING_PATCH = """
import os, signal, sys
from causcell_bench.methods.controls import NegativeControl
from causcell_bench.methods.references import GroupMean

def swallowing(fit):
    def wrapped(self, *a, **k):  # a library that catches the KeyboardInterrupt and carries on
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return fit(self, *a, **k)
    return wrapped

GroupMean.fit = swallowing(GroupMean.fit)
NegativeControl.fit = swallowing(NegativeControl.fit)
"""


def _run_script(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``text`` as a script in its own process: signals reach only the main thread, and a test
    worker may not run tests there."""
    (tmp_path / "script.py").write_text(text)
    return subprocess.run([sys.executable, str(tmp_path / "script.py"), *args], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "CAUSCELL_BENCH_THREADS": "1"})


def test_a_swallowed_interrupt_ends_the_command_and_saves_nothing(tmp_path: Path) -> None:
    r = _run_script(tmp_path, SWALLOWING_PATCH + "from causcell_bench.cli import app\napp(sys.argv[1:])\n",
                    "train", "--method", "group_mean", *TINY, "--out", str(tmp_path / "m"))
    assert r.returncode == 130 and r.stderr.strip() == "interrupted", r.stderr[-2000:]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("sig", "after"), [(signal.SIGINT, 1.0), (signal.SIGINT, 12.0), (signal.SIGINT, 25.0),
                                          (signal.SIGTERM, 12.0)])
def test_interrupting_train_anywhere(tmp_path: Path, sig: int, after: float) -> None:
    """While loading (1 s), inside scvi-tools' training loop, where Lightning turns Ctrl-C into
    SystemExit(1) and JAX's garbage-collector callback can receive it (12 and 25 s; the whole command
    takes about a minute): exit 130, 'interrupted', no traceback, and no model directory or a complete one."""
    out = tmp_path / "m"
    env = {**os.environ, "CAUSCELL_BENCH_THREADS": "1"}
    proc = subprocess.Popen([CLI, "train", "--method", "scVI", "--n-cells", "600", "--n-genes", "100", "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(after)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and "Exception raised during training" not in err
    assert not out.exists() or (out / "manifest.json").is_file()


TYPER_SILENT = """
import os, signal, sys
import causcell_bench.cli
from causcell_bench import entry

def app():  # as typer does outside a command's body: Ctrl-C becomes a silent exit 130
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        raise SystemExit(130)

causcell_bench.cli.app = app
entry.main()
"""


def test_an_interrupt_typer_turns_into_a_silent_exit_is_still_named(tmp_path: Path) -> None:
    # the auditor's case: Ctrl-C 0.35-0.5 s after start exited 130 with nothing on stderr
    r = _run_script(tmp_path, TYPER_SILENT)
    assert r.returncode == 130 and r.stderr == "interrupted\n", r.stderr[-2000:]


def test_a_cell_whose_interrupt_a_library_swallowed_is_recorded_as_interrupted_not_ok(tmp_path: Path) -> None:
    """The cell's own process gets the Ctrl-C (a terminal signals the whole process group) and the
    library carries on: the cell must not be stored as an ok result of a cut-short fit."""
    out = tmp_path / "run"
    r = _run_script(tmp_path, SWALLOWING_PATCH + "from causcell_bench.cli import app\napp(sys.argv[1:])\n",
                    "run", "--methods", "group_mean", "--dataset", "synthetic", *TINY, "--settings", "ID",
                    "--folds", "0", "--start-method", "fork", "--out", str(out))
    records = [json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")]
    assert [rec["status"] for rec in records] == ["interrupted"], (r.stderr[-2000:], records)
    assert r.returncode == 1 and "1 interrupted" in r.stderr, r.stderr[-2000:]  # nothing to show: not a success


def test_an_experiment_whose_interrupt_a_library_swallowed_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    r = _run_script(tmp_path, SWALLOWING_PATCH + "from causcell_bench.entry import main\nmain()\n",
                    "experiment", "causal_consistency", "--out", str(out), "--methods", "negative_control",
                    "--device", "cpu", "--set", "n_cells=300", "--set", "n_genes=40", "--set", 'values=["age_1"]')
    assert r.returncode == 130 and r.stderr.strip().endswith("interrupted"), r.stderr[-2000:]
    assert not (out / "results.json").exists() and not (out / "report.md").exists()

"""A full, failing or read-only disk while writing any file: one line naming the file, its folder and
the free space, exit 1, and no partial file left (issue #31 point 1). The failures are injected (an
OSError, or a library's own wrapping of one), and on a real 1 MB tmpfs where the test may mount one."""

from __future__ import annotations

import errno
import os
import subprocess
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
    assert not target.exists() and _leftovers(tmp_path) == []


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

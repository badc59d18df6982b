"""`causcell-bench download` against a local HTTP server that answers as Zenodo's API does (no internet in
CI): files land where the loader looks, checksums are checked, a partial download resumes with a Range
request, and failures are one line."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causcell_bench.cli import app
from causcell_bench.datasets.loaders import find_paper_files


class _Zenodo(http.server.BaseHTTPRequestHandler):
    # what the server holds and what it was asked, set by the fixture
    files: ClassVar[dict[str, bytes]] = {}
    checksums: ClassVar[dict[str, str]] = {}
    ranges: ClassVar[list[str]] = []
    fetched: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # the http.server API names it so
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/records/42":
            body = json.dumps({"id": 42, "files": [
                {"key": n, "size": len(b), "checksum": f"md5:{self.checksums[n]}",
                 "links": {"self": f"{host}/api/records/42/files/{n}/content"}} for n, b in self.files.items()]}).encode()
            self._send(200, body, "application/json")
            return
        name = self.path.removeprefix("/api/records/42/files/").removesuffix("/content")
        if name not in self.files:
            self._send(404, b"not found", "text/plain")
            return
        self.fetched.append(name)
        data, rng = self.files[name], self.headers.get("Range")
        if rng:
            self.ranges.append(rng)
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self._send(206, data[start:], "application/octet-stream",
                       {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        else:
            self._send(200, data, "application/octet-stream")

    def _send(self, code: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def zenodo(tmp_path: Path) -> Iterator[str]:
    """A record with the authors' MERFISH pair (small h5ad files) and another dataset's file."""
    files = {}
    rng = np.random.default_rng(0)
    for part in ("training", "testing"):
        a = anndata.AnnData(rng.poisson(1.0, (30, 10)).astype(np.float32),
                            obs=pd.DataFrame({"Age": ["0"] * 30}, index=[f"{part}{i}" for i in range(30)]))
        a.write_h5ad(tmp_path / "src.h5ad")
        files[f"Merfish_Brain_{part}_data.h5ad"] = (tmp_path / "src.h5ad").read_bytes()
    files["Immun_atlas_training_data.h5ad"] = b"another dataset"
    _Zenodo.files = files
    _Zenodo.checksums = {n: hashlib.md5(b).hexdigest() for n, b in files.items()}
    _Zenodo.ranges, _Zenodo.fetched = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Zenodo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/records/42"
    server.shutdown()


def _download(url: str, data_dir: Path) -> object:
    return CliRunner().invoke(app, ["download", "MERFISH_Brain", "--url", url, "--data-dir", str(data_dir)])


def test_download_puts_checked_files_where_the_loader_looks(zenodo: str, tmp_path: Path) -> None:
    r = _download(zenodo, tmp_path / "data")
    assert r.exit_code == 0, r.stderr
    folder = tmp_path / "data" / "MERFISH_Brain"
    assert sorted(p.name for p in folder.iterdir()) == ["Merfish_Brain_testing_data.h5ad",
                                                        "Merfish_Brain_training_data.h5ad"]
    for p in folder.iterdir():
        assert p.read_bytes() == _Zenodo.files[p.name]
    assert {p.name for p in find_paper_files("MERFISH_Brain", tmp_path / "data")} == {
        "Merfish_Brain_training_data.h5ad", "Merfish_Brain_testing_data.h5ad"}
    assert sorted(_Zenodo.fetched) == sorted(p.name for p in folder.iterdir())  # the other dataset's file is left
    # again: complete files (size and checksum of the record) are kept, nothing is fetched
    _Zenodo.fetched = []
    assert _download(zenodo, tmp_path / "data").exit_code == 0
    assert _Zenodo.fetched == []


def test_a_partial_download_resumes_with_a_range_request(zenodo: str, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "MERFISH_Brain"
    folder.mkdir(parents=True)
    name = "Merfish_Brain_training_data.h5ad"
    half = len(_Zenodo.files[name]) // 2
    (folder / f"{name}.part").write_bytes(_Zenodo.files[name][:half])
    r = _download(zenodo, tmp_path / "data")
    assert r.exit_code == 0, r.stderr
    assert _Zenodo.ranges == [f"bytes={half}-"]
    assert (folder / name).read_bytes() == _Zenodo.files[name] and not (folder / f"{name}.part").exists()


def test_a_corrupt_download_is_deleted_and_said(zenodo: str, tmp_path: Path) -> None:
    name = "Merfish_Brain_testing_data.h5ad"
    _Zenodo.checksums[name] = "0" * 32
    r = _download(zenodo, tmp_path / "data")
    assert r.exit_code == 2
    assert "does not match the record's checksum" in r.stderr and "Traceback" not in r.output + r.stderr
    assert not list((tmp_path / "data" / "MERFISH_Brain").glob(f"{name}*"))  # neither the file nor its part


def test_download_failures_are_one_line(zenodo: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["download", "Limb_development", "--url", zenodo, "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "has no file of Limb_development" in r.stderr
    r = _download("http://127.0.0.1:9/api/records/1", tmp_path)  # nothing listens on port 9
    assert r.exit_code == 2 and "cannot reach the server" in r.stderr and "resumes" in r.stderr
    r = _download(zenodo.replace("/42", "/7"), tmp_path)
    assert r.exit_code == 2 and "answered 404" in r.stderr

"""Fetch a paper dataset's files from the CausCell authors' Zenodo record, resumably and checked.

The record's file list comes from Zenodo's REST API (``/api/records/<id>``: each file's name, size,
``md5:`` checksum and download link). The files whose names start with one of the dataset's stems
(``Merfish_Brain_training_data.h5ad``...) are downloaded into ``<data dir>/<dataset>/``, where
:func:`~causcell_bench.datasets.loaders.find_paper_files` looks. Each file is written to
``<name>.part`` and renamed into place only once its size and checksum match, so a file under its
own name is always complete; an interrupted download leaves the ``.part`` file, and the next call
asks the server for the missing bytes only (an HTTP Range request).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causcell_bench.errors import BenchError

ZENODO_API = "https://zenodo.org/api/records/{record}"
CHUNK = 1 << 20

__all__ = ["ZENODO_API", "RemoteFile", "download_dataset", "record_files"]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a record: its name, size in bytes, md5 (hex, or None if the record gives none) and URL."""

    name: str
    size: int | None
    md5: str | None
    url: str


def _open(request: urllib.request.Request | str, what: str) -> Any:
    try:
        return urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        raise BenchError(f"{what}: the server answered {e.code} {e.reason}; check the record id and try again later") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BenchError(f"{what}: cannot reach the server ({reason}); check the connection (this machine may have "
                         "no internet access) and run the command again: a partial download resumes") from None


def record_files(record: str, api_url: str | None = None) -> list[RemoteFile]:
    """The files of a Zenodo record, from its REST API (``api_url`` overrides the address: a mirror, a test)."""
    url = api_url or ZENODO_API.format(record=record)
    with _open(url, f"reading the file list of record {record} ({url})") as r:
        try:
            meta = json.loads(r.read().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BenchError(f"{url} did not return a record's JSON ({e}); check the address") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if isinstance(files, dict):  # older API versions nest the list under "entries"
        files = files.get("entries")
    if not isinstance(files, list):
        raise BenchError(f"{url} lists no files (no 'files' in its JSON); check the record id")
    out = []
    for f in files:
        links = f.get("links") or {}
        link = links.get("content") or links.get("download") or links.get("self")
        name = f.get("key") or f.get("filename")
        if not name or not link:
            continue
        checksum = str(f.get("checksum") or "")
        out.append(RemoteFile(str(name), int(f["size"]) if f.get("size") is not None else None,
                              checksum.removeprefix("md5:") if checksum.startswith("md5:") else None, str(link)))
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5()  # the checksum Zenodo publishes, not a security measure
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(remote: RemoteFile, target: Path, advance: Callable[[int], None]) -> None:
    """Download ``remote`` to ``target`` through ``target.part``, resuming what the part file holds."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and have > remote.size:  # not a prefix of this file
        part.unlink()
        have = 0
    request = urllib.request.Request(remote.url, headers={"Range": f"bytes={have}-"} if have else {})
    with _open(request, f"downloading {remote.name}") as r:
        resumed = have and getattr(r, "status", 200) == 206
        if have and not resumed:  # the server sent the whole file: start over
            have = 0
        advance(have)
        try:
            with part.open("ab" if resumed else "wb") as out:
                for block in iter(lambda: r.read(CHUNK), b""):
                    out.write(block)
                    advance(len(block))
        except OSError as e:  # a full disk, say: the part file keeps what was written, for the next call
            from causcell_bench.errors import DiskError

            raise DiskError(f"cannot write {part} ({e.strerror or e}); free some space and run the command again: "
                            "it resumes from what was written") from None
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        raise BenchError(f"{remote.name}: got {size:,} of {remote.size:,} bytes (the connection dropped?); run the "
                         "command again to fetch the rest")
    if remote.md5 is not None and _md5(part) != remote.md5:
        part.unlink()
        raise BenchError(f"{remote.name}: the download does not match the record's checksum (md5 {remote.md5}); it "
                         "was deleted: run the command again")
    os.replace(part, target)


def download_dataset(name: str, dest: str | Path, *, stems: tuple[str, ...], record: str,
                     api_url: str | None = None, progress: bool = True) -> list[Path]:
    """Download the record's files of dataset ``name`` (names starting with one of ``stems``) into ``dest``.

    Files already there with the record's size and checksum are kept; a ``.part`` file left by an
    interrupted call is resumed. Returns the paths of the dataset's files."""
    files = [f for f in record_files(record, api_url)
             if any(f.name.lower().startswith(s.lower()) for s in stems) and not f.name.endswith(".part")]
    if not files:
        listed = ", ".join(f.name for f in record_files(record, api_url)[:8]) or "none"
        raise BenchError(f"record {record} has no file of {name} (names starting with {' or '.join(stems)}); its files: "
                         f"{listed}")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create {dest} ({e.strerror or e}); pass another --data-dir") from None
    todo = []
    for f in files:
        target = dest / f.name
        complete = target.is_file() and (f.size is None or target.stat().st_size == f.size) and (
            f.md5 is None or _md5(target) == f.md5)
        if not complete:
            todo.append(f)
    if todo:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        total = sum(f.size or 0 for f in todo) or None
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      disable=not progress) as bar:
            task = bar.add_task(f"{name}: {len(todo)} file(s)", total=total)
            for f in todo:
                _fetch(f, dest / f.name, lambda n: bar.advance(task, n))
    return [dest / f.name for f in files]

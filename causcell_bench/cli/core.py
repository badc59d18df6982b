"""What every command of the CLI shares: the typer app and consoles, the one error boundary
(:func:`friendly`, :func:`explain`, :func:`fail`), the options several commands declare, and the checks
that run on options before any data is loaded.

The commands live in :mod:`causcell_bench.cli.grid` and :mod:`causcell_bench.cli.model`; both import
from here and nothing imports them back but the package's ``__init__``.
"""

from __future__ import annotations

import errno
import functools
import gzip
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
from rich.console import Console
from rich.text import Text

from causcell_bench.assignments import parse_assignments
from causcell_bench.errors import BenchError, DiskError
from causcell_bench.interrupts import announce, check_interrupt, interrupted, watching
from causcell_bench.store import check_out_dir, check_writable  # noqa: F401 - the commands' import point

app = typer.Typer(
    name="causcell-bench",
    help="Benchmark disentangled representations and counterfactual generation on single-cell data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


DEBUG_ENV = "CAUSCELL_BENCH_DEBUG"
_DEBUG = {"on": False}
_SHOWN_WARNINGS: set[str] = set()


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")] = False,
) -> None:
    """Benchmark disentangled representations and counterfactual generation on single-cell data."""
    _DEBUG["on"] = debug
    _SHOWN_WARNINGS.clear()
    if not debugging():
        warnings.showwarning = _one_line_warning  # no file/line echo of Python's default format


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """A warning as the CLI shows it: ``warning: message`` on one line of stderr, once per command
    (the data are checked when loaded and again against the run's folds: one notice is enough)."""
    text = " ".join(str(message).split())
    if text in _SHOWN_WARNINGS:
        return
    _SHOWN_WARNINGS.add(text)
    err_console.print(Text.assemble(("warning: ", "yellow"), text), soft_wrap=True, highlight=False)


# --- options several commands take: declared once -------------------------------------------------
Device = Annotated[str, typer.Option(help="auto, cpu or cuda")]
Threads = Annotated[int | None, typer.Option(
    help="CPU threads per grid cell, or for this command (default 1; $CAUSCELL_BENCH_THREADS overrides)")]
Preset = Annotated[str, typer.Option(
    help="training budget: quick (CPU), paper (authors' settings, GPU) or test (tiny models, seconds: smoke "
         "runs, not results)")]
MethodParams = Annotated[list[str] | None, typer.Option(
    "--param", help="hyperparameter override Method.name=value (repeatable)")]
DataDir = Annotated[Path | None, typer.Option(
    help="where the paper datasets' files are (default $CAUSCELL_BENCH_DATA, else ~/.cache/causcell-bench)")]
NCells = Annotated[int | None, typer.Option(help="cells to simulate (synthetic) or subsample")]
NGenes = Annotated[int | None, typer.Option(help="genes to simulate (synthetic only)")]
NHvg = Annotated[int | None, typer.Option(help="highly variable genes kept (chosen on the training cells)")]
Concepts = Annotated[str | None, typer.Option(
    help="concept columns, comma-separated (override the spec's; needed for a bare .h5ad)")]
Dag = Annotated[str | None, typer.Option(
    help="causal DAG overriding the spec's, e.g. 'age->celltype,domain->celltype'; '' for none")]


# --- the error boundary ----------------------------------------------------------------------------
def debugging() -> bool:
    """Whether --debug or $CAUSCELL_BENCH_DEBUG asks for tracebacks."""
    return _DEBUG["on"] or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def explain(e: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an error: 2 for input the user can fix, 1 for a run that failed."""
    import pickle

    from pydantic import ValidationError

    if isinstance(e, DiskError):  # the run failed for want of storage, not for its input
        return 1, str(e)
    if isinstance(e, BenchError):
        return 2, str(e)
    if isinstance(e, ValidationError):
        from causcell_bench.config import validation_line

        return 2, validation_line(e)
    if isinstance(e, gzip.BadGzipFile):  # an OSError without errno: not the file system's fault
        return 2, (f"a file ending in .gz is not gzip-compressed ({e}); give the compressed file, or the plain one "
                   "without the .gz ending")
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        reason = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return 1, f"no space left on the device (writing{where or ' a file'}); free some space and run the command again"
        if isinstance(e, FileNotFoundError):
            return 2, f"{e.filename or e} does not exist; check the path"
        if isinstance(e, (FileExistsError, NotADirectoryError)):
            return 2, f"cannot create{where}: a file is in the way ({reason}); give a path whose folders are directories"
        if isinstance(e, IsADirectoryError):
            return 2, f"{e.filename} is a directory; give a file path"
        if isinstance(e, PermissionError) or e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return 2, f"cannot write{where} ({reason}); choose a location you can write to"
        return 1, f"{reason}{' (' + str(e.filename) + ')' if e.filename else ''}; check the file system and run again"
    if isinstance(e, (pickle.UnpicklingError, EOFError)):
        return 2, f"a saved file is truncated or corrupt ({type(e).__name__}: {e}); write it again"
    if isinstance(e, UnicodeDecodeError):
        return 2, f"a file that should be text is binary or not UTF-8 ({e}); check the file you passed"
    if isinstance(e, json.JSONDecodeError):
        return 2, f"a JSON file is malformed ({e}); check the file you passed"
    if isinstance(e, MemoryError):
        return 1, "out of memory; use fewer cells (--n-cells) or fewer parallel cells (--jobs)"
    return 1, (f"unexpected {type(e).__name__}: {e}; rerun with --debug (causcell-bench --debug ...) "
               "for the traceback, and report it if the input looks right")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    text = " ".join(str(message).split())  # one line: a multi-line message reads as a crash
    err_console.print(Text.assemble(("error: ", "red"), text), soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def friendly(fn: F) -> F:
    """The CLI's one error boundary: every error becomes one line naming the problem and the fix (exit 2
    for bad input, 1 for a failed run, 130 for Ctrl-C); the traceback only with --debug or $CAUSCELL_BENCH_DEBUG."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with watching():
                result = fn(*args, **kwargs)
                check_interrupt()  # an interrupt a library swallowed still ends the command as one
                return result
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            if interrupted() and not debugging():  # a command that turned Ctrl-C into its own exit
                announce()
                raise typer.Exit(130) from None
            raise
        except KeyboardInterrupt:
            if debugging():
                raise
            announce()
            raise typer.Exit(130) from None
        except SystemExit:
            # Lightning turns Ctrl-C into SystemExit(1) after its graceful shutdown
            if interrupted() and not debugging():
                announce()
                raise typer.Exit(130) from None
            raise
        except Exception as e:  # the boundary: every error ends here
            if debugging():
                raise
            if interrupted():  # e.g. scvi-tools' NameError while it handles the KeyboardInterrupt
                announce()
                raise typer.Exit(130) from None
            code, message = explain(e)
            fail(message, code)

    return wrapper  # type: ignore[return-value]


# --- option checks: before any data is loaded --------------------------------------------------------
def comma_list(value: str | None) -> list[str] | None:
    """``'a, b,,c'`` -> ``['a', 'b', 'c']`` (blanks dropped); None stays None."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def parse_ints(value: str, flag: str, *, low: int = 0, high: int | None = None, example: str = "0,1") -> list[int]:
    """``'0,1'`` -> [0, 1], each an integer in [low, high], or a BenchError naming the flag."""
    out = []
    for part in comma_list(value) or []:
        try:
            n = int(part)
        except ValueError:
            raise BenchError(f"{flag} {value}: {part!r} is not a whole number; write e.g. {flag} {example}") from None
        if n < low or (high is not None and n > high):
            span = f"{low}..{high}" if high is not None else f"{low} or more"
            raise BenchError(f"{flag} {value}: {n} is out of range; give numbers in {span}")
        out.append(n)
    if not out:
        raise BenchError(f"{flag} is empty; write e.g. {flag} {example}")
    return out


def parse_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--param CausCell.n_steps=500`` -> {"CausCell": {"n_steps": 500}} (values read as JSON when they
    parse; the rules of :mod:`causcell_bench.assignments`)."""
    out: dict[str, dict[str, Any]] = {}
    for a in parse_assignments(items, flag="--param", form="Method.name=value", example="CausCell.n_steps=500",
                               dotted="required", typed=True):
        out.setdefault(str(a.owner), {})[a.key] = a.value
    return out


def check_at_least(value: int | None, flag: str, least: int = 1) -> None:
    """Refuse ``value`` below ``least`` (None: not given, accepted)."""
    if value is not None and value < least:
        raise BenchError(f"{flag} {value}: give {least} or more")


def check_data_options(n_cells: int | None, n_genes: int | None, n_hvg: int | None, data_dir: Path | None) -> None:
    """The options that say which data to load: positive sizes, an existing --data-dir."""
    for value, flag in ((n_cells, "--n-cells"), (n_genes, "--n-genes"), (n_hvg, "--n-hvg")):
        check_at_least(value, flag)
    if data_dir is not None and not data_dir.is_dir():
        raise BenchError(f"--data-dir {data_dir} is not a directory; give the folder holding the datasets' files")


def check_out_file(path: Path, flag: str = "--out", suffix: str | None = None) -> bool:
    """Refuse an output file path that cannot be written; returns whether its folder must be created."""
    if suffix and path.suffix.lower() != suffix:
        raise BenchError(f"{flag} {path}: the file must end in {suffix}")
    if path.is_dir():
        raise BenchError(f"{flag} {path} is a directory; give a file path ending in {suffix or 'a file name'}")
    check_writable(path.parent, flag)
    return not path.parent.exists()

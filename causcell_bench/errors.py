"""User-facing errors.

Everything a user can get wrong (a missing column, a cyclic DAG, an unknown
method) raises :class:`BenchError` with a message that names the problem and
the fix. The CLI prints these without a traceback.
"""

from __future__ import annotations


class BenchError(ValueError):
    """An input problem the user can fix; the message says how."""


class DataError(BenchError):
    """The dataset (file, spec or AnnData) is unusable as given."""


class MissingConceptError(DataError):
    """A concept column is not in ``adata.obs``; ``column`` names it, ``columns`` lists obs.
    Callers that know where the concepts came from (a saved model) restate it in their terms."""

    def __init__(self, message: str, column: str, columns: list[str]) -> None:
        super().__init__(message)
        self.column, self.columns = column, columns


class NotCountsError(DataError):
    """The values given as counts are not integers; ``example`` holds a few (may be empty). Callers that
    cannot offer the spec's ``round_counts`` (``counterfactual --input``) restate the advice in their terms."""

    def __init__(self, message: str, example: list[float]) -> None:
        super().__init__(message)
        self.example = example


class NotFittedError(BenchError):
    """A method was asked for outputs before ``fit`` was called."""


class DiskError(BenchError):
    """A file could not be written: the disk is full, read-only or failing. Nothing partial is left;
    the message names the file, its folder and the free space. The CLI exits 1 (a failed run)."""

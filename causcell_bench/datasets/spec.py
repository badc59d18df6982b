"""`DatasetSpec`: what a dataset is to the benchmark.

A spec names the AnnData source, the concept columns (in causal order), the
causal DAG between them (parent -> child edges), optional fine-grained label
columns for the granularity test, an optional batch concept, and
preprocessing settings. Specs load from TOML so users can describe their own
data without writing code.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from causcell_bench.errors import DataError

SOURCE_SCHEMES = ("builtin:", "paper:", "folds:")
"""``source`` prefixes that name a dataset rather than a file (never resolved as paths). ``folds:``: the
cells of the files that ``folds`` lists (the authors' per-fold training/testing files)."""


def find_cycle(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """Return one directed cycle as a node list (first node repeated at the end), or None."""
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        children.setdefault(a, []).append(b)
        children.setdefault(b, [])
    state: dict[str, int] = {n: 0 for n in children}  # 0 new, 1 on stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for c in children[n]:
            if state[c] == 1:
                return stack[stack.index(c):] + [c]
            if state[c] == 0 and (cyc := visit(c)) is not None:
                return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in children:
        if state[n] == 0 and (cyc := visit(n)) is not None:
            return cyc
    return None


def parse_edges(text: str) -> list[tuple[str, str]]:
    """Parse ``"A->C,B->C"`` (the CLI's ``--dag`` form) into edge tuples."""
    edges = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "->" not in part:
            raise DataError(f"cannot read DAG edge {part!r}: write edges as 'Parent->Child', comma-separated")
        a, b = (s.strip() for s in part.split("->", 1))
        if not a or not b:
            raise DataError(f"cannot read DAG edge {part!r}: both ends need a concept name")
        edges.append((a, b))
    return edges


class FoldFiles(BaseModel):
    """One fold given as files, as the CausCell authors publish their folds: the cells of ``train``
    train, those of ``test`` are scored (matched to the dataset's cells by obs_names)."""

    model_config = ConfigDict(extra="forbid")

    setting: Literal["ID", "OOD"]
    fold: int = Field(ge=0)
    train: str = Field(description="path of the fold's training .h5ad (relative to the spec file)")
    test: str = Field(description="path of the fold's testing .h5ad (relative to the spec file)")


class DatasetSpec(BaseModel):
    """Concepts, causal DAG and preprocessing of one dataset.

    ``concepts`` are the observed concept columns of ``adata.obs``; the
    unexplained concept u is implicit (index ``len(concepts)`` in
    :meth:`adjacency`, no edges). ``edges`` are (parent, child) pairs.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = Field(
        description="'builtin:<name>' for a built-in generator, 'paper:<name>' for one of the paper's "
        "datasets (read from the data directory), or a path to an .h5ad file",
    )
    concepts: list[str] = Field(min_length=1)
    edges: list[tuple[str, str]] = Field(default_factory=list)
    fine_labels: dict[str, str] = Field(
        default_factory=dict, description="coarse concept -> fine label column (granularity test)"
    )
    batch: str | None = Field(default=None, description="concept treated as batch (scDisInFact)")
    perturbation: str | None = Field(
        default=None, description="concept CPA treats as the perturbation (default: first concept)"
    )
    ood_concepts: list[str] | None = Field(
        default=None, description="concepts whose label combinations define OOD folds (default: all)"
    )
    counts_layer: str | None = Field(default="counts", description="layer with raw counts; None = X")
    round_counts: bool = Field(
        default=False, description="round non-integer counts to integers (counts that are legitimately "
        "non-integer, e.g. volume-normalised MERFISH); off: such data is refused")
    n_hvg: int | None = Field(default=2000, ge=1, description="highly variable genes to keep (>= 1); None = all")
    folds: list[FoldFiles] = Field(
        default_factory=list, description="the ID/OOD folds as training/testing file pairs (with source = "
        "'folds:'); a setting listed here takes its folds from the files, not from a random split")
    description: str = ""

    @field_validator("concepts")
    @classmethod
    def _unique_concepts(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"concepts listed twice: {dup}; list each concept column once")
        if "unexplained" in v:
            raise ValueError("'unexplained' is reserved for the learned concept u; rename that column")
        return v

    @model_validator(mode="after")
    def _check_graph(self) -> DatasetSpec:
        known = set(self.concepts)
        for a, b in self.edges:
            for end in (a, b):
                if end not in known:
                    raise ValueError(
                        f"DAG edge {a}->{b} names {end!r}, which is not a concept; concepts are {self.concepts}"
                    )
            if a == b:
                raise ValueError(f"DAG edge {a}->{b} is a self-loop; a concept cannot cause itself")
        cycle = find_cycle(self.concepts, self.edges)
        if cycle is not None:
            raise ValueError(
                "the DAG has a cycle: " + " -> ".join(cycle) + "; remove one of these edges"
            )
        for field in ("batch", "perturbation"):
            val = getattr(self, field)
            if val is not None and val not in known:
                raise ValueError(f"{field}={val!r} is not a concept; concepts are {self.concepts}")
        for c in self.fine_labels:
            if c not in known:
                raise ValueError(f"fine_labels names {c!r}, which is not a concept; concepts are {self.concepts}")
        for c in self.ood_concepts or []:
            if c not in known:
                raise ValueError(f"ood_concepts names {c!r}, which is not a concept; concepts are {self.concepts}")
        if self.source.startswith("folds:") and not self.folds:
            raise ValueError("source = 'folds:' needs a folds list of {setting, fold, train, test} file pairs")
        for setting in ("ID", "OOD"):
            numbers = sorted(f.fold for f in self.folds if f.setting == setting)
            if numbers != list(range(len(numbers))):
                raise ValueError(f"folds: the {setting} folds are numbered {numbers}; number them 0, 1, 2, ... "
                                 "once each")
        return self

    def fold_files(self, setting: str) -> list[FoldFiles]:
        """The folds of ``setting`` given as files, in fold order (empty: the setting is split at random)."""
        return sorted((f for f in self.folds if f.setting == setting), key=lambda f: f.fold)

    # --- graph helpers -------------------------------------------------
    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    def adjacency(self) -> np.ndarray:
        """(m+1) x (m+1) matrix with A[parent, child] = 1; last row/column is u."""
        m = len(self.concepts)
        a = np.zeros((m + 1, m + 1), dtype=np.float32)
        idx = {c: i for i, c in enumerate(self.concepts)}
        for p, c in self.edges:
            a[idx[p], idx[c]] = 1.0
        return a

    def parents(self, concept: str) -> list[str]:
        return [a for a, b in self.edges if b == concept]

    def children(self, concept: str) -> list[str]:
        return [b for a, b in self.edges if a == concept]

    def descendants(self, concept: str) -> list[str]:
        """All concepts reachable from ``concept`` (excluding itself), in ``concepts`` order."""
        seen: set[str] = set()
        todo = [concept]
        while todo:
            for c in self.children(todo.pop()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return [c for c in self.concepts if c in seen]

    def topological_order(self) -> list[str]:
        """Concepts ordered so that every parent precedes its children (stable w.r.t. ``concepts``)."""
        order: list[str] = []
        remaining = list(self.concepts)
        while remaining:
            for c in remaining:
                if all(p in order for p in self.parents(c)):
                    order.append(c)
                    remaining.remove(c)
                    break
        return order

    def with_overrides(
        self,
        concepts: list[str] | None = None,
        edges: list[tuple[str, str]] | None = None,
        **kw: object,
    ) -> DatasetSpec:
        """A copy with concepts / DAG replaced (CLI ``--concepts`` / ``--dag``), re-validated."""
        data = self.model_dump()
        if concepts is not None:
            data["concepts"] = concepts
            keep = set(concepts)
            if edges is None:
                data["edges"] = [e for e in data["edges"] if e[0] in keep and e[1] in keep]
            data["fine_labels"] = {k: v for k, v in data["fine_labels"].items() if k in keep}
            for f in ("batch", "perturbation"):
                if data[f] not in keep:
                    data[f] = None
            if data["ood_concepts"]:
                data["ood_concepts"] = [c for c in data["ood_concepts"] if c in keep] or None
        if edges is not None:
            data["edges"] = edges
        data.update(kw)
        return spec_from_dict(data, where="overrides")

    # --- I/O -------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path) -> DatasetSpec:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"spec file {path} does not exist; pass the path of a TOML dataset spec")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise DataError(f"spec file {path} is not valid TOML: {e}") from None
        data.setdefault("name", path.stem)
        if "edges" in data and isinstance(data["edges"], str):
            data["edges"] = parse_edges(data["edges"])
        src = data.get("source")
        if src and not str(src).startswith(SOURCE_SCHEMES) and not Path(src).is_absolute():
            data["source"] = str((path.parent / src).resolve())
        for entry in data.get("folds") or []:
            for key in ("train", "test"):
                if isinstance(entry, dict) and isinstance(entry.get(key), str) and not Path(entry[key]).is_absolute():
                    entry[key] = str((path.parent / entry[key]).resolve())
        return spec_from_dict(data, where=str(path))


def spec_from_dict(data: dict, where: str = "spec") -> DatasetSpec:
    """Build a spec, turning pydantic's validation report into one clear DataError."""
    from pydantic import ValidationError

    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "spec"
            msg = err["msg"].removeprefix("Value error, ")
            msgs.append(f"{loc}: {msg}")
        raise DataError(f"invalid dataset spec ({where}): " + "; ".join(msgs)) from None

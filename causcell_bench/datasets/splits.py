"""Cross-validation folds for the settings of the benchmark (docs/datasets.md, "Splits").

- ``ID``: folds over cells, stratified by concept combination, so every
  combination is seen in training.
- ``OOD``: folds over concept-label COMBINATIONS (GroupKFold-like): a test fold
  holds combinations never seen in its training part, while every single label
  value still occurs in training - only the combination is new.
- ``HOLDOUT``: one fold whose test part is exactly the combinations the user
  names (:func:`make_holdout_split`).

Everything is vectorised over cells (a million cells split in about a second);
only the OOD assignment loops, over combinations.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError, DataError
from causcell_bench.fileio import atomic_write_text

SPLITS_FORMAT = "causcell-bench-splits"
_OOD_ATTEMPTS = 200


@dataclass(eq=False)  # arrays inside: compare splits field by field, not with ==
class Split:
    """One fold: integer cell positions of the training and test part.

    ``held_out`` (OOD) lists the concept-label combinations of the test part;
    ``pinned`` (OOD) lists combinations that can never be held out (they carry
    the only occurrence of a label value) and so stay in training in every fold.
    ``obs_names`` are the names of ALL cells the positions refer to.
    """

    fold: int
    setting: str
    seed: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    held_out: list[dict[str, str]] = field(default_factory=list)
    pinned: list[dict[str, str]] = field(default_factory=list)
    obs_names: np.ndarray | None = field(default=None, repr=False, compare=False)

    def subset(self, adata: AnnData) -> tuple[AnnData, AnnData]:
        """(train, test) copies of ``adata`` (the AnnData the split was made from)."""
        _check_cells(self.obs_names, adata)
        return adata[self.train_idx].copy(), adata[self.test_idx].copy()


def _check_cells(names: np.ndarray | None, adata: AnnData) -> None:
    if names is None:
        return
    if len(names) != adata.n_obs or not np.array_equal(np.asarray(adata.obs_names, dtype=object), names):
        raise DataError(
            f"these splits were made for {len(names)} other cells (obs_names differ from this AnnData's "
            f"{adata.n_obs}); make the splits again for this data"
        )


def _concept_codes(obs: pd.DataFrame, concepts: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per concept integer codes (n_cells, m) and the label of each code."""
    codes, labels = [], []
    for c in concepts:
        if c not in obs.columns:
            raise DataError(f"concept column {c!r} is not in obs; available: {list(obs.columns)}")
        col = obs[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            k = col.cat.codes.to_numpy(np.int64)
            lab = np.asarray(col.cat.categories.astype(str), dtype=object)
        else:
            k, uniq = pd.factorize(col, sort=True)
            k = np.asarray(k, dtype=np.int64)
            lab = np.asarray(pd.Index(uniq).astype(str), dtype=object)
        if (k < 0).any():
            raise DataError(f"obs[{c!r}] has missing labels; drop those cells or label them before splitting")
        codes.append(k)
        labels.append(lab)
    return np.stack(codes, axis=1) if codes else np.zeros((len(obs), 0), np.int64), labels


def _combine(codes: np.ndarray, labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Cell -> combination id, and the (n_combos, m) code matrix of the combinations present."""
    key = np.zeros(codes.shape[0], dtype=np.int64)
    for j, lab in enumerate(labels):
        key = key * max(1, len(lab)) + codes[:, j]
    uniq, inv = np.unique(key, return_inverse=True)
    combos = np.empty((uniq.size, len(labels)), dtype=np.int64)
    rest = uniq.copy()
    for j in range(len(labels) - 1, -1, -1):
        base = max(1, len(labels[j]))
        combos[:, j] = rest % base
        rest //= base
    return inv.reshape(-1), combos


def _id_folds(group: np.ndarray, n_groups: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified assignment: within each group cells go round-robin over folds from a random start.

    Each combination contributes floor/ceil(size / n_folds) cells to every test fold;
    a combination smaller than ``n_folds`` lands in as many folds as it has cells.
    """
    perm = rng.permutation(group.shape[0])
    order = perm[np.argsort(group[perm], kind="stable")]
    sizes = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(group.shape[0], dtype=np.int64)
    rank[order] = np.arange(group.shape[0]) - np.repeat(starts, sizes)
    offset = rng.integers(0, n_folds, n_groups)
    return (rank + offset[group]) % n_folds


def _ood_assign(combos: np.ndarray, sizes: np.ndarray, n_values: list[int], n_folds: int,
                rng: np.random.Generator, holdable: np.ndarray) -> np.ndarray | None:
    """Greedy: big combinations first (randomly jittered), each to the lightest fold where
    none of its values would lose its last training combination. -1 = never held out."""
    m = combos.shape[1]
    total = [np.bincount(combos[:, j], minlength=n_values[j]) for j in range(m)]
    in_fold = [np.zeros((n_folds, n_values[j]), dtype=np.int64) for j in range(m)]
    load = np.zeros(n_folds)
    fold = np.full(combos.shape[0], -1, dtype=np.int64)
    idx = np.flatnonzero(holdable)
    order = idx[np.argsort(-sizes[idx] * rng.uniform(0.5, 1.5, idx.size), kind="stable")]
    for ci in order:
        ok = np.ones(n_folds, dtype=bool)
        for j in range(m):
            v = combos[ci, j]
            ok &= in_fold[j][:, v] + 1 < total[j][v]
        if not ok.any():
            return None
        cand = np.flatnonzero(ok)
        best = cand[np.flatnonzero(load[cand] == load[cand].min())]
        f = int(best[rng.integers(0, best.size)])
        fold[ci] = f
        load[f] += sizes[ci]
        for j in range(m):
            in_fold[j][f, combos[ci, j]] += 1
    if (np.bincount(fold[fold >= 0], minlength=n_folds) == 0).any():
        return None
    return fold


def _combo_dicts(combos: np.ndarray, concepts: list[str], labels: list[np.ndarray]) -> list[dict[str, str]]:
    return [{c: str(labels[j][row[j]]) for j, c in enumerate(concepts)} for row in combos]


def make_splits(
    adata: AnnData | pd.DataFrame,
    spec: DatasetSpec,
    setting: Literal["ID", "OOD"],
    n_folds: int = 5,
    seed: int = 0,
) -> list[Split]:
    """``n_folds`` train/test splits of the cells of ``adata`` (AnnData or its obs) for ``setting``.

    ID: folds over cells stratified by the combination of all ``spec.concepts``;
    the test folds partition the cells. OOD: folds over combinations of
    ``spec.ood_concepts`` (default: all concepts) such that every label value of
    every concept still occurs in each training part; a combination holding the
    only occurrence of some value is pinned to training (with a warning).
    Raises DataError when no such assignment exists. A setting whose folds the spec gives as files
    (``spec.folds``, the authors' own splits) takes them from the files instead, unchanged by ``seed``.
    """
    if setting not in ("ID", "OOD"):
        raise BenchError(f"setting={setting!r} is not known; use 'ID' or 'OOD'")
    if spec.fold_files(setting):
        return _file_splits(adata, spec, setting, int(n_folds), int(seed))
    if int(n_folds) < 2:
        raise BenchError(f"--n-folds {n_folds}: a random {setting} split needs 2 or more folds (n_folds); only folds "
                         "given as files in the dataset's spec can be fewer")
    obs = adata.obs if isinstance(adata, AnnData) else adata
    names = np.asarray(obs.index, dtype=object)
    n = len(obs)
    if n < n_folds:
        raise DataError(f"{n} cells cannot make {n_folds} folds; use more cells or fewer folds")
    rng = np.random.default_rng([int(seed), 0 if setting == "ID" else 1])

    if setting == "ID":
        codes, labels = _concept_codes(obs, spec.concepts)
        group, combos = _combine(codes, labels)
        fold_of = _id_folds(group, combos.shape[0], n_folds, rng)
        return _splits_from(fold_of, n_folds, setting, seed, names)

    ood = spec.ood_concepts or list(spec.concepts)
    codes, labels = _concept_codes(obs, ood)
    group, combos = _combine(codes, labels)
    sizes = np.bincount(group, minlength=combos.shape[0]).astype(np.float64)
    n_values = [len(lab) for lab in labels]

    # a value found in a single combination can never be held out: pin that combination
    holdable = np.ones(combos.shape[0], dtype=bool)
    lonely = []
    for j, c in enumerate(ood):
        per_value = np.bincount(combos[:, j], minlength=n_values[j])
        for v in np.flatnonzero(per_value == 1):
            holdable[combos[:, j] == v] = False
            lonely.append(f"{c}={labels[j][v]}")
    if lonely:
        warnings.warn(
            f"OOD split: {', '.join(lonely[:10])} occur(s) in a single combination, which therefore stays in "
            "training in every fold", stacklevel=2,
        )
    if holdable.sum() < n_folds:
        raise DataError(
            f"OOD split impossible: only {int(holdable.sum())} concept combinations of {ood} can be held out "
            f"({combos.shape[0]} present), fewer than the {n_folds} folds. Use fewer folds, more concepts in "
            "ood_concepts, or the ID setting"
        )
    others = [c for c in spec.concepts if c not in ood]
    ocodes, olabels = _concept_codes(obs, others) if others else (None, [])
    for _ in range(_OOD_ATTEMPTS):
        combo_fold = _ood_assign(combos, sizes, n_values, n_folds, rng, holdable)
        if combo_fold is None:
            continue
        fold_of = combo_fold[group]
        if ocodes is not None and not _others_in_training(fold_of, ocodes, olabels, n_folds):
            continue
        pinned = _combo_dicts(combos[~holdable], ood, labels)
        splits = _splits_from(fold_of, n_folds, setting, seed, names)
        for s in splits:
            s.held_out = _combo_dicts(combos[combo_fold == s.fold], ood, labels)
            s.pinned = pinned
        return splits
    raise DataError(
        f"OOD split impossible after {_OOD_ATTEMPTS} attempts: the {combos.shape[0]} combinations of {ood} cannot "
        f"be spread over {n_folds} folds so that every label value stays in each training part (some values "
        "occur in too few combinations). Use fewer folds, restrict ood_concepts, or the ID setting"
    )


def _file_names(path: str) -> pd.Index:
    """The obs_names of an .h5ad without reading its matrix."""
    import anndata

    try:
        return anndata.read_h5ad(path, backed="r").obs_names.copy()
    except Exception as e:  # noqa: BLE001 - h5py/anndata raise many types for a bad file
        raise DataError(f"cannot read {path} as an .h5ad file ({type(e).__name__}: {e})") from None


def _file_splits(adata: AnnData | pd.DataFrame, spec: DatasetSpec, setting: str, n_folds: int,
                 seed: int) -> list[Split]:
    """The folds of ``setting`` as ``spec.folds`` gives them in files (the authors' own splits).

    Checked: as many folds as requested, no cell in both parts of a fold, every cell of a file among
    the dataset's cells, and (OOD) no test combination of ``ood_concepts`` seen in training.
    """
    files = spec.fold_files(setting)
    if len(files) != n_folds:
        raise BenchError(f"{spec.name}'s spec gives {len(files)} {setting} folds as files; pass --n-folds "
                         f"{len(files)} (n_folds={len(files)})")
    obs = adata.obs if isinstance(adata, AnnData) else adata
    names = np.asarray(obs.index, dtype=object)
    where = pd.Series(np.arange(len(names)), index=obs.index)
    ood = spec.ood_concepts or list(spec.concepts)
    splits = []
    for f in files:
        idx = {}
        for part, path in (("train", f.train), ("test", f.test)):
            cells = _file_names(path)
            absent = cells[~cells.isin(obs.index)]
            if len(absent):
                raise DataError(f"{path}: {len(absent)} of its cells (e.g. {absent[0]!r}) are not among "
                                f"{spec.name}'s cells; the fold files must come from the same data")
            idx[part] = np.sort(where.loc[cells].to_numpy())
        both = np.intersect1d(idx["train"], idx["test"])
        if both.size:
            raise DataError(f"{f.test}: {both.size} cells (e.g. {names[both[0]]!r}) are also in the training file "
                            f"{f.train}; a fold's training and test cells must differ")
        held = []
        if setting == "OOD":
            combos = obs[ood].astype(str)
            seen = set(map(tuple, combos.iloc[idx["train"]].to_numpy()))
            test_combos = list(dict.fromkeys(map(tuple, combos.iloc[idx["test"]].to_numpy())))
            leaked = [c for c in test_combos if c in seen]
            if leaked:
                raise DataError(f"{f.test}: OOD fold {f.fold} tests {', '.join('/'.join(c) for c in leaked[:3])}, "
                                f"which {f.train} also trains on; an OOD test combination must be unseen in "
                                "training (or list the fold as ID)")
            held = [dict(zip(ood, c)) for c in test_combos]
        split = Split(f.fold, setting, seed, idx["train"], idx["test"], obs_names=names)
        split.held_out = held
        splits.append(split)
    return splits


def make_holdout_split(adata: AnnData | pd.DataFrame, spec: DatasetSpec, combos: list[dict[str, str]],
                       seed: int = 0) -> list[Split]:
    """One fold (``setting="HOLDOUT"``) whose test part is exactly the cells of the user's ``combos``
    (e.g. ``{"condition": "stimulated", "cell_type": "CD4T"}``: the classic scGen test), the rest training.

    Each combination names concepts with values; a combination matching no cell, or one whose removal
    would take a label value out of training entirely (it could not be intervened on), is an error.
    """
    obs = adata.obs if isinstance(adata, AnnData) else adata
    if not combos:
        raise BenchError("no held-out combination given; use --holdout 'concept=value,concept=value'")
    test = np.zeros(len(obs), dtype=bool)
    for combo in combos:
        unknown = [c for c in combo if c not in spec.concepts]
        if unknown:
            raise BenchError(f"--holdout names {unknown}, not concepts of this dataset; concepts are {spec.concepts}")
        mask = np.ones(len(obs), dtype=bool)
        for c, v in combo.items():
            values = set(obs[c].astype(str))
            if str(v) not in values:
                raise BenchError(f"--holdout {c}={v}: no cell has that value; values are {sorted(values)[:20]}")
            mask &= obs[c].astype(str).to_numpy() == str(v)
        if not mask.any():
            raise DataError(f"--holdout {combo}: no cell carries this combination")
        test |= mask
    for c in spec.concepts:
        left = set(obs[c].astype(str).to_numpy()[~test])
        gone = sorted(set(obs[c].astype(str).to_numpy()[test]) - left)
        if gone:
            raise DataError(f"--holdout leaves no training cell with {c} = {gone}; a model cannot learn (or "
                            "intervene with) a value it never sees. Hold out a combination, not a whole value")
    names = np.asarray(obs.index, dtype=object)
    split = Split(0, "HOLDOUT", int(seed), np.flatnonzero(~test), np.flatnonzero(test), obs_names=names)
    split.held_out = [{c: str(v) for c, v in combo.items()} for combo in combos]
    return [split]


def _others_in_training(fold_of: np.ndarray, codes: np.ndarray, labels: list[np.ndarray], n_folds: int) -> bool:
    """Every value of the non-OOD concepts occurs in the training part of each fold."""
    for j, lab in enumerate(labels):
        present = np.zeros((n_folds + 1, len(lab)), dtype=bool)
        present[fold_of + 1, codes[:, j]] = True  # row 0 = pinned cells (always training)
        for f in range(n_folds):
            train_rows = np.delete(np.arange(n_folds + 1), f + 1)
            if not present[train_rows].any(0)[present.any(0)].all():
                return False
    return True


def _splits_from(fold_of: np.ndarray, n_folds: int, setting: str, seed: int, names: np.ndarray) -> list[Split]:
    order = np.argsort(fold_of, kind="stable")
    bounds = np.searchsorted(fold_of[order], np.arange(-1, n_folds + 1))
    out = []
    for f in range(n_folds):
        test = order[bounds[f + 1]:bounds[f + 2]]
        mask = np.ones(fold_of.shape[0], dtype=bool)
        mask[test] = False
        out.append(Split(f, setting, int(seed), np.flatnonzero(mask), np.sort(test), obs_names=names))
    return out


# --- persistence ---------------------------------------------------------------
def save_splits(splits: list[Split], path: str | Path) -> Path:
    """Write splits as JSON: cells by position and obs_name, held-out combinations per fold.

    When the test parts are disjoint and each training part is the complement of its
    test part (always so for :func:`make_splits`), only test positions are written.
    """
    if not splits:
        raise BenchError("no splits to save")
    path = Path(path)
    names = splits[0].obs_names
    n = len(names) if names is not None else None
    rows = []
    for s in splits:
        row: dict[str, Any] = {
            "fold": int(s.fold), "setting": s.setting, "seed": int(s.seed),
            "held_out": s.held_out, "pinned": s.pinned,
            "test_idx": np.asarray(s.test_idx, dtype=np.int64).tolist(),
        }
        complement = n is not None and len(s.train_idx) + len(s.test_idx) == n and np.array_equal(
            np.sort(np.concatenate([s.train_idx, s.test_idx])), np.arange(n)
        )
        row["train_idx"] = "complement" if complement else np.asarray(s.train_idx, dtype=np.int64).tolist()
        rows.append(row)
    doc = {
        "format": SPLITS_FORMAT, "version": 1, "n_cells": n,
        "obs_names": [str(x) for x in names] if names is not None else None,
        "splits": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # like every file the project writes: a full disk names the file and leaves nothing half-written
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
    return path


def load_splits(path: str | Path, adata: AnnData | None = None) -> list[Split]:
    """Read splits written by :func:`save_splits`; with ``adata``, check they refer to its cells."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"split file {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLITS_FORMAT:
        raise DataError(f"{path} is not a causcell-bench split file")
    names = np.asarray(doc["obs_names"], dtype=object) if doc.get("obs_names") is not None else None
    n = doc.get("n_cells")
    out = []
    for row in doc["splits"]:
        test = np.asarray(row["test_idx"], dtype=np.int64)
        if row["train_idx"] == "complement":
            mask = np.ones(int(n), dtype=bool)
            mask[test] = False
            train = np.flatnonzero(mask)
        else:
            train = np.asarray(row["train_idx"], dtype=np.int64)
        out.append(Split(int(row["fold"]), str(row["setting"]), int(row["seed"]), train, test,
                         list(row.get("held_out", [])), list(row.get("pinned", [])), obs_names=names))
    if adata is not None:
        _check_cells(names, adata)
    return out

"""Turn public raw files into the .h5ad the loaders read.

``prepare_ici_response``: the two GEO files of Yost et al. 2019 (GSE123813,
basal cell carcinoma) -> ``ICI_response.h5ad`` with sparse counts and the cell
metadata in ``obs``. The counts table is genes x cells and large, so it is read
in blocks of genes and never held dense.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.errors import DataError
from causcell_bench.fileio import atomic_path
from causcell_bench.interrupts import check_interrupt

ICI_METADATA_COLUMNS = ["cell.id", "patient", "treatment", "sort", "cluster"]
_GENES_PER_BLOCK = 500


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _count_blocks(path: Path, n_cells: int) -> Iterator[tuple[list[str], sp.csr_matrix]]:
    """Yield (gene names, genes x cells CSR block) from a tab-separated genes x cells table."""
    reader = pd.read_csv(
        path, sep="\t", header=None, skiprows=1, chunksize=_GENES_PER_BLOCK,
        index_col=0, dtype={0: str}, engine="c",
    )
    for block in reader:
        if block.shape[1] != n_cells:
            raise DataError(f"{path}: a row has {block.shape[1]} values but the header names {n_cells} cells")
        values = block.to_numpy(dtype=np.float32)
        if not np.isfinite(values).all() or (values < 0).any():
            raise DataError(f"{path}: counts must be finite and >= 0 (genes {list(block.index[:3])}...)")
        yield [str(g) for g in block.index], sp.csr_matrix(values)


def prepare_ici_response(counts_path: str | Path, metadata_path: str | Path, out_path: str | Path) -> Path:
    """Build ``ICI_response.h5ad`` from GEO GSE123813's BCC files; return the written path.

    ``counts_path``: ``GSE123813_bcc_scRNA_counts.txt.gz`` (genes x cells, tab-separated,
    header row of cell ids, first column gene names). ``metadata_path``:
    ``GSE123813_bcc_all_metadata.txt.gz`` (columns cell.id, patient, treatment, sort,
    cluster). ``out_path``: a file, or a directory to write ``ICI_response.h5ad`` into.
    Cells without metadata are dropped; ``obs["celltype"]`` is the ``cluster`` column.
    """
    counts_path, metadata_path, out_path = Path(counts_path), Path(metadata_path), Path(out_path)
    for p in (counts_path, metadata_path):
        if not p.is_file():
            raise DataError(f"{p} does not exist; download it from GEO GSE123813 (basal cell carcinoma files)")
    if out_path.is_dir() or out_path.suffix.lower() != ".h5ad":
        out_path = out_path / "ICI_response.h5ad"

    meta = pd.read_csv(metadata_path, sep="\t", dtype=str)
    missing = [c for c in ICI_METADATA_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{metadata_path} lacks column(s) {missing}; found {list(meta.columns)}")
    meta = meta.drop_duplicates("cell.id").set_index("cell.id")

    with _open_text(counts_path) as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    # R's write.table omits the row-name column in the header; other writers put a label there
    first_line_fields = _first_data_fields(counts_path)
    cells = header[1:] if len(header) == first_line_fields else header
    cells = [c.strip('"') for c in cells]
    if len(cells) != first_line_fields - 1:
        raise DataError(f"{counts_path}: header has {len(header)} fields but rows have {first_line_fields}")

    genes: list[str] = []
    blocks = []
    for names, block in _count_blocks(counts_path, len(cells)):
        genes += names
        blocks.append(block)
    if not blocks:
        raise DataError(f"{counts_path} has no gene rows")
    x = sp.vstack(blocks, format="csr").T.tocsr()  # cells x genes
    if not np.array_equal(x.data, np.round(x.data)):
        raise DataError(f"{counts_path} holds non-integer values; expected raw UMI counts")
    x = x.astype(np.int32)

    keep = np.flatnonzero(pd.Index(cells).isin(meta.index))
    if keep.size == 0:
        raise DataError(f"no cell id of {counts_path} appears in {metadata_path}'s cell.id column")
    cell_ids = [cells[i] for i in keep]
    obs = meta.loc[cell_ids, [c for c in ICI_METADATA_COLUMNS[1:]]].copy()
    obs["celltype"] = obs["cluster"]
    for c in obs.columns:
        obs[c] = pd.Categorical(obs[c].astype(str))
    obs.index = pd.Index(cell_ids, name=None)
    var = pd.DataFrame(index=pd.Index(genes))
    adata = AnnData(X=x[keep], obs=obs, var=var)
    adata.var_names_make_unique()
    adata.layers["counts"] = adata.X.copy()
    adata.uns["source"] = "GEO GSE123813 (Yost et al. 2019), prepared by causcell_bench.datasets.prepare_ici_response"
    check_interrupt()
    with atomic_path(out_path) as tmp:  # a prepared file is whole or absent
        adata.write_h5ad(tmp, compression="gzip")
    return out_path


def _first_data_fields(path: Path) -> int:
    with _open_text(path) as fh:
        fh.readline()
        line = fh.readline()
    if not line:
        raise DataError(f"{path} has a header but no gene rows")
    return len(line.rstrip("\r\n").split("\t"))

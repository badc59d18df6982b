"""Does the realism category separate good from bad generated cells? Synthetic "models" of known
quality, scored by ``realism_scores`` on a real and on the simulated dataset.

The cells of each concept combination are split in two halves: A stands in for the training cells,
B for the test cells a method regenerates. The "models" (one generated cell per B cell):

- ``pos``: B itself (the positive control: 0 on every realism metric);
- ``a_copy``: a random A cell of the same group (a perfect sampler of the group);
- ``b_mean``: A's group mean for every cell (blurred: the decoder of a conditional mean);
- ``c_mean_noise``: A's group mean + independent Gaussian noise of A's per-gene group variance
  (right spread per gene, no gene-gene correlation);
- ``d_real_noise``: B + Gaussian noise of half the gene's group sd (a noisy reconstruction);
- ``e_shuffled``: a random A cell of any group (the negative control);
- ``f_lowrank``: B projected on A's top 10 principal components (a smooth decoder, like a VAE's mean);
- ``g_half_blur``: halfway between B and its group mean of A.

    python benchmarks/bench_realism.py --kang /work/shared/data/kang_pbmc_ifnb_valid.h5ad
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from causcell_bench.metrics import realism_scores
from causcell_bench.metrics.expression import combination_labels

MODELS = ("pos", "a_copy", "b_mean", "c_mean_noise", "d_real_noise", "e_shuffled", "f_lowrank", "g_half_blur")


def kang(path: Path, n_hvg: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Log-normalised X on the ``n_hvg`` HVGs (scanpy, from the counts), and condition|cell_type labels."""
    import anndata as ad

    from causcell_bench.datasets.preprocess import select_hvg

    adata = ad.read_h5ad(path)
    genes = select_hvg(adata.layers["counts"], n_hvg)
    x = adata.X[:, genes]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64), combination_labels(adata.obs, ["condition", "cell_type"])


def synthetic(n_cells: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """The built-in simulator's cells, log1p CP10k, and their concept-combination labels."""
    from causcell_bench.datasets import load
    from causcell_bench.datasets.preprocess import log_cp10k

    adata, spec = load("synthetic", n_cells=n_cells, seed=0)
    x = log_cp10k(adata.layers["counts"]).toarray().astype(np.float64)
    return x, combination_labels(adata.obs, list(spec.concepts))


def models(x: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Split each group in halves A / B; return B's cells, B's groups and every model's cells for B."""
    rng = np.random.default_rng(seed)
    a_idx, b_idx = [], []
    for g in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == g))
        if rows.size < 4:
            continue
        a_idx.append(rows[: rows.size // 2])
        b_idx.append(rows[rows.size // 2:])
    a, b = np.concatenate(a_idx), np.concatenate(b_idx)
    xa, xb, ga, gb = x[a], x[b], groups[a], groups[b]
    mean_a = {g: xa[ga == g].mean(0) for g in np.unique(gb)}
    sd_a = {g: xa[ga == g].std(0) for g in np.unique(gb)}
    mu = np.stack([mean_a[g] for g in gb])
    sd = np.stack([sd_a[g] for g in gb])
    same = np.array([rng.choice(np.flatnonzero(ga == g)) for g in gb])
    # a smooth decoder: B on A's top principal components
    centre = xa.mean(0)
    _, _, vt = np.linalg.svd(xa - centre, full_matrices=False)
    v = vt[:10].T
    out = {
        "pos": xb.copy(),
        "a_copy": xa[same],
        "b_mean": mu,
        "c_mean_noise": mu + rng.normal(size=mu.shape) * sd,
        "d_real_noise": xb + rng.normal(size=xb.shape) * 0.5 * sd,
        "e_shuffled": xa[rng.integers(0, xa.shape[0], size=xb.shape[0])],
        "f_lowrank": centre + (xb - centre) @ v @ v.T,
        "g_half_blur": 0.5 * xb + 0.5 * mu,
    }
    return xb, gb, out


def table(name: str, load: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
    t0 = time.perf_counter()
    x, groups = load()
    xb, gb, gen = models(x, groups)
    print(f"\n## {name}: {xb.shape[0]} test cells x {xb.shape[1]} genes, {np.unique(gb).size} groups "
          f"(loaded in {time.perf_counter() - t0:.0f} s)\n")
    rows = {m: realism_scores(xb, gen[m], gb) for m in MODELS}
    keys = list(rows["pos"])
    print("| model | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for m in MODELS:
        print(f"| {m} | " + " | ".join(f"{rows[m][k]:.3f}" for k in keys) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kang", type=Path, default=None, help="path of kang_pbmc_ifnb_valid.h5ad (skipped if absent)")
    ap.add_argument("--n-cells", type=int, default=3000, help="cells of the simulated dataset")
    args = ap.parse_args()
    if args.kang is not None:
        table("Kang PBMC IFN-b (2,000 HVGs)", lambda: kang(args.kang))
    table("synthetic", lambda: synthetic(args.n_cells))


if __name__ == "__main__":
    main()

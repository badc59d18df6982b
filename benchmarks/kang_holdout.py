"""The Kang PBMC data with one cell type's stimulated cells held out, as the CausCell benchmark scripts
on Kang use it (`causcell_samplers_kang.py`, `causcell_guidance_kang.py`): 2,000 HVGs chosen on the
training cells, log1p CP10k, concepts condition and cell_type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from causcell_bench.datasets.preprocess import log_cp10k, select_hvg
from causcell_bench.datasets.spec import DatasetSpec

DEFAULT_PATH = "../shared/data/kang_pbmc_ifnb_valid.h5ad"


def dense(m: Any) -> np.ndarray:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m)


@dataclass
class KangHoldout:
    full: ad.AnnData  # every cell, on the HVGs
    train: ad.AnnData  # all but the held-out stimulated cells of the type
    source: ad.AnnData  # the type's control cells: what do(condition=stimulated) is asked of
    real: np.ndarray  # the held-out stimulated cells (dense)
    spec: DatasetSpec
    condition: np.ndarray
    cell_type: np.ndarray
    held: str = ""  # the held-out type

    @property
    def seen_type(self) -> str:
        """A type seen stimulated in training, for comparison: CD4T, or B when CD4T is the one held out."""
        return "CD4T" if self.held != "CD4T" else "B"

    def seen(self) -> tuple[ad.AnnData, np.ndarray]:
        """(control cells, stimulated cells dense) of :attr:`seen_type`."""
        of = self.cell_type == self.seen_type
        return (self.full[of & (self.condition == "control")].copy(),
                dense(self.full[of & (self.condition == "stimulated")].X))


def fit_quick(k: KangHoldout, seed: int = 0) -> tuple[Any, float]:
    """CausCell `quick` fitted (on the CPU) to the training cells; returns (method, fit wall seconds)."""
    import time

    from causcell_bench.methods.causcell import CausCell

    m = CausCell(preset="quick", device="cpu")
    t0 = time.time()
    m.fit(k.train, k.spec, seed=seed)
    return m, time.time() - t0


def kang_holdout(cell_type: str, path: str | None = None) -> KangHoldout:
    a = ad.read_h5ad(path or DEFAULT_PATH)
    counts = a.layers["counts"]
    cond, pop = a.obs["condition"].astype(str).to_numpy(), a.obs["cell_type"].astype(str).to_numpy()
    held = (cond == "stimulated") & (pop == cell_type)
    genes = select_hvg(counts[~held], 2000)
    obs = a.obs[["condition", "cell_type"]].astype(str).astype("category")
    full = ad.AnnData(X=log_cp10k(counts[:, genes]), obs=obs, var=pd.DataFrame(index=a.var_names[genes]))
    spec = DatasetSpec(name="kang", source="x.h5ad", concepts=["condition", "cell_type"], edges=[], counts_layer=None)
    return KangHoldout(full=full, train=full[~held].copy(), source=full[(pop == cell_type) & ~held].copy(),
                       real=dense(full[held].X), spec=spec, condition=cond, cell_type=pop, held=cell_type)


def from_argv(argv: list[str]) -> tuple[str, int, KangHoldout]:
    """``TYPE [SEED] [PATH]`` of the CausCell-on-Kang scripts: (held-out type, seed, its KangHoldout)."""
    value, seed = argv[1], int(argv[2]) if len(argv) > 2 else 0
    return value, seed, kang_holdout(value, argv[3] if len(argv) > 3 else None)


def ddim(net: Any, denoise: Any, n: int, seed: int, steps: int = 50) -> np.ndarray:
    """One DDIM chain of ``steps`` (the grid's sampler) for ``n`` cells from noise seeded with ``seed``;
    ``denoise(x_t, t)`` gives the x0 estimate (a variant may combine several)."""
    import torch

    from causcell_bench.models.causcell.diffusion import reverse_diffusion, sampling_timesteps

    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, net.n_genes), generator=g)
    ts = sampling_timesteps("ddim", net.n_timesteps, steps)
    with torch.no_grad():
        return reverse_diffusion(denoise, x, ts, net.schedule, sampler="ddim", generator=g).numpy()


def training_latents(model: Any, k: KangHoldout) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(z of the training cells (posterior means), their condition, their cell type, the types seen both
    stimulated and as controls in training)."""
    _, z = model.encode(dense(k.train.X))
    cond = k.train.obs["condition"].astype(str).to_numpy()
    pop = k.train.obs["cell_type"].astype(str).to_numpy()
    both = [t for t in np.unique(pop) if ((pop == t) & (cond == "stimulated")).any()
            and ((pop == t) & (cond == "control")).any()]
    return z, cond, pop, both

"""One Kang cell type held out: fit CausCell `quick` once (seed 0, one thread), then score its
counterfactual mean under three samplers (DDIM-50, the preset's; DDIM-200; ancestral-1000).

    python benchmarks/causcell_samplers_kang.py B   # the cell type held out; path of the data below

Prints one line per sampler (R^2 of the held-out mean over all genes and the top-100 DEGs, slope of the
predicted change) and a JSON summary. docs/causcell.md has the numbers."""
import json
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd

from causcell_bench.threads import apply_thread_budget

apply_thread_budget(1)
from causcell_bench.datasets.preprocess import log_cp10k, select_hvg
from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.methods.causcell import CausCell
from causcell_bench.metrics.distribution import change_scores

value = sys.argv[1]
a = ad.read_h5ad(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/kang_pbmc_ifnb_valid.h5ad")
counts = a.layers["counts"]
pert = a.obs["condition"].astype(str).to_numpy(); pop = a.obs["cell_type"].astype(str).to_numpy()
held = (pert == "stimulated") & (pop == value); source = (pop == value) & ~held
genes = select_hvg(counts[~held], 2000)
x = log_cp10k(counts[:, genes])
obs = a.obs[["condition", "cell_type"]].astype(str).astype("category")
full = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=a.var_names[genes]))
train, src = full[~held].copy(), full[source].copy()
real = np.asarray(full[held].X.toarray() if hasattr(full.X, "toarray") else full[held].X)
srcx = np.asarray(src.X.toarray() if hasattr(src.X, "toarray") else src.X)
spec = DatasetSpec(name="kang", source="x.h5ad", concepts=["condition", "cell_type"], edges=[], counts_layer=None)
m = CausCell(preset="quick", device="cpu")
t0 = time.time(); m.fit(train, spec, seed=0); fit_s = time.time() - t0
rows = []
for name, kw in [("ddim-50", dict(sampler="ddim", steps=50)), ("ddim-200", dict(sampler="ddim", steps=200)),
                 ("ancestral-1000", dict(sampler="ancestral"))]:
    t0 = time.time()
    cf = m.generate(src, do={"condition": "stimulated"}, seed=0, **kw)
    sc = change_scores(cf, real, srcx, k=100)
    rows.append({"type": value, "sampler": name, "R2": round(sc["r2_mean"], 3), "R2_deg": round(sc["r2_mean_deg"], 3),
                 "slope": round(sc["delta_slope"], 3), "gen_s": round(time.time() - t0, 1)})
    print(rows[-1], flush=True)
print(json.dumps({"fit_s": fit_s, "rows": rows}))

"""One Kang cell type held out: fit CausCell `quick` once (seed 0, one thread), then score its
counterfactual mean under three samplers (DDIM-50, the preset's; DDIM-200; ancestral-1000).

    python benchmarks/causcell_samplers_kang.py B   # the cell type held out; path of the data below

Prints one line per sampler (R^2 of the held-out mean over all genes and the top-100 DEGs, slope of the
predicted change) and a JSON summary. docs/causcell.md has the numbers."""
import json
import sys
import time


from causcell_bench.threads import apply_thread_budget

apply_thread_budget(1)
from causcell_bench.metrics.distribution import change_scores
from kang_holdout import dense, fit_quick, kang_holdout

value = sys.argv[1]
k = kang_holdout(value, sys.argv[2] if len(sys.argv) > 2 else None)
train, src, real, spec = k.train, k.source, k.real, k.spec
srcx = dense(src.X)
m, fit_s = fit_quick(k, 0)
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

"""Is CausCell's counterfactual on a held-out Kang cell type short of the real change only in size?
Fit `quick` once (seed 0, one thread) with stimulated cells of TYPE held out; then score do(condition =
stimulated) of the type's control cells five ways: the plain chain (the grid's), guidance (the x0
estimate moved w times the difference between the intervened and the factual concept tokens, w = 1.5
and 2) and extrapolated tokens (z + w (z_cf - z)). The same for a type seen stimulated in training (CD4T,
or B when CD4T is held out), where the plain chain is calibrated.

    python benchmarks/causcell_guidance_kang.py TYPE [SEED] [PATH]   # default path below

Prints one dict per variant (R^2 of the mean, all genes and top-100 DEGs; slope of the predicted change;
Pearson r of the changes on the DEGs) and a JSON summary. results/real_holdout/kang_guidance.md has the
numbers, docs/causcell.md what they say."""
import json
import sys

import torch

from causcell_bench.threads import apply_thread_budget
apply_thread_budget(1)
from causcell_bench.metrics.distribution import change_scores
from kang_holdout import ddim, dense, fit_quick, from_argv

value, seed, k = from_argv(sys.argv)
src, real = k.source, k.real
seen_src, seen_real = k.seen()  # CD4T control -> stimulated (both in training) unless CD4T is held
m, fit_s = fit_quick(k, seed)
net = m._model().inference_net

def chain(z, z_cf, w, kind):
    z = torch.as_tensor(z, dtype=torch.float32); z_cf = torch.as_tensor(z_cf, dtype=torch.float32)
    if kind == "embed":
        z_cf = z + w * (z_cf - z)
    if kind == "guide" and w != 1:
        den = lambda xt, t: net.denoiser(xt, t, z) + w * (net.denoiser(xt, t, z_cf) - net.denoiser(xt, t, z))
    else:
        den = lambda xt, t: net.denoiser(xt, t, z_cf)
    return ddim(net, den, z.shape[0], seed)

rows = []
for label, s, r in [("held", src, real), ("seen", seen_src, seen_real)]:
    lat = m.counterfactual_latents(s, {"condition": "stimulated"}, seed=seed)
    for kind, w in [("plain", 1.0), ("guide", 1.5), ("guide", 2.0), ("embed", 1.5), ("embed", 2.0)]:
        cf = chain(lat["z"], lat["z_cf"], w, kind)
        sc = change_scores(cf, r, dense(s.X), k=100)
        rows.append({"type": value, "seed": seed, "on": label, "kind": kind, "w": w, "R2": round(sc["r2_mean"], 3),
                     "R2_deg": round(sc["r2_mean_deg"], 3), "slope": round(sc["delta_slope"], 3),
                     "slope_deg": round(sc["delta_slope_deg"], 3), "dpcc_deg": round(sc["delta_pcc_deg"], 3)})
        print(rows[-1], flush=True)
print(json.dumps({"fit_s": fit_s, "rows": rows}))

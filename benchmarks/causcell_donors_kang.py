"""Is the direction of CausCell's held-out counterfactual on Kang set by the donor it gets?

Under `quick` (cf_mode "do"), do(condition = stimulated) replaces a cell's condition token z_c by the
z_c of a random stimulated training cell, i.e. a cell of another type (the held-out type has no
stimulated cells). If z_c carries something of its cell's type, the counterfactual moves towards the
donor's type. Fit `quick` once (seed 0, one thread) with stimulated cells of TYPE held out; then score
do(condition = stimulated) of the type's control cells with four condition tokens:

- `random`: a random stimulated donor's z_c (what the grid does);
- `prototype`: the mean z_c of the stimulated training cells;
- `shift`: the cell's own z_c plus (mean z_c of stimulated - mean z_c of control training cells);
- `shift_matched`: the cell's own z_c plus the mean over seen types T of (mean z_c of stimulated T -
  mean z_c of control T), so that the shift is not the difference of two type mixtures.

The same for a type seen stimulated in training (CD4T, or B when CD4T is held out).

    python benchmarks/causcell_donors_kang.py TYPE [SEED] [PATH]
"""
import json
import sys

import numpy as np
import torch

from causcell_bench.threads import apply_thread_budget
apply_thread_budget(1)
from causcell_bench.metrics.distribution import change_scores
from kang_holdout import ddim, dense, fit_quick, from_argv, training_latents

value, seed, k = from_argv(sys.argv)
src, real, spec = k.source, k.real, k.spec
seen_src, seen_real = k.seen()
m, fit_s = fit_quick(k, seed)
model = m._model(); net = model.inference_net
c = spec.concepts.index("condition")
z_tr, tc, tp, both = training_latents(model, k)
zc_stim, zc_ctrl = z_tr[tc == "stimulated", c].mean(0), z_tr[tc == "control", c].mean(0)
matched = np.mean([z_tr[(tp == t) & (tc == "stimulated"), c].mean(0) - z_tr[(tp == t) & (tc == "control"), c].mean(0)
                   for t in both], axis=0)


def chain(zz):
    zz = torch.as_tensor(zz, dtype=torch.float32)
    return ddim(net, lambda xt, t: net.denoiser(xt, t, zz), zz.shape[0], seed)


rows = []
for label, s, r in [("held", src, real), ("seen", seen_src, seen_real)]:
    lat = m.counterfactual_latents(s, {"condition": "stimulated"}, seed=seed)
    z, z_cf = lat["z"], lat["z_cf"]
    own = z[:, c]
    for kind, tok in [("random", z_cf[:, c]), ("prototype", np.broadcast_to(zc_stim, own.shape)),
                      ("shift", own + (zc_stim - zc_ctrl)), ("shift_matched", own + matched)]:
        zz = z.copy(); zz[:, c] = tok
        cf = chain(zz)
        sc = change_scores(cf, r, dense(s.X), k=100)
        rows.append({"type": value, "seed": seed, "on": label, "kind": kind, "R2": round(sc["r2_mean"], 3),
                     "R2_deg": round(sc["r2_mean_deg"], 3), "slope": round(sc["delta_slope"], 3),
                     "dpcc_deg": round(sc["delta_pcc_deg"], 3)})
        print(rows[-1], flush=True)
print(json.dumps({"fit_s": fit_s, "rows": rows}))

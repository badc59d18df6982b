"""Can CausCell's decoder compose the condition effect with a cell type it never saw stimulated?

The donor study (causcell_donors_kang.py) found the condition token is not where the held-out
counterfactual goes wrong: the decoder, conditioned on the concept tokens jointly, does not move a
cell type it never saw stimulated the way it moves seen types. Composable diffusion (Liu et al., ECCV
2022) builds the estimate of an unseen conjunction from estimates the model has learned; here the
model's own condition effect on the seen types is carried over to the held-out type:

    x0(u, B, stim) ~ x0(u, B, ctrl) + mean over seen types T of [x0(u, T, stim) - x0(u, T, ctrl)]

with the cell's own u (and, for T, the prototype cell-type token of T: the mean z of T's training
cells; for stim/ctrl the prototype condition tokens). Two forms: `compose_step` combines the denoiser's
x0 estimates at every DDIM step (one chain), `compose_end` combines the final outputs of separate
chains started from the same noise. Fit `quick` once (seed 0, one thread), TYPE's stimulated cells
held out; also scored on a seen type (CD4T, or B when CD4T is held out) and against additive_shift.

    python benchmarks/causcell_compose_kang.py TYPE [SEED] [PATH]
"""
import json
import sys
import time

import torch

from causcell_bench.threads import apply_thread_budget
apply_thread_budget(1)
from causcell_bench.methods.references import AdditiveShift
from causcell_bench.metrics.distribution import change_scores
from kang_holdout import ddim, dense, fit_quick, from_argv, training_latents

value, seed, k = from_argv(sys.argv)
train, src, real, spec = k.train, k.source, k.real, k.spec
seen_src, seen_real = k.seen()
m, fit_s = fit_quick(k, seed)
add = AdditiveShift(preset="quick"); add.fit(train, spec, seed=seed)
model = m._model(); net = model.inference_net
c, ct = spec.concepts.index("condition"), spec.concepts.index("cell_type")
z_tr, tc, tp, both = training_latents(model, k)
proto_c = {v: z_tr[tc == v, c].mean(0) for v in ("control", "stimulated")}
proto_t = {t: z_tr[tp == t, ct].mean(0) for t in both}


def tokens(z, cell_type=None, cond=None):
    out = z.copy()
    if cell_type is not None:
        out[:, ct] = proto_t[cell_type]
    if cond is not None:
        out[:, c] = proto_c[cond]
    return torch.as_tensor(out, dtype=torch.float32)


def chain(zz):
    return ddim(net, lambda xt, t: net.denoiser(xt, t, zz), zz.shape[0], seed)


rows = []
for label, s, r in [("held", src, real), ("seen", seen_src, seen_real)]:
    lat = m.counterfactual_latents(s, {"condition": "stimulated"}, seed=seed)
    z, z_cf = lat["z"], lat["z_cf"]
    pairs = [(tokens(z, t, "stimulated"), tokens(z, t, "control")) for t in both if not (label == "seen" and t == k.seen_type)]
    zf = torch.as_tensor(z, dtype=torch.float32)

    def step(xt, t):
        d = sum(net.denoiser(xt, t, a) - net.denoiser(xt, t, b) for a, b in pairs) / len(pairs)
        return net.denoiser(xt, t, zf) + d

    t1 = time.time()
    outs = {"plain": chain(torch.as_tensor(z_cf, dtype=torch.float32)),
            "compose_step": ddim(net, step, z.shape[0], seed)}
    base = chain(zf)
    outs["compose_end"] = base + sum(chain(a) - chain(b) for a, b in pairs) / len(pairs)
    outs["additive_shift"] = add.generate(s, {"condition": "stimulated"}, seed=seed)
    gen_s = time.time() - t1
    for kind, cf in outs.items():
        sc = change_scores(cf, r, dense(s.X), k=100)
        rows.append({"type": value, "seed": seed, "on": label, "kind": kind, "R2": round(sc["r2_mean"], 3),
                     "R2_deg": round(sc["r2_mean_deg"], 3), "slope": round(sc["delta_slope"], 3),
                     "dpcc_deg": round(sc["delta_pcc_deg"], 3), "gen_s": round(gen_s, 1)})
        print(rows[-1], flush=True)
print(json.dumps({"fit_s": fit_s, "rows": rows}))

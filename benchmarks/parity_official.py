"""Parity benchmark: the authors' CausCell (github.com/bm2-lab/CausCell) against ours, on identical data.

Trains the authors' package (imported, never copied) and our CausCell
(``preset="paper"`` and ``preset="quick"``) on the same `synthetic` fold (ID
fold 0 of 5, preprocessed as the runner does: log1p CP10k, genes chosen on
the training cells), the same genes, the same number of optimizer updates,
the same seed and one CPU thread, then scores all of them with the same
code (see docs/parity.md):

- reconstruction of test cells: mean per-cell PCC and MSE vs the real cells
  with 1 sample and with the mean of 10 samples (each sample a fresh
  encoding pass for the authors' model and our paper preset, a fresh
  sampling chain from the posterior mean for our quick preset), plus PCC vs
  the simulator's noiseless expression of each cell (the ceiling);
- disentanglement: one common probe (``score_disentanglement``) on each
  model's per-concept embeddings of train and test cells: accuracy per
  concept, ``exclusivity_dag``, the leakage into non-ancestor concepts (mean
  lift of the off-diagonal probes over the majority baseline, 0 = none) and
  ``u_leak`` (the same from the unexplained embedding u to every concept);
- speed: training updates per CPU second, generation CPU seconds per 100
  cells (one sample, the model's own sampler).

The authors' package pins numpy 1.24 while ours needs numpy 2, so it lives in
its own virtualenv and runs in a second process: this file re-runs itself
there with ``--worker JOB.json``; data go out as .h5ad, results come back as
.npz + .json. Pitfalls of their code handled here: its training loop does one
update more than asked (we ask for N - 1 and count the updates), its label
coding is per file in order of appearance (we write integer codes from one
shared coding instead of calling their ``data_transformation``), and every
tensor is moved with ``.cuda()`` (made a no-op in the worker, CPU only).

Usage::

    python benchmarks/parity_official.py --steps 1500 --seeds 0,1,2 --n-cells 3000 --n-genes 500 --out results/parity
    python benchmarks/parity_official.py --steps 50 --seeds 0 --n-cells 600 --n-genes 100 --out /tmp/parity_small

Finished (model, seed) runs are cached in ``OUT/runs/`` (metrics only) and
reused when the settings match, so adding a seed later trains only that seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OFFICIAL_REPO = "https://github.com/bm2-lab/CausCell"
DEFAULT_OFFICIAL_PYTHON = os.environ.get("CAUSCELL_OFFICIAL_PYTHON", "/work/venv-official/bin/python")
MODELS = ("official", "ours_paper", "ours_quick")
LABELS = {"official": "authors' CausCell", "ours_paper": "ours, preset=paper", "ours_quick": "ours, preset=quick"}
INSTALL_HELP = f"""\
The authors' CausCell package is not importable with {{python}}.
Install it into a virtualenv of its own (it pins numpy 1.24; ours needs numpy 2):

  git clone {OFFICIAL_REPO} /work/causcell_official
  python3.11 -m venv /work/venv-official
  /work/venv-official/bin/pip install torch==2.13.0          # first: the CPU build, before anything pulls CUDA
  grep -v -E '^(torch|setuptools)' /work/causcell_official/requirements.txt > /tmp/causcell-reqs.txt
  echo torch==2.13.0 > /tmp/causcell-constraints.txt         # their setuptools==69.5.1 pin conflicts with torch 2.13
  /work/venv-official/bin/pip install -c /tmp/causcell-constraints.txt -r /tmp/causcell-reqs.txt
  /work/venv-official/bin/pip install --no-deps -e /work/causcell_official

then rerun, or point --official-python (or $CAUSCELL_OFFICIAL_PYTHON) at that interpreter.
Skipping the parity benchmark."""


# ================================================================================================
# worker: runs inside the authors' virtualenv; imports numpy, torch and their package, nothing of ours
# ================================================================================================
def _worker(job_file: str) -> None:
    import numpy as np
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(int(job["threads"]))
    # their training and inference code calls .cuda() on every batch; on CPU make it a no-op
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    from causcell import CausCell as Official

    updates = [0]
    # count optimizer updates: their loop runs `while step <= n`, one more than asked
    register_optimizer_step_post_hook(lambda *_: updates.__setitem__(0, updates[0] + 1))

    concepts: list[str] = job["concepts"]
    counts: list[int] = job["counts"]
    cdag: list[list[float]] = job["cdag"]
    g = int(job["n_genes"])
    work = Path(job["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    model = Official(device="cpu", save_and_sample_every=10**12)  # no checkpoints
    c0 = time.process_time()
    model.train(job["train"], str(work), concepts, counts, cdag,
                training_num_steps=int(job["steps"]) - 1, seed=int(job["seed"]), train_log=False)
    train_cpu = time.process_time() - c0
    if updates[0] != int(job["steps"]):
        raise RuntimeError(f"the authors' trainer made {updates[0]} updates, expected {job['steps']}")
    n_params = sum(p.numel() for p in model.model.parameters())

    # their disentanglement(): mean of n stochastic encodings; array (m + 1, n_cells, 32), u last
    emb: dict[str, np.ndarray] = {}
    c0 = time.process_time()
    for part in ("train", "test"):
        emb[part] = model.disentanglement(job[part], str(work), concepts, counts, cdag,
                                          sampling_counts=int(job["n_encodings"]), profile_size=g).astype(np.float32)
    embed_cpu = time.process_time() - c0

    # their get_generated_cells() is the mean of n sampling_cells() calls; keep each call to get 1 and 10
    torch.manual_seed(int(job["seed"]))
    samples, gen_cpu = [], []
    for _ in range(int(job["n_samples"])):
        c0 = time.process_time()
        samples.append(model.sampling_cells(job["gen"], concepts, counts, cdag, profile_size=g).astype(np.float32))
        gen_cpu.append(time.process_time() - c0)
    np.savez_compressed(job["out_npz"], emb_train=emb["train"], emb_test=emb["test"], samples=np.stack(samples))
    Path(job["out_json"]).write_text(json.dumps({
        "updates": updates[0], "train_cpu_s": train_cpu, "embed_cpu_s": embed_cpu, "gen_cpu_s": gen_cpu,
        "n_parameters": int(n_params), "torch": torch.__version__, "numpy": np.__version__,
        "threads": torch.get_num_threads(),
    }))


# ================================================================================================
# driver: runs in our virtualenv
# ================================================================================================
def official_available(python: str) -> bool:
    if not Path(python).exists():
        return False
    r = subprocess.run([python, "-c", "import causcell"], check=False, capture_output=True, env=_env(1))
    return r.returncode == 0


def _cpu_with_children() -> float:
    """CPU seconds of this process plus its finished children (the authors' worker)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["TQDM_DISABLE"] = "1"  # their samplers print a progress bar per 1000-step chain
    env["PYTHONWARNINGS"] = "ignore"
    return env


def prepare_data(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """One fold exactly as the runner builds it, plus .h5ad copies with shared integer codes for the worker."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from causcell_bench.datasets import load, make_splits, preprocess, true_counterfactual
    from causcell_bench.methods.base import dense_rows

    raw, spec = load("synthetic", n_cells=args.n_cells, n_genes=args.n_genes, seed=args.data_seed)
    split = make_splits(raw, spec, "ID", n_folds=5, seed=args.data_seed)[0]
    train, test = preprocess(*split.subset(raw), spec)
    n_gen = min(args.n_gen_cells, test.n_obs)
    gen_idx = np.sort(np.random.default_rng(args.data_seed).choice(test.n_obs, n_gen, replace=False))
    gen = test[gen_idx].copy()

    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, a in (("train", train), ("test", test), ("gen", gen)):
        # preprocess() already gave train and test one category list per concept: its codes are the shared coding
        obs = pd.DataFrame({c: a.obs[c].cat.codes.to_numpy().astype(np.int64) for c in spec.concepts})
        obs.index = [str(i) for i in range(a.n_obs)]
        x = dense_rows(a.X, slice(None)).astype(np.float32)
        paths[part] = str(data_dir / f"{part}.h5ad")
        ad.AnnData(X=x, obs=obs).write_h5ad(paths[part])
    ancestors = {c: [a for a in spec.concepts if c in spec.descendants(a)] for c in spec.concepts}
    return {
        "spec": spec, "train": train, "test": test, "gen": gen, "paths": paths,
        "real_gen": dense_rows(gen.X, slice(None)).astype(np.float32),
        "expected_gen": true_counterfactual(gen, {})[2],  # noiseless expression of each generated-for cell
        "ancestors": ancestors,
        # the authors' cDAG is A^T: row = child, column = parent (z = (I - cdag)^-1 eps)
        "cdag": spec.adjacency().T.astype(float).tolist(),
        "counts": [len(train.obs[c].cat.categories) for c in spec.concepts],
    }


def run_official(args: argparse.Namespace, d: dict[str, Any], seed: int, work: Path) -> dict[str, Any]:
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    job = {
        "train": d["paths"]["train"], "test": d["paths"]["test"], "gen": d["paths"]["gen"],
        "concepts": list(d["spec"].concepts), "counts": d["counts"], "cdag": d["cdag"],
        "n_genes": int(d["train"].n_vars), "steps": args.steps, "seed": seed, "threads": args.threads,
        "n_encodings": args.n_samples, "n_samples": args.n_samples, "workdir": str(work / "official_out"),
        "out_npz": str(work / "official.npz"), "out_json": str(work / "official.json"),
    }
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job, indent=1))
    r = subprocess.run([args.official_python, str(Path(__file__).resolve()), "--worker", str(job_file)],
                       check=False, env=_env(args.threads), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the authors' CausCell failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
    info = json.loads(Path(job["out_json"]).read_text())
    z = np.load(job["out_npz"])
    concepts = list(d["spec"].concepts)

    def as_dict(e: np.ndarray) -> dict[str, np.ndarray]:
        out = {c: e[k] for k, c in enumerate(concepts)}
        out["unexplained"] = e[len(concepts)]
        return out

    return {"emb_train": as_dict(z["emb_train"]), "emb_test": as_dict(z["emb_test"]), "samples": z["samples"],
            "updates": info["updates"], "train_cpu_s": info["train_cpu_s"], "embed_cpu_s": info["embed_cpu_s"],
            "gen_cpu_s": info["gen_cpu_s"], "n_parameters": info["n_parameters"],
            "env": {"torch": info["torch"], "numpy": info["numpy"], "threads": info["threads"]}}


def run_ours(args: argparse.Namespace, d: dict[str, Any], seed: int, preset: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from causcell_bench.methods.causcell import CausCell

    m = CausCell(preset=preset, device="cpu", n_steps=args.steps)
    c0 = time.process_time()
    m.fit(d["train"], d["spec"], seed=seed)
    train_cpu = time.process_time() - c0
    c0 = time.process_time()
    emb_train, emb_test = m.embed(d["train"]), m.embed(d["test"])
    embed_cpu = time.process_time() - c0
    # one sample per call, as for the authors' model: under encode="sample" (paper) a call is
    # n_encodings passes, so ask for one; under "mean" (quick) one chain from the posterior mean
    if m.params["encode"] == "sample":
        m.params["n_encodings"] = 1
    samples, gen_cpu = [], []
    for i in range(args.n_samples):
        c0 = time.process_time()
        samples.append(m.generate(d["gen"], seed=seed * 1000 + i, n_samples=1))
        gen_cpu.append(time.process_time() - c0)
    return {"emb_train": emb_train, "emb_test": emb_test, "samples": np.stack(samples),
            "updates": int(m.model_.n_updates), "train_cpu_s": train_cpu, "embed_cpu_s": embed_cpu,
            "gen_cpu_s": gen_cpu, "n_parameters": int(m.model_.n_parameters()),
            "env": {"torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads()},
            "params": {k: v for k, v in m.params.items() if isinstance(v, (int, float, str, bool, type(None)))}}


def score(run: dict[str, Any], d: dict[str, Any], seed: int) -> dict[str, float]:
    """The same scoring code for every model."""
    import numpy as np

    from causcell_bench.metrics import lift, majority_baseline, mse, pearson_per_cell, score_disentanglement

    spec, train, test = d["spec"], d["train"], d["test"]
    out: dict[str, float] = {}
    s = run["samples"]
    for k, gen in (("1", s[0]), (str(len(s)), s.mean(axis=0))):
        out[f"pcc_{k}"] = float(pearson_per_cell(d["real_gen"], gen).mean())
        out[f"mse_{k}"] = float(mse(d["real_gen"], gen))
        out[f"pcc_noiseless_{k}"] = float(pearson_per_cell(d["expected_gen"], gen).mean())
    dis = score_disentanglement(run["emb_train"], train.obs, run["emb_test"], test.obs, spec.concepts,
                                spec.fine_labels, seed=seed, ancestors=d["ancestors"])
    out.update({k: float(v) for k, v in dis.items()})
    # leakage: lift of each off-diagonal probe into a concept that is not an ancestor (0 = chance)
    leaks = []
    for c in spec.concepts:
        for j in spec.concepts:
            if j != c and j not in d["ancestors"][c]:
                v = lift(dis[f"offdiag_acc:{c}|{j}"], majority_baseline(test.obs[j].astype(str).to_numpy()))
                out[f"leak_lift:{c}|{j}"] = v
                leaks.append(v)
    out["leak_dag"] = float(np.nanmean(leaks)) if leaks else float("nan")
    out["one_minus_excl_dag"] = 1.0 - float(np.mean([dis[f"exclusivity_dag:{c}"] for c in spec.concepts]))
    out["updates"] = float(run["updates"])
    out["train_cpu_s"] = float(run["train_cpu_s"])
    out["updates_per_cpu_s"] = run["updates"] / run["train_cpu_s"]
    out["embed_cpu_s"] = float(run["embed_cpu_s"])
    out["gen_cpu_s_per_100"] = float(np.mean(run["gen_cpu_s"])) / d["gen"].n_obs * 100
    out["n_parameters"] = float(run["n_parameters"])
    return out


# --- report ---------------------------------------------------------------------------------------
ROWS = [  # (key, header, decimals)
    ("pcc_1", "PCC, 1 sample", 3), ("pcc_10", "PCC, 10 samples", 3),
    ("mse_1", "MSE, 1 sample", 3), ("mse_10", "MSE, 10 samples", 3),
    ("pcc_noiseless_10", "PCC vs noiseless, 10", 3),
    ("acc:age", "acc age", 3), ("acc:domain", "acc domain", 3), ("acc:celltype", "acc celltype", 3),
    ("leak_dag", "leak (non-anc.)", 3), ("one_minus_excl_dag", "1 - excl_dag", 3), ("u_leak", "u_leak", 3),
    ("updates", "updates done", 0), ("updates_per_cpu_s", "updates / CPU s", 2), ("gen_cpu_s_per_100", "gen CPU s / 100 cells", 1),
    ("train_cpu_s", "train CPU s", 0), ("n_parameters", "parameters (M)", 1),
]


def _fmt(vals: list[float], dec: int, scale: float = 1.0) -> str:
    import numpy as np

    v = np.asarray(vals, dtype=float) / scale
    if len(v) == 1:
        return f"{v[0]:.{dec}f}"
    return f"{np.nanmean(v):.{dec}f} ± {np.nanstd(v, ddof=1):.{dec}f}"


def markdown(results: dict[str, dict[int, dict[str, float]]], meta: dict[str, Any]) -> str:
    seeds = meta["seeds"]
    models = [m for m in MODELS if m in results]
    head = "| metric | " + " | ".join(LABELS[m] for m in models) + " |"
    lines = [
        f"# CausCell parity: the authors' package vs ours ({meta['n_cells']} cells x {meta['n_genes']} genes, synthetic)",
        "",
        f"Command: `{meta['command']}`", "",
        f"{meta['steps']} optimizer updates (128 cells each; `quick` stops earlier when its validation loss "
        f"stops improving, as its preset does: `updates done`), seed(s) {', '.join(map(str, seeds))} "
        f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}; "
        + ("mean ± sd over seeds" if len(seeds) > 1 else "single values, no spread") + "), "
        f"{meta['threads']} CPU thread(s), CPU seconds from `time.process_time()`. ID fold 0 of 5: "
        f"{meta['n_train']} training cells, {meta['n_test']} test cells for the probes, "
        f"{meta['n_gen']} of them reconstructed. Total CPU: {meta['total_cpu_s']:.0f} s.", "",
        head, "|---|" + "---|" * len(models),
    ]
    for key, label, dec in ROWS:
        scale = 1e6 if key == "n_parameters" else 1.0
        cells = [_fmt([results[m][s][key] for s in seeds], dec, scale) for m in models]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Off-diagonal probe accuracy (embedding c -> concept j; majority baselines "
              + ", ".join(f"{c} {b:.3f}" for c, b in meta["baselines"].items()) + "):", "",
              head, "|---|" + "---|" * len(models)]
    for key in sorted(k for k in results[models[0]][seeds[0]] if k.startswith("offdiag_acc:")):
        cells = [_fmt([results[m][s][key] for s in seeds], 3) for m in models]
        lines.append(f"| {key.split(':', 1)[1].replace('|', ' -> ')} | " + " | ".join(cells) + " |")
    lines += ["", f"Noiseless truth vs real cells (the PCC ceiling): {meta['ceiling_pcc']:.3f}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=1500, help="optimizer updates, every model")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--n-genes", type=int, default=500, help="even: the authors' time embedding needs it")
    ap.add_argument("--n-gen-cells", type=int, default=100,
                    help="test cells reconstructed (their 1000-step sampler costs ~1 CPU s per cell and sample)")
    ap.add_argument("--n-samples", type=int, default=10, help="samples averaged (and encodings for embeddings)")
    ap.add_argument("--data-seed", type=int, default=0, help="simulation and split seed (fixed across --seeds)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--official-python", default=DEFAULT_OFFICIAL_PYTHON)
    ap.add_argument("--out", default="results/parity", help="parity.md, parity.json and runs/ (small files)")
    ap.add_argument("--work", help="keep the exchanged .h5ad/.npz files here (default: a temporary folder)")
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
        return 0
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(args.threads)
    models = [m for m in args.models.split(",") if m]
    if unknown := set(models) - set(MODELS):
        ap.error(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")
    if args.n_genes % 2:
        ap.error("--n-genes must be even (the authors' sinusoidal time embedding drops the odd dimension)")
    if "official" in models and not official_available(args.official_python):
        print(INSTALL_HELP.format(python=args.official_python))
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]

    import torch

    from causcell_bench.methods.causcell import CausCell
    from causcell_bench.metrics import majority_baseline, pearson_per_cell

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the .h5ad/.npz exchanged with the worker are megabytes: keep them out of --out (often in the repo)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="causcell-parity-")
    work = Path(args.work or tmp.name)
    cpu0 = time.process_time()
    d = prepare_data(args, work / "data")
    prep_cpu = time.process_time() - cpu0
    key = {"steps": args.steps, "n_cells": args.n_cells, "n_genes": args.n_genes, "n_gen": d["gen"].n_obs,
           "n_samples": args.n_samples, "data_seed": args.data_seed, "threads": args.threads}
    results: dict[str, dict[int, dict[str, float]]] = {}
    extra: dict[str, dict[int, Any]] = {}
    run_cpu = 0.0
    for seed in seeds:
        for name in models:
            cache = out / "runs" / f"{name}_seed{seed}.json"
            # a changed preset of ours invalidates its cached runs (a code change without one does not)
            run_key = {**key, "preset": json.loads(json.dumps(
                CausCell.presets.get(name.removeprefix("ours_"), {}), default=str))}
            if cache.is_file() and (rec := json.loads(cache.read_text())).get("key") == run_key:
                print(f"{name} seed {seed}: cached in {cache}", flush=True)
            else:
                print(f"{name} seed {seed}: training {args.steps} updates ...", flush=True)
                c_before = _cpu_with_children()
                run = (run_official(args, d, seed, work / f"seed{seed}") if name == "official"
                       else run_ours(args, d, seed, name.removeprefix("ours_")))
                rec = {"key": run_key, "metrics": score(run, d, seed), "env": run["env"],
                       "params": run.get("params"), "gen_cpu_s": run["gen_cpu_s"],
                       "run_cpu_s": _cpu_with_children() - c_before}  # train + embed + generate + score
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(rec, indent=1))
            results.setdefault(name, {})[seed] = rec["metrics"]
            extra.setdefault(name, {})[seed] = {k: rec[k] for k in ("env", "params", "gen_cpu_s", "run_cpu_s")}
            run_cpu += rec["run_cpu_s"]
            mm = rec["metrics"]
            print(f"  pcc1 {mm['pcc_1']:.3f} pcc10 {mm['pcc_10']:.3f} mse1 {mm['mse_1']:.3f} "
                  f"acc {[round(mm[f'acc:{c}'], 3) for c in d['spec'].concepts]} leak {mm['leak_dag']:.3f} "
                  f"u_leak {mm.get('u_leak', float('nan')):.3f} upd/cpu-s {mm['updates_per_cpu_s']:.2f} "
                  f"gen s/100 {mm['gen_cpu_s_per_100']:.1f}", flush=True)

    meta = {
        **key, "seeds": seeds, "command": "python benchmarks/parity_official.py " + " ".join(sys.argv[1:]),
        "n_train": int(d["train"].n_obs), "n_test": int(d["test"].n_obs),
        "total_cpu_s": prep_cpu + run_cpu,  # every (model, seed) run, cached ones included
        "baselines": {c: majority_baseline(d["test"].obs[c].astype(str).to_numpy()) for c in d["spec"].concepts},
        "ceiling_pcc": float(pearson_per_cell(d["real_gen"], d["expected_gen"]).mean()),
        "official_repo": OFFICIAL_REPO,
    }
    (out / "parity.md").write_text(markdown(results, meta))
    (out / "parity.json").write_text(json.dumps(
        {"meta": meta, "results": {m: {str(s): v for s, v in r.items()} for m, r in results.items()},
         "runs": {m: {str(s): v for s, v in r.items()} for m, r in extra.items()}}, indent=1, default=str))
    print((out / "parity.md").read_text())
    print(f"wrote {out / 'parity.md'} and {out / 'parity.json'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

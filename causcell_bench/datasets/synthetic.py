"""The ``synthetic`` dataset: a structural causal model (SCM) with exact counterfactuals.

Real single-cell data never shows the same cell under two conditions, so a
counterfactual can only be scored exactly on simulated data. Every simulated
cell keeps its exogenous noise (Gumbel vector, subtype draw, unobserved factor
u, library size, expression-noise key) in ``obs``/``obsm``, and every model
parameter lives in ``uns["synthetic"]``; :func:`true_counterfactual` therefore
needs nothing but the AnnData to recompute a cell under any ``do()``.

Model (described in words in ``docs/datasets.md``)::

    age ~ U{n_age}, domain ~ U{n_domain}                        (roots)
    celltype = argmax_k(base_k + W_age[age,k] + W_dom[domain,k] + g_k),  g ~ Gumbel(0,1)
    subtype  = floor(s * n_sub[celltype]),  s ~ U(0,1)            (celltype_fine)
    u ~ N(0,1)                                                  (unobserved, not a concept)
    log mu_cg = b_g + E_age[age,g] + E_dom[domain,g] + E_type[type,g] + E_sub[sub,g]
                + E_int[age,type,g] + u_c L_g + e_cg,            e_cg ~ N(0, noise^2)
    counts_cg ~ NB(mean = l_c softmax_g(log mu_c), dispersion theta_g),  l_c ~ LogNormal

With ``dag="none"`` the celltype has no parents (``base + g`` only): the
control where causal structure should not help.

The per-cell expression noise e_c is regenerable from two stored integers
(``noise_offset``, ``noise_stride``): e_cg = noise * Z[(offset + stride * g) mod P]
for a standard-normal pool Z of size P (a power of two, >= 16 x genes,
regenerated from the seed). An odd stride makes the G draws of one cell distinct pool entries; this
keeps generation vectorised (no per-cell random generator) and lets any subset
of cells recompute its own noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError, DataError
from causcell_bench.threads import cpu_count

AGE, DOMAIN, CELLTYPE, FINE = "age", "domain", "celltype", "celltype_fine"
CONCEPTS = [AGE, DOMAIN, CELLTYPE]
UNS_KEY = "synthetic"
_CHUNK = 4096  # cells per block: bounds the dense (chunk x genes) temporaries
_DEFAULT_EFFECTS = {"age": 0.7, "domain": 0.7, "celltype": 1.2, "subtype": 0.6, "interaction": 0.8, "u": 0.5}


def synthetic_spec(dag: Literal["default", "none"] = "default", name: str = "synthetic") -> DatasetSpec:
    """The :class:`DatasetSpec` of :func:`simulate` output (concepts age, domain, celltype)."""
    _check_dag(dag)
    return DatasetSpec(
        name=name,
        source="builtin:synthetic",
        concepts=list(CONCEPTS),
        edges=[(AGE, CELLTYPE), (DOMAIN, CELLTYPE)] if dag == "default" else [],
        fine_labels={CELLTYPE: FINE},
        perturbation=AGE,
        counts_layer="counts",
        n_hvg=None,  # every simulated gene carries known truth; keep them all
        description="Structural causal model simulator with ground-truth counterfactuals (causcell_bench.datasets.synthetic)",
    )


def _check_dag(dag: str) -> None:
    if dag not in ("default", "none"):
        raise BenchError(f"dag={dag!r} is not known; use 'default' (age->celltype<-domain) or 'none' (no edges)")


@dataclass
class _Params:
    """Everything needed to recompute expression and labels (mirrors ``uns['synthetic']``)."""

    values: dict[str, list[str]]
    n_sub: np.ndarray
    sub_offset: np.ndarray
    parents: list[str]
    w_age: np.ndarray
    w_domain: np.ndarray
    w_base: np.ndarray
    b: np.ndarray
    e_age: np.ndarray
    e_domain: np.ndarray
    e_type: np.ndarray
    e_sub: np.ndarray
    e_int: np.ndarray
    loading: np.ndarray
    theta: np.ndarray
    noise: float
    pool: np.ndarray
    genes: list[str]

    # --- label mechanisms ------------------------------------------------
    def celltype(self, age: np.ndarray, domain: np.ndarray, gumbel: np.ndarray) -> np.ndarray:
        logits = self.w_base[None, :] + gumbel.astype(np.float64)
        if AGE in self.parents:
            logits = logits + self.w_age[age]
        if DOMAIN in self.parents:
            logits = logits + self.w_domain[domain]
        return logits.argmax(1)

    def subtype(self, ctype: np.ndarray, sub_u: np.ndarray) -> np.ndarray:
        """Global fine-label index: each coarse type splits into n_sub[type] subtypes."""
        n = self.n_sub[ctype]
        local = np.minimum(np.floor(sub_u * n).astype(np.int64), n - 1)
        return self.sub_offset[ctype] + local

    # --- expression mechanism ---------------------------------------------
    def table(self, age: np.ndarray, domain: np.ndarray, fine: np.ndarray, ctype: np.ndarray,
              shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic part of log mu for each distinct label combination present.

        Returns ``(rows, inverse)``: one (n_combos, G) float32 row per combination and,
        per cell, the index of its row. ``shift`` (per gene) is added to every row; each
        row is then moved by its own maximum, which softmax ignores, so that exp()
        cannot overflow without a per-cell max pass.
        """
        key = ((age * self.w_domain.shape[0] + domain) * len(self.values[FINE]) + fine) * self.w_base.shape[0] + ctype
        uniq, inv = np.unique(key, return_inverse=True)
        k_t = uniq % self.w_base.shape[0]
        rest = uniq // self.w_base.shape[0]
        k_f = rest % len(self.values[FINE])
        rest //= len(self.values[FINE])
        k_d = rest % self.w_domain.shape[0]
        k_a = rest // self.w_domain.shape[0]
        rows = self.b[None, :] + self.e_age[k_a] + self.e_domain[k_d] + self.e_type[k_t] + self.e_sub[k_f] + self.e_int[k_a, k_t]
        if shift is not None:
            rows += shift[None, :]
        rows -= rows.max(1, keepdims=True)
        return rows.astype(np.float32), inv.reshape(-1)

    def exp_log_mu(self, rows: np.ndarray, inv: np.ndarray, u: np.ndarray, offset: np.ndarray,
                   stride: np.ndarray) -> np.ndarray:
        """exp(log mu - c) for a block of cells (c a per-cell constant), float32 (n, G)."""
        x = rows[inv]
        nz = np.flatnonzero(self.loading)
        if nz.size:
            x[:, nz] += u[:, None].astype(np.float32) * self.loading[nz][None, :]
        if self.noise > 0:
            # uint32 arithmetic wraps mod 2^32, and the pool size P divides 2^32, so
            # (offset + stride * g) mod P comes out right at half the memory traffic
            g = np.arange(self.b.shape[0], dtype=np.uint32)
            idx = stride.astype(np.uint32)[:, None] * g[None, :]
            idx += offset.astype(np.uint32)[:, None]
            idx &= np.uint32(self.pool.shape[0] - 1)
            x += np.float32(self.noise) * self.pool[idx]
        np.exp(x, out=x)
        return x


def _sparse_effects(rng: np.random.Generator, shape: tuple[int, ...], sparsity: float, size: float) -> np.ndarray:
    """Sparse effects: each row touches ~sparsity of genes, log-normal magnitudes, random signs."""
    mask = rng.random(shape) < sparsity
    flat = mask.reshape(-1, shape[-1])
    empty = ~flat.any(1)  # tiny gene counts: give every value at least one gene
    flat[empty, rng.integers(0, shape[-1], int(empty.sum()))] = True
    mag = rng.lognormal(np.log(size), 0.5, shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return np.where(mask, mag * sign, 0.0).astype(np.float32)


def _pool_size(n_genes: int) -> int:
    # small enough to stay in cache (the gather is random access), >= 16x the genes
    return 1 << max(16, int(np.ceil(np.log2(16 * n_genes))))


def _noise_pool(seed: int, n_genes: int) -> np.ndarray:
    return np.random.default_rng([seed, 3]).standard_normal(_pool_size(n_genes), dtype=np.float32)


def simulate(
    n_cells: int = 3000,
    n_genes: int = 500,
    seed: int = 0,
    *,
    n_age: int = 3,
    n_domain: int = 4,
    n_celltype: int = 5,
    n_subtypes: tuple[int, int] = (2, 3),
    effect_sparsity: float = 0.05,
    noise: float = 0.2,
    dag: Literal["default", "none"] = "default",
    interaction: bool = True,
    n_trend_genes: int = 5,
    parent_strength: float = 1.5,
    library_size: float = 2000.0,
    library_sd: float = 0.3,
    dispersion: float = 5.0,
    effect_sizes: Mapping[str, float] | None = None,
) -> AnnData:
    """Simulate ``n_cells`` x ``n_genes`` counts from the SCM (see module docstring).

    Returns raw data: integer counts (CSR int32) in ``X`` and ``layers["counts"]``;
    ``obs`` holds the concepts ``age``, ``domain``, ``celltype`` (Categorical), the fine
    label ``celltype_fine``, the unobserved factor ``u`` and the per-cell exogenous
    noise (``library_size``, ``sub_u``, ``noise_offset``, ``noise_stride``);
    ``obsm["gumbel"]`` holds the celltype Gumbel noise; ``uns["synthetic"]`` holds
    every parameter, the DAG and the recorded age-trend genes. The same ``seed``
    gives identical data; the model parameters depend on ``seed`` and ``n_genes``
    only, so datasets of different sizes share one ground truth.
    """
    _check_dag(dag)
    _check_positive(n_cells=n_cells, n_genes=n_genes)
    if int(seed) < 0 or int(n_trend_genes) < 0:
        raise BenchError(f"seed={seed}, n_trend_genes={n_trend_genes}: both must be >= 0")
    for nm, v in (("n_age", n_age), ("n_domain", n_domain), ("n_celltype", n_celltype)):
        if int(v) < 2:
            raise BenchError(f"{nm}={v}: a concept needs at least 2 values")
    lo, hi = n_subtypes
    if not 1 <= lo <= hi:
        raise BenchError(f"n_subtypes={n_subtypes!r}: give (min, max) subtypes per cell type with 1 <= min <= max")
    if not 0 < effect_sparsity <= 1:
        raise BenchError(f"effect_sparsity={effect_sparsity}: must be a fraction of genes in (0, 1]")
    if noise < 0 or library_sd < 0 or library_size <= 0 or dispersion <= 0:
        raise BenchError("noise and library_sd must be >= 0; library_size and dispersion must be > 0")
    sizes = dict(_DEFAULT_EFFECTS)
    unknown = sorted(set(effect_sizes or {}) - set(sizes))
    if unknown:
        raise BenchError(f"effect_sizes has unknown keys {unknown}; known: {sorted(sizes)}")
    sizes.update(effect_sizes or {})

    G, K = int(n_genes), int(n_celltype)
    prng = np.random.default_rng([seed, 0])  # parameters: independent of n_cells
    crng = np.random.default_rng([seed, 1])  # per-cell exogenous noise

    # --- parameters ---------------------------------------------------------
    n_sub = prng.integers(lo, hi + 1, K)
    sub_offset = np.concatenate([[0], np.cumsum(n_sub)[:-1]]).astype(np.int64)
    w_age = prng.normal(0, parent_strength, (n_age, K))
    w_domain = prng.normal(0, parent_strength, (n_domain, K))
    w_base = prng.normal(0, 0.5, K)
    b = prng.normal(0, 1.2, G).astype(np.float32)
    e_age = _sparse_effects(prng, (n_age, G), effect_sparsity, sizes["age"])
    e_domain = _sparse_effects(prng, (n_domain, G), effect_sparsity, sizes["domain"])
    e_type = _sparse_effects(prng, (K, G), effect_sparsity, sizes["celltype"])
    e_sub = _sparse_effects(prng, (int(n_sub.sum()), G), effect_sparsity, sizes["subtype"])
    e_int = _sparse_effects(prng, (n_age, K, G), effect_sparsity, sizes["interaction"])
    loading = _sparse_effects(prng, (1, G), 2 * effect_sparsity, sizes["u"])[0]
    theta = prng.lognormal(np.log(dispersion), 0.5, G).astype(np.float32)
    if not interaction:
        e_int[:] = 0.0

    # Age-trend genes: a monotone age ramp in one cell type (E_int), on genes with no
    # global age effect, so the direction is guaranteed by construction. Without the
    # interaction the ramp goes into E_age and holds in every cell type.
    ramp = np.linspace(-1.0, 1.0, n_age, dtype=np.float32)
    free = np.flatnonzero((e_age == 0).all(0))
    n_tr = min(int(n_trend_genes), free.size)
    trend_rows: list[tuple[int, int, int, float]] = []
    if interaction:
        for k in range(K):
            for g in prng.choice(free, n_tr, replace=False):
                direction = 1 if prng.random() < 0.5 else -1
                slope = max(0.5, float(prng.lognormal(np.log(sizes["interaction"]), 0.3)))
                e_int[:, k, g] = direction * slope * ramp
                trend_rows.append((k, int(g), direction, 2 * slope))
    else:
        for g in prng.choice(free, n_tr, replace=False):
            direction = 1 if prng.random() < 0.5 else -1
            slope = max(0.5, float(prng.lognormal(np.log(sizes["age"]), 0.3)))
            e_age[:, g] = direction * slope * ramp
            trend_rows += [(k, int(g), direction, 2 * slope) for k in range(K)]

    values = {
        AGE: [f"age_{i}" for i in range(n_age)],
        DOMAIN: [f"domain_{i}" for i in range(n_domain)],
        CELLTYPE: [f"type_{k}" for k in range(K)],
        FINE: [f"type_{k}_s{j}" for k in range(K) for j in range(int(n_sub[k]))],
    }
    genes = [f"gene_{g:0{len(str(G - 1))}d}" for g in range(G)]
    params = _Params(
        values=values, n_sub=n_sub, sub_offset=sub_offset,
        parents=[AGE, DOMAIN] if dag == "default" else [],
        w_age=w_age, w_domain=w_domain, w_base=w_base, b=b, e_age=e_age, e_domain=e_domain,
        e_type=e_type, e_sub=e_sub, e_int=e_int, loading=loading, theta=theta,
        noise=float(noise), pool=_noise_pool(seed, G), genes=genes,
    )

    # --- cells ------------------------------------------------------------------
    n = int(n_cells)
    P = params.pool.shape[0]
    age = crng.integers(0, n_age, n)
    domain = crng.integers(0, n_domain, n)
    gumbel = crng.gumbel(size=(n, K)).astype(np.float32)  # stored as float32; labels use the stored value
    sub_u = crng.random(n)
    u = crng.standard_normal(n)
    lib = crng.lognormal(np.log(library_size), library_sd, n)
    offset = crng.integers(0, P, n)
    stride = 2 * crng.integers(0, P // 2, n) + 1
    ctype = params.celltype(age, domain, gumbel)
    fine = params.subtype(ctype, sub_u)

    # --- counts: gamma-Poisson NB, block by block --------------------------------
    # NB(mean m, dispersion theta) = Poisson(m * Gamma(theta, 1) / theta). Folding
    # -log(theta) into the exponent gives q = p * S / theta for a per-cell S, and
    # sum_g p = q @ theta, so scaling needs no extra pass over the block.
    rows, inv = params.table(age, domain, fine, ctype, shift=-np.log(theta))
    theta32 = theta.astype(np.float32)

    def block(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # one generator per block: the result does not depend on thread scheduling
        rng = np.random.default_rng([seed, 2, i])
        sl = slice(i * _CHUNK, min(n, (i + 1) * _CHUNK))
        q = params.exp_log_mu(rows, inv[sl], u[sl], offset[sl], stride[sl])
        q *= (lib[sl] / (q @ theta32))[:, None].astype(np.float32)
        q *= rng.standard_gamma(np.broadcast_to(theta32[None, :], q.shape), dtype=np.float32)
        c = rng.poisson(q).astype(np.int32).reshape(-1)
        nzi = np.flatnonzero(c)
        return c[nzi], (nzi % G).astype(np.int32), np.bincount(nzi // G, minlength=q.shape[0])

    # numpy's samplers and large ufuncs release the GIL, so threads use all cores
    n_blocks = -(-n // _CHUNK)
    with ThreadPoolExecutor(max_workers=max(1, min(cpu_count(), n_blocks))) as pool:
        parts = list(pool.map(block, range(n_blocks)))
    data = [p[0] for p in parts]
    indices = [p[1] for p in parts]
    nnz = [np.zeros(1, np.int64)] + [p[2] for p in parts]
    indptr = np.cumsum(np.concatenate(nnz))
    counts = sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0, np.int32),
         np.concatenate(indices) if indices else np.zeros(0, np.int32), indptr),
        shape=(n, G),
    )

    obs = pd.DataFrame(
        {
            AGE: pd.Categorical.from_codes(age, values[AGE]),
            DOMAIN: pd.Categorical.from_codes(domain, values[DOMAIN]),
            CELLTYPE: pd.Categorical.from_codes(ctype, values[CELLTYPE]),
            FINE: pd.Categorical.from_codes(fine, values[FINE]),
            "u": u,
            "library_size": lib,
            "sub_u": sub_u,
            "noise_offset": offset,
            "noise_stride": stride,
        },
        index=pd.Index([f"cell_{i}" for i in range(n)]),
    )
    var = pd.DataFrame({"baseline": b, "dispersion": theta}, index=pd.Index(genes))
    adata = AnnData(X=counts.copy(), obs=obs, var=var)
    adata.layers["counts"] = counts
    adata.obsm["gumbel"] = gumbel
    tr = np.array(trend_rows, dtype=np.float64).reshape(-1, 4)
    adata.uns[UNS_KEY] = {
        "version": 1,
        "seed": int(seed),
        "dag": dag,
        "edges": ",".join(f"{p}->{CELLTYPE}" for p in params.parents),
        "interaction": bool(interaction),
        "noise": float(noise),
        "library_size": float(library_size),
        "library_sd": float(library_sd),
        "values": {k: np.array(v, dtype=object) for k, v in values.items()},
        "genes": np.array(genes, dtype=object),
        "n_sub": n_sub,
        "W_age": w_age, "W_domain": w_domain, "W_base": w_base,
        "b": b, "E_age": e_age, "E_domain": e_domain, "E_celltype": e_type, "E_sub": e_sub,
        "E_int": e_int, "L": loading, "theta": theta,
        "age_trend_genes": {
            "celltype": np.array([values[CELLTYPE][int(k)] for k in tr[:, 0]], dtype=object),
            "gene": np.array([genes[int(g)] for g in tr[:, 1]], dtype=object),
            "direction": tr[:, 2].astype(np.int64),
            "log_effect": tr[:, 3],
        },
    }
    return adata


def _check_positive(**kw: int) -> None:
    for k, v in kw.items():
        if int(v) < 1:
            raise BenchError(f"{k}={v}: must be a positive integer")


def _params_from(adata: AnnData) -> _Params:
    u = adata.uns.get(UNS_KEY)
    if not isinstance(u, Mapping) or "E_int" not in u:
        raise DataError(
            "this AnnData was not made by causcell_bench.datasets.simulate (uns['synthetic'] is missing); "
            "true counterfactuals exist only for the synthetic dataset"
        )
    n_sub = np.asarray(u["n_sub"], dtype=np.int64)
    parents = [e.split("->")[0] for e in str(u["edges"]).split(",") if e]
    genes = [str(g) for g in u["genes"]]
    return _Params(
        values={k: [str(x) for x in v] for k, v in u["values"].items()},
        n_sub=n_sub, sub_offset=np.concatenate([[0], np.cumsum(n_sub)[:-1]]).astype(np.int64),
        parents=parents,
        w_age=np.asarray(u["W_age"], np.float64), w_domain=np.asarray(u["W_domain"], np.float64),
        w_base=np.asarray(u["W_base"], np.float64),
        b=np.asarray(u["b"], np.float32), e_age=np.asarray(u["E_age"], np.float32),
        e_domain=np.asarray(u["E_domain"], np.float32), e_type=np.asarray(u["E_celltype"], np.float32),
        e_sub=np.asarray(u["E_sub"], np.float32), e_int=np.asarray(u["E_int"], np.float32),
        loading=np.asarray(u["L"], np.float32), theta=np.asarray(u["theta"], np.float32),
        noise=float(u["noise"]), pool=_noise_pool(int(u["seed"]), len(genes)), genes=genes,
    )


def _codes(adata: AnnData, column: str, values: list[str]) -> np.ndarray:
    if column not in adata.obs.columns:
        raise DataError(f"obs column {column!r} is missing; it is needed to recompute the synthetic SCM")
    codes = pd.Categorical(adata.obs[column].astype(str), categories=values).codes.astype(np.int64)
    if (codes < 0).any():
        bad = sorted(set(adata.obs[column].astype(str)) - set(values))[:5]
        raise DataError(f"obs[{column!r}] holds values {bad} that the simulator never made; known: {values}")
    return codes


def age_trend_genes(adata: AnnData) -> pd.DataFrame:
    """The recorded age-trend genes: celltype, gene, direction (+1 up / -1 down with age), log_effect."""
    u = adata.uns.get(UNS_KEY)
    if not isinstance(u, Mapping) or "age_trend_genes" not in u:
        raise DataError("no age-trend genes recorded: this AnnData was not made by causcell_bench.datasets.simulate")
    return pd.DataFrame({k: np.asarray(v) for k, v in u["age_trend_genes"].items()})


def true_counterfactual(
    adata: AnnData, do: Mapping[str, str]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Exact counterfactual of every cell of ``adata`` under ``do(concept = value, ...)``.

    Labels: intervened concepts are set; their descendants (celltype, then the fine
    subtype) are recomputed with the cell's own stored noise; everything else keeps
    its value. Expression: the noiseless expected expression at the cell's own
    library size and noise e_c, log1p(CP10k) = log1p(1e4 * softmax(log mu_c)).
    When ``adata`` holds a subset of the simulated genes (e.g. after HVG selection)
    the proportions are renormalised over those genes, as preprocessing does.

    Returns ``(obs_cf, X_cf, X_factual)``: counterfactual labels (index = obs_names),
    and two dense float32 (n_cells, n_vars) arrays in the column order of ``adata``.
    """
    params = _params_from(adata)
    do = dict(do or {})
    for c, v in do.items():
        if c not in CONCEPTS:
            raise BenchError(f"cannot intervene on {c!r}: the synthetic concepts are {CONCEPTS}")
        if str(v) not in params.values[c]:
            raise BenchError(f"cannot set {c} = {v!r}: known values are {params.values[c]}")

    age = _codes(adata, AGE, params.values[AGE])
    domain = _codes(adata, DOMAIN, params.values[DOMAIN])
    ctype = _codes(adata, CELLTYPE, params.values[CELLTYPE])
    obs = adata.obs
    missing = [c for c in ("u", "sub_u", "noise_offset", "noise_stride") if c not in obs.columns]
    if missing or "gumbel" not in adata.obsm:
        raise DataError(f"the stored per-cell noise is missing (obs {missing}, obsm['gumbel']); regenerate with simulate()")
    gumbel = np.asarray(adata.obsm["gumbel"], dtype=np.float32)
    sub_u = obs["sub_u"].to_numpy(np.float64)
    u = obs["u"].to_numpy(np.float64)
    offset = obs["noise_offset"].to_numpy(np.int64)
    stride = obs["noise_stride"].to_numpy(np.int64)
    if not np.array_equal(params.celltype(age, domain, gumbel), ctype):
        raise DataError("obs['celltype'] disagrees with the stored SCM noise; the labels were edited after simulate()")
    fine = params.subtype(ctype, sub_u)

    age_cf = np.full_like(age, params.values[AGE].index(str(do[AGE]))) if AGE in do else age
    dom_cf = np.full_like(domain, params.values[DOMAIN].index(str(do[DOMAIN]))) if DOMAIN in do else domain
    if CELLTYPE in do:
        type_cf = np.full_like(ctype, params.values[CELLTYPE].index(str(do[CELLTYPE])))
    else:
        type_cf = params.celltype(age_cf, dom_cf, gumbel)
    fine_cf = params.subtype(type_cf, sub_u)

    lut = {g: i for i, g in enumerate(params.genes)}
    unknown = [g for g in adata.var_names if g not in lut]
    if unknown:
        raise DataError(f"{len(unknown)} genes are not simulated genes (e.g. {unknown[:3]}); keep the simulator's var_names")
    cols = np.array([lut[g] for g in adata.var_names], dtype=np.int64)
    subset = cols.size != len(params.genes) or not np.array_equal(cols, np.arange(cols.size))

    def expected(a: np.ndarray, d: np.ndarray, t: np.ndarray, f: np.ndarray) -> np.ndarray:
        rows, inv = params.table(a, d, f, t)
        out = np.empty((a.shape[0], cols.size), dtype=np.float32)
        for s in range(0, a.shape[0], _CHUNK):
            sl = slice(s, s + _CHUNK)
            p = params.exp_log_mu(rows, inv[sl], u[sl], offset[sl], stride[sl])
            if subset:
                p = p[:, cols]
            p *= (np.float32(1e4) / p.sum(1, keepdims=True, dtype=np.float64)).astype(np.float32)
            out[sl] = np.log1p(p)
        return out

    x_f = expected(age, domain, ctype, fine)
    x_cf = expected(age_cf, dom_cf, type_cf, fine_cf)
    obs_cf = pd.DataFrame(
        {
            AGE: pd.Categorical.from_codes(age_cf, params.values[AGE]),
            DOMAIN: pd.Categorical.from_codes(dom_cf, params.values[DOMAIN]),
            CELLTYPE: pd.Categorical.from_codes(type_cf, params.values[CELLTYPE]),
            FINE: pd.Categorical.from_codes(fine_cf, params.values[FINE]),
            "u": u,
        },
        index=adata.obs_names.copy(),
    )
    return obs_cf, x_cf, x_f


def counterfactual_label_posterior(
    adata: AnnData, do: Mapping[str, str], *, concept: str = CELLTYPE, n_samples: int = 200_000, seed: int = 0
) -> pd.DataFrame:
    """P(counterfactual ``concept`` = k | the cell's observed labels): one row per cell, one column per value.

    What a model that knows the SCM exactly can know of a cell's counterfactual type
    when it cannot see the cell's Gumbel noise: expression carries no trace of it
    (only the argmax, the observed type, depends on it), so the noise is abducted from
    the labels alone, by Monte Carlo over ``n_samples`` Gumbel vectors per (age, domain).
    Its argmax is the best deterministic prediction, the realistic ceiling of causal
    accuracy (the stored-noise truth is the unreachable one). The roots (age, domain)
    have no noise to abduct: they take the intervened value, or keep their own.
    """
    params = _params_from(adata)
    bad = [c for c in [*do, concept] if c not in (AGE, DOMAIN, CELLTYPE)]
    if bad:
        raise BenchError(f"{bad} is not a concept of the synthetic data; concepts are {CONCEPTS}")
    if concept != CELLTYPE:
        values = list(params.values[concept])
        codes = (np.full(adata.n_obs, values.index(str(do[concept]))) if concept in do
                 else _codes(adata, concept, values))
        return pd.DataFrame(np.eye(len(values))[codes], index=adata.obs_names.copy(), columns=values)
    k = params.w_base.shape[0]
    age = _codes(adata, AGE, params.values[AGE])
    domain = _codes(adata, DOMAIN, params.values[DOMAIN])
    ctype = _codes(adata, CELLTYPE, params.values[CELLTYPE])
    out = np.zeros((adata.n_obs, k))
    if CELLTYPE in do:
        out[:, params.values[CELLTYPE].index(str(do[CELLTYPE]))] = 1.0
    else:
        a_cf = params.values[AGE].index(str(do[AGE])) if AGE in do else None
        d_cf = params.values[DOMAIN].index(str(do[DOMAIN])) if DOMAIN in do else None
        g = np.random.default_rng([seed, 23]).gumbel(size=(n_samples, k))
        for a, d in {(int(x), int(y)) for x, y in zip(age, domain)}:
            fact = params.celltype(np.full(n_samples, a), np.full(n_samples, d), g)
            cf = params.celltype(np.full(n_samples, a if a_cf is None else a_cf),
                                 np.full(n_samples, d if d_cf is None else d_cf), g)
            joint = np.bincount(fact * k + cf, minlength=k * k).reshape(k, k).astype(np.float64)
            seen = joint.sum(1, keepdims=True)
            # a type never drawn under these parents (probability < 1/n_samples) keeps its type
            post = np.where(seen > 0, joint / np.maximum(seen, 1.0), np.eye(k))
            rows = (age == a) & (domain == d)
            out[rows] = post[ctype[rows]]
    return pd.DataFrame(out, index=adata.obs_names.copy(), columns=list(params.values[CELLTYPE]))


__all__ = [
    "age_trend_genes",
    "counterfactual_label_posterior",
    "simulate",
    "synthetic_spec",
    "true_counterfactual",
]


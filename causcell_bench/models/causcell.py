"""CausCell: causal disentanglement + conditional diffusion for single cells.

Clean-room implementation of Gao, Dong, Shan, Li & Liu, "Causal
disentanglement for single-cell representations and controllable
counterfactual generation", Nat Commun 16, 6775 (2025), written from the
paper's Methods and the project spec (``specs/causcell.md``).

The model knows nothing of the benchmark: expression arrays (dense or scipy
CSR, log1p CP10k), integer label codes and a DAG adjacency matrix go in;
arrays come out.

Pieces (paper section in brackets):

- causal disentanglement module F: an MLP encoder x0 -> q(eps | x0) over m+1
  concept tokens of width d; a closed-form linear SCM layer
  z = (I - A^T)^-1 eps per feature dimension [Causal disentanglement module];
  one linear label predictor per observed concept on z_k (cross-entropy on
  logits, or ``label_head="softmax"``: on softmax probabilities, the authors'
  bounded variant); independence of the unexplained token u from the labels
  through one adversary per concept (``independence="adversary"``, bounded:
  see :meth:`CausCellNet._adversary_pair`) or, as the authors do, minus the
  label heads' cross-entropy on u (``"negative_ce"``);
  KL(q(eps|x0) || N(0, I)), mean over dimensions, in nats or bits.
- two optional additions, not in the paper (weight 0 = the paper's objective):
  an *exclusivity* penalty (z_k holds no linear information on a
  non-ancestor concept's label beyond its own label; u none on any) and an
  *exogenous-independence* penalty (eps_k of a non-root is independent of
  its non-descendants' labels, so a parent's effect on a child must flow
  through the SCM). Both are the optimal linear adversary solved in closed
  form on each batch (:func:`linear_dependence`). Without them, every token
  ends up predicting every label, because nothing in the paper's objective
  removes redundant information from a token.
- generative module G: an x0-predicting diffusion model (T = 1000, "linear"
  schedule) whose denoiser takes the noisy cell as ONE query token and the
  m+1 concept tokens as keys/values of cross-attention blocks.
- samplers: the paper's 1000-step ancestral sampler and a deterministic DDIM
  sampler with a chosen number of steps.
- counterfactuals: ``mode="do"`` (graph surgery: the intervened node takes a
  donor's z, its descendants are recomputed through the SCM, everything else
  is kept) and ``mode="exogenous"`` (the authors' swap of the donor's eps,
  then the full SCM forward).

Conventions: ``adjacency[parent, child] = 1``; the last node is the
unexplained concept u and has no edges.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from causcell_bench.models.utils import StepCallback, resolve_device

__all__ = [
    "CausCellModel",
    "CausCellNet",
    "check_dag",
    "combination_weights",
    "descendants",
    "diffusion_schedule",
    "linear_dependence",
    "scm_forward",
    "scm_matrix",
    "topological_order",
]

MODES = ("do", "exogenous")
SAMPLERS = ("ancestral", "ddim")
# "mean": mean over genes and cells; "gene_sum": sum over genes, mean over cells;
# "sum": sum over genes and cells (the authors'; grows with the batch size)
RECON_REDUCTIONS = ("mean", "gene_sum", "sum")
LABEL_HEADS = ("logits", "softmax")
INDEPENDENCE = ("adversary", "negative_ce")
KL_UNITS = ("nats", "bits")


# --- DAG helpers -------------------------------------------------------------
def topological_order(adjacency: np.ndarray) -> list[int]:
    """Node indices with every parent before its children; ValueError on a cycle."""
    a = np.asarray(adjacency) != 0
    n = a.shape[0]
    indeg = a.sum(0).astype(int)
    ready = [j for j in range(n) if indeg[j] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in np.flatnonzero(a[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(int(j))
    if len(order) < n:
        stuck = sorted(set(range(n)) - set(order))
        raise ValueError(
            f"the adjacency matrix is not a DAG: nodes {stuck} lie on or below a cycle; "
            "remove an edge so that no concept is its own ancestor"
        )
    return order


def check_dag(adjacency: Any, n_nodes: int | None = None) -> np.ndarray:
    """Validate a CausCell adjacency matrix and return it as float32.

    It must be square ((m+1) x (m+1) when ``n_nodes`` is given), finite, with
    a zero diagonal, acyclic, and its last node (u) must have no edges.
    """
    a = np.asarray(adjacency, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"the adjacency matrix must be square, got shape {a.shape}")
    if n_nodes is not None and a.shape[0] != n_nodes:
        raise ValueError(
            f"the adjacency matrix has {a.shape[0]} nodes but the model has {n_nodes} "
            "(m observed concepts + the unexplained node u, last)"
        )
    if not np.isfinite(a).all():
        raise ValueError("the adjacency matrix has non-finite entries")
    if np.any(np.diag(a) != 0):
        loops = np.flatnonzero(np.diag(a)).tolist()
        raise ValueError(f"the adjacency matrix has self-loops at nodes {loops}; a concept cannot cause itself")
    if np.any(a[-1] != 0) or np.any(a[:, -1] != 0):
        raise ValueError("the last node is the unexplained concept u and must have no edges (last row/column zero)")
    topological_order(a)
    return a.astype(np.float32)


def descendants(adjacency: np.ndarray, nodes: Sequence[int]) -> set[int]:
    """All nodes reachable from ``nodes`` (excluding the start nodes unless reachable)."""
    a = np.asarray(adjacency) != 0
    seen: set[int] = set()
    todo = list(nodes)
    while todo:
        for j in np.flatnonzero(a[todo.pop()]):
            if int(j) not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return seen


def scm_matrix(adjacency: np.ndarray) -> np.ndarray:
    """C = (I - A^T)^-1, so that z = C eps solves z = A^T z + eps."""
    a = check_dag(adjacency)
    return np.linalg.inv(np.eye(a.shape[0]) - a.T.astype(np.float64)).astype(np.float32)


def scm_forward(eps: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Linear SCM layer per feature dim: eps (B, m+1, d) -> z (B, m+1, d) with z = C eps."""
    return torch.einsum("ji,bid->bjd", c, eps)


# --- independence penalties -------------------------------------------------------
def _center(x: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Subtract the mean (or, with one-hot ``groups``, each group's mean) from every row."""
    if groups is None:
        return x - x.mean(0, keepdim=True)
    means = (groups.T @ x) / groups.sum(0).clamp_min(1.0)[:, None]
    return x - groups @ means


def linear_dependence(
    z: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None = None, ridge: float = 0.1
) -> torch.Tensor:
    """Sum of squared canonical correlations between z (B, d) and one-hot labels y (B, n), over n - 1.

    In [0, 1]: 0 when no linear function of z predicts y, 1 when one predicts
    it perfectly. With one-hot ``groups`` both are centred within each group,
    so it measures what z says about y *beyond* the group label (conditional
    dependence). It is the optimal linear adversary solved in closed form on
    the batch, so the encoder cannot escape it by rotating or shrinking z (the
    ridge is relative to z's own scale), unlike a lagging learned adversary.
    """
    b = z.shape[0]
    zc, yc = _center(z, groups), _center(y, groups)
    szz = zc.T @ zc / b
    syy = yc.T @ yc / b
    szy = zc.T @ yc / b
    eye_z = torch.eye(z.shape[1], device=z.device, dtype=z.dtype)
    eye_y = torch.eye(y.shape[1], device=z.device, dtype=z.dtype)
    szz = szz + (ridge * szz.diagonal().mean() + 1e-12) * eye_z
    syy = syy + (1e-3 * syy.diagonal().mean() + 1e-12) * eye_y
    m = torch.linalg.solve(szz, szy) @ torch.linalg.solve(syy, szy.T)
    return m.diagonal().sum() / max(y.shape[1] - 1, 1)


# --- diffusion schedule -----------------------------------------------------
def diffusion_schedule(n_timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """The "linear" DDPM schedule: betas = linspace(sqrt(1e-4), sqrt(2e-2), T)^2."""
    betas = torch.linspace(math.sqrt(1e-4), math.sqrt(2e-2), n_timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return {
        "betas": betas,
        "abar": abar,
        "abar_prev": abar_prev,
        # posterior q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, var)
        "post_c0": betas * abar_prev.sqrt() / (1 - abar),
        "post_ct": alphas.sqrt() * (1 - abar_prev) / (1 - abar),
        "post_var": betas * (1 - abar_prev) / (1 - abar),
    }


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of integer timesteps, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


# --- networks ----------------------------------------------------------------
class GEGLU(nn.Module):
    """Gated feed-forward: Linear -> (a * gelu(g)) -> Linear."""

    def __init__(self, width: int, mult: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2 * mult * width)
        self.out = nn.Linear(mult * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, g = self.proj(h).chunk(2, dim=-1)
        return self.out(a * F.gelu(g))


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens (width W) over context tokens (width d)."""

    def __init__(self, width: int, ctx_dim: int, heads: int, head_dim: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(width, inner, bias=qkv_bias)
        self.k = nn.Linear(ctx_dim, inner, bias=qkv_bias)
        self.v = nn.Linear(ctx_dim, inner, bias=qkv_bias)
        self.out = nn.Linear(inner, width)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(ctx)), split(self.v(ctx)))
        return self.out(o.transpose(1, 2).reshape(b, -1, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-LN cross-attention then pre-LN GEGLU feed-forward, both residual."""

    def __init__(
        self, width: int, ctx_dim: int, heads: int, head_dim: int, ff_mult: int, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CrossAttention(width, ctx_dim, heads, head_dim, qkv_bias)
        self.ln2 = nn.LayerNorm(width)
        self.ff = GEGLU(width, ff_mult)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), ctx)
        return h + self.ff(self.ln2(h))


class Denoiser(nn.Module):
    """g_theta(x_t, t, z) -> x0: x_t is one query token, the concept tokens are keys/values.

    ``hidden=None`` keeps the token width equal to the number of genes (the
    paper); otherwise x_t is projected to ``hidden`` and back (fast preset).
    The time-embedding MLP is ``time_mlp_mult`` x the width inside (authors: 4).
    """

    def __init__(
        self,
        n_genes: int,
        ctx_dim: int,
        hidden: int | None,
        n_blocks: int,
        heads: int,
        head_dim: int,
        ff_mult: int,
        time_mlp_mult: int = 1,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        width = n_genes if hidden is None else hidden
        self.width = width
        self.inp = nn.Identity() if hidden is None else nn.Linear(n_genes, width)
        tw = time_mlp_mult * width
        self.time = nn.Sequential(nn.Linear(width, tw), nn.Mish(), nn.Linear(tw, width))
        self.blocks = nn.ModuleList(
            Block(width, ctx_dim, heads, head_dim, ff_mult, qkv_bias) for _ in range(n_blocks)
        )
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_genes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = (self.inp(x_t) + self.time(sinusoidal(t, self.width)))[:, None, :]
        for blk in self.blocks:
            h = blk(h, ctx)
        return self.head(self.ln(h[:, 0]))


class CausCellNet(nn.Module):
    """All trainable parts of CausCell plus the fixed SCM matrix and diffusion schedule."""

    def __init__(
        self,
        n_genes: int,
        concept_sizes: Sequence[int],
        adjacency: np.ndarray,
        *,
        d: int = 32,
        enc_hidden: int | None = None,
        hidden: int | None = None,
        n_blocks: int = 4,
        heads: int = 4,
        head_dim: int = 64,
        ff_mult: int = 4,
        n_timesteps: int = 1000,
        time_mlp_mult: int = 1,
        qkv_bias: bool = False,
        independence: str = "adversary",
    ) -> None:
        super().__init__()
        if independence not in INDEPENDENCE:
            raise ValueError(f"independence must be one of {INDEPENDENCE}, got {independence!r}")
        if int(time_mlp_mult) < 1:
            raise ValueError(f"time_mlp_mult must be >= 1, got {time_mlp_mult!r}")
        self.independence = independence
        self.n_genes = int(n_genes)
        self.concept_sizes = [int(k) for k in concept_sizes]
        self.m = len(self.concept_sizes)
        self.d = int(d)
        self.n_timesteps = int(n_timesteps)
        a = check_dag(adjacency, n_nodes=self.m + 1)
        self.adjacency_np = a
        self.topo = topological_order(a)
        self.register_buffer("A", torch.from_numpy(a))
        self.register_buffer("C", torch.from_numpy(scm_matrix(a)))
        # authors: G -> G/4 -> (m+1) * d * 2, Mish
        eh = enc_hidden or max(64, self.n_genes // 4)
        self.encoder = nn.Sequential(
            nn.Linear(self.n_genes, eh), nn.Mish(), nn.Linear(eh, (self.m + 1) * self.d * 2)
        )
        self.predictors = nn.ModuleList(nn.Linear(self.d, k) for k in self.concept_sizes)
        # independence of u: a separate adversary per concept, looking only at z_u; the authors'
        # "negative_ce" reuses the label predictors instead, so it has no adversary parameters
        self.adversaries = nn.ModuleList(
            self._adversary(k) for k in self.concept_sizes if independence == "adversary"
        )
        # optional additions (not in the paper; weight 0 = off), see `linear_dependence`:
        # exclusivity: z_k holds no linear information on y_j beyond y_k, for j neither k nor an
        # ancestor of k (z_k legitimately contains its ancestors through the SCM); u (node m)
        # holds none on any label
        anc = [descendants(a.T, [k]) for k in range(self.m)]
        desc = [descendants(a, [k]) for k in range(self.m)]
        self.excl_pairs = [(k, j) for k in range(self.m) for j in range(self.m) if j != k and j not in anc[k]]
        self.excl_pairs += [(self.m, j) for j in range(self.m)]
        # exogenous independence: eps_k of a non-root is independent of every non-descendant's label,
        # so that the effect of a parent on a child has to go through the SCM
        self.exo_pairs = [
            (k, j) for k in range(self.m) if anc[k] for j in range(self.m) if j != k and j not in desc[k]
        ]
        for j, nj in enumerate(self.concept_sizes):
            self.register_buffer(f"prior{j}", torch.full((nj,), 1.0 / nj))
        self.denoiser = Denoiser(
            self.n_genes, self.d, hidden, n_blocks, heads, head_dim, ff_mult, int(time_mlp_mult), bool(qkv_bias)
        )
        for k, v in diffusion_schedule(self.n_timesteps).items():
            self.register_buffer(k, v.float())

    def _adversary(self, n_out: int) -> nn.Module:
        return nn.Sequential(nn.Linear(self.d, self.d), nn.Mish(), nn.Linear(self.d, n_out))

    @torch.no_grad()
    def set_label_stats(self, codes: np.ndarray, smoothing: float = 1e-3) -> None:
        """Store the label marginals p(y_j) of the training cells (targets of the u adversaries)."""
        codes = np.asarray(codes)
        for j, nj in enumerate(self.concept_sizes):
            y = codes[:, j][codes[:, j] >= 0]
            p = np.bincount(y, minlength=nj) + smoothing
            getattr(self, f"prior{j}").copy_(torch.from_numpy(p / p.sum()))

    # F: causal disentanglement ---------------------------------------------
    def encode(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(eps | x0): (mean, logvar), each (B, m+1, d)."""
        out = self.encoder(x0).view(-1, self.m + 1, 2, self.d)
        return out[:, :, 0], out[:, :, 1].clamp(-10.0, 10.0)

    def scm(self, eps: torch.Tensor) -> torch.Tensor:
        return scm_forward(eps, self.C)

    @staticmethod
    def _adversary_pair(
        adv: nn.Module, source: torch.Tensor, y: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversary cross-entropy, encoder confusion), both >= 0 and bounded below.

        The adversary learns to predict ``y`` from the detached ``source``
        (cross-entropy >= 0). The encoder is pushed to make the frozen
        adversary's prediction equal ``target`` (a per-cell distribution: the
        label prior, or a conditional given another label):
        KL(target || p_adv(y | source)) >= 0, zero exactly when the source
        tells the adversary nothing beyond ``target``. Unlike the authors'
        "minus cross-entropy" term, neither player can run to minus infinity.
        """
        ce = F.cross_entropy(adv(source.detach()), y, ignore_index=-1)
        frozen = {n: p.detach() for n, p in adv.named_parameters()}
        logp = F.log_softmax(torch.func.functional_call(adv, frozen, (source,)), dim=-1)
        conf = (target * (target.clamp_min(1e-12).log() - logp)).sum(-1).mean()
        return ce, conf

    def independence_terms(self, z_u: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversary loss, encoder confusion loss) of u against every observed label (means over concepts)."""
        ce_sum, conf_sum = z_u.new_zeros(()), z_u.new_zeros(())
        for j, adv in enumerate(self.adversaries):
            prior = getattr(self, f"prior{j}").expand(z_u.shape[0], -1)
            ce, conf = self._adversary_pair(adv, z_u, codes[:, j], prior)
            ce_sum, conf_sum = ce_sum + ce, conf_sum + conf
        return ce_sum / self.m, conf_sum / self.m

    def _onehot(self, codes: torch.Tensor, j: int) -> torch.Tensor:
        y = codes[:, j]
        return F.one_hot(y.clamp_min(0), self.concept_sizes[j]).float() * (y >= 0)[:, None]

    def exclusivity_term(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean linear dependence of z_k on y_j given y_k over ``excl_pairs`` (u: marginal)."""
        vals = [
            linear_dependence(z[:, k], self._onehot(codes, j), self._onehot(codes, k) if k < self.m else None)
            for k, j in self.excl_pairs
        ]
        return torch.stack(vals).mean()

    def exogenous_term(self, eps: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean linear dependence of eps_k on y_j over ``exo_pairs``."""
        return torch.stack([linear_dependence(eps[:, k], self._onehot(codes, j)) for k, j in self.exo_pairs]).mean()

    # G: diffusion ------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.abar[t][:, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def losses(
        self,
        x0: torch.Tensor,
        codes: torch.Tensor,
        cell_weight: torch.Tensor,
        generator: torch.Generator | None,
        *,
        recon_reduction: str = "mean",
        label_head: str = "logits",
        kl_units: str = "nats",
        exclusivity: bool = False,
        exogenous: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one minibatch (unweighted; the trainer combines them).

        ``independence="adversary"``: ``adv`` is the u adversaries' own
        cross-entropy (it only trains them) and ``indep`` the encoder's bounded
        confusion term against them. ``"negative_ce"`` (the authors'): no
        ``adv``; ``indep`` is minus the label heads' mean cross-entropy on the
        sampled z_u, nothing detached (bounded below only with
        ``label_head="softmax"``). The optional ``excl``/``exo`` are closed-form
        linear-dependence penalties in [0, 1]. ``recon_reduction``: see
        :data:`RECON_REDUCTIONS`; ``kl_units="bits"`` divides the KL by ln 2.
        """
        b = x0.shape[0]
        mu, logvar = self.encode(x0)
        eps = mu + torch.randn(mu.shape, generator=generator, device=mu.device) * (0.5 * logvar).exp()
        z = self.scm(eps)

        def head(k: int, zk: torch.Tensor) -> torch.Tensor:
            # the authors' heads end in a softmax, and cross_entropy applies its own log-softmax
            # on top: the loss of a head is then bounded by log(1 + (n - 1) e)
            out = self.predictors[k](zk)
            return out.softmax(-1) if label_head == "softmax" else out

        pred = sum(F.cross_entropy(head(k, z[:, k]), codes[:, k], ignore_index=-1) for k in range(self.m))
        # adversaries look at posterior means, as the embeddings do: on noisy samples the encoder
        # could hide information in offsets far below the posterior noise, which a probe on the
        # means then reads back perfectly
        z_mean = self.scm(mu)
        indep: dict[str, torch.Tensor] = {}
        if self.independence == "adversary":
            indep["adv"], indep["indep"] = self.independence_terms(z_mean[:, self.m], codes)
        else:
            ce_u = sum(F.cross_entropy(head(k, z[:, self.m]), codes[:, k], ignore_index=-1) for k in range(self.m))
            indep["indep"] = -ce_u / self.m
        extra: dict[str, torch.Tensor] = {}
        if exclusivity and self.excl_pairs:
            extra["excl"] = self.exclusivity_term(z_mean, codes)
        if exogenous and self.exo_pairs:
            extra["exo"] = self.exogenous_term(mu, codes)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        if kl_units == "bits":
            kl = kl / math.log(2.0)
        t = torch.randint(0, self.n_timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x0_hat = self.denoiser(self.q_sample(x0, t, noise), t, z)
        se = (x0_hat - x0).pow(2)
        per_cell = se.mean(1) if recon_reduction == "mean" else se.sum(1)
        weighted = cell_weight * per_cell
        recon = weighted.sum() if recon_reduction == "sum" else weighted.mean()
        # key order as before the switches existed: the trainer sums the terms in this order
        terms = {"recon": recon, "pred": pred / self.m}
        if "adv" in indep:
            terms["adv"] = indep["adv"]
        return {**terms, "indep": indep["indep"], "kl": kl, **extra}


# --- helpers -----------------------------------------------------------------
def _rows(x: Any, idx: np.ndarray | slice) -> np.ndarray:
    """Dense float32 rows of a dense or sparse matrix (only these rows are densified)."""
    r = x[idx]
    if sp.issparse(r):
        r = r.toarray()
    return np.asarray(r, dtype=np.float32)


def combination_weights(codes: np.ndarray, rescale: bool = True) -> np.ndarray:
    """Per-cell weight 1 - freq(label combination)/N (rare combinations weigh more).

    ``rescale=True`` divides by the mean weight so that the loss scale does
    not depend on the number of combinations; ``False`` keeps the raw weights
    (the authors'). With a single combination every weight would be 0, so all
    cells then weigh 1 either way.
    """
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    w = 1.0 - counts[inv.ravel()] / codes.shape[0]
    if w.sum() <= 0:
        return np.ones(codes.shape[0], dtype=np.float32)
    return (w / w.mean() if rescale else w).astype(np.float32)


def _progress(enabled: bool, total: int, what: str) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True)
    prog.start()
    prog.add_task(what, total=total, info="")
    return prog


# CausCellModel settings that are not CausCellNet constructor arguments
_MODEL_ONLY = ("n_genes", "concept_sizes", "adjacency", "ema_at_inference")


class CausCellModel:
    """Trainer / inference wrapper around :class:`CausCellNet` with EMA weights and donor pools.

    Arrays in, arrays out: ``X`` is (n_cells, n_genes) log1p-CP10k (numpy or
    scipy sparse; densified per minibatch), ``codes`` is (n_cells, m) int
    label codes (-1 = unknown), ``adjacency`` is (m+1, m+1) with
    ``A[parent, child] = 1`` and u last.

    ``ema_at_inference=True`` encodes, predicts and samples with the EMA
    weights; ``False`` with the online weights (the authors load those).
    The attribute can be changed after training.
    """

    def __init__(
        self,
        n_genes: int,
        concept_sizes: Sequence[int],
        adjacency: Any,
        *,
        d: int = 32,
        enc_hidden: int | None = None,
        hidden: int | None = None,
        n_blocks: int = 4,
        heads: int = 4,
        head_dim: int = 64,
        ff_mult: int = 4,
        n_timesteps: int = 1000,
        time_mlp_mult: int = 1,
        qkv_bias: bool = False,
        independence: str = "adversary",
        ema_at_inference: bool = True,
        device: str | torch.device = "auto",
    ) -> None:
        self.config: dict[str, Any] = {
            "n_genes": int(n_genes),
            "concept_sizes": [int(k) for k in concept_sizes],
            "adjacency": np.asarray(adjacency, dtype=np.float32).tolist(),
            "d": d,
            "enc_hidden": enc_hidden,
            "hidden": hidden,
            "n_blocks": n_blocks,
            "heads": heads,
            "head_dim": head_dim,
            "ff_mult": ff_mult,
            "n_timesteps": n_timesteps,
            "time_mlp_mult": int(time_mlp_mult),
            "qkv_bias": bool(qkv_bias),
            "independence": independence,
            "ema_at_inference": bool(ema_at_inference),
        }
        self.ema_at_inference = bool(ema_at_inference)
        self.device = resolve_device(device)
        cfg = {k: v for k, v in self.config.items() if k not in _MODEL_ONLY}
        self.net = CausCellNet(n_genes, concept_sizes, np.asarray(adjacency, dtype=np.float32), **cfg).to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.n_updates = 0
        self.ema_updates = 0
        self.history: list[dict[str, float]] = []
        # pools[k][v] = (eps_k, z_k) posterior means of training cells with label v of concept k
        self.pools: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    @property
    def m(self) -> int:
        return self.net.m

    @property
    def adjacency(self) -> np.ndarray:
        return self.net.adjacency_np

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def inference_net(self) -> CausCellNet:
        """The weights used by encode / predict_labels / sample: EMA or online (``ema_at_inference``)."""
        return self.ema if self.ema_at_inference else self.net

    # --- training ---------------------------------------------------------
    def fit(
        self,
        X: Any,
        codes: np.ndarray,
        *,
        n_steps: int = 1000,
        batch_size: int = 128,
        grad_accum: int = 1,
        lr: float = 1e-3,
        ema_decay: float = 0.995,
        ema_start: int = 0,
        ema_every: int = 1,
        recon_weight: float = 1.0,
        recon_reduction: str = "mean",
        combo_weights: str = "rescaled",
        label_head: str = "logits",
        kl_units: str = "nats",
        pred_weight: float = 1.0,
        adv_weight: float = 1.0,
        excl_weight: float = 0.0,
        exo_weight: float = 0.0,
        kl_weight: float = 1.0,
        grad_clip: float | None = 1.0,
        log_every: int = 50,
        seed: int = 0,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> list[dict[str, float]]:
        """Train end to end with Adam for ``n_steps`` optimizer steps; returns the loss history.

        Loss = recon_weight * L_G + pred_weight * L_pred + kl_weight * KL + adv_weight * L_indep(u)
        [+ excl_weight * L_excl + exo_weight * L_exo] + L_adv (the adversaries' own cross-entropy,
        which reaches only their parameters; absent with ``independence="negative_ce"``).
        ``excl_weight``/``exo_weight`` switch on the optional exclusivity and
        exogenous-independence penalties (0 = the paper's objective).
        ``recon_reduction``/``label_head``/``kl_units``: see :meth:`CausCellNet.losses`;
        ``combo_weights``: ``"rescaled"`` (mean 1) or ``"raw"`` 1 - freq/N cell weights.
        EMA: after optimizer step s (1-based), the EMA copies the online weights while
        s < ``ema_start``, then takes a decay step whenever s is a multiple of ``ema_every``.
        ``callback(step, n_steps, loss)``, if given, is called after every optimizer step with that
        step's total loss (mean over its ``grad_accum`` minibatches); it must not touch random state.
        """
        codes = np.asarray(codes, dtype=np.int64)
        n = codes.shape[0]
        if X.shape[0] != n:
            raise ValueError(f"X has {X.shape[0]} rows but codes has {n}")
        if X.shape[1] != self.net.n_genes:
            raise ValueError(f"X has {X.shape[1]} genes, the model {self.net.n_genes}")
        if codes.ndim != 2 or codes.shape[1] != self.m:
            raise ValueError(f"codes must be (n_cells, {self.m}), got {codes.shape}")
        for name, value, allowed in (
            ("recon_reduction", recon_reduction, RECON_REDUCTIONS),
            ("combo_weights", combo_weights, ("rescaled", "raw")),
            ("label_head", label_head, LABEL_HEADS),
            ("kl_units", kl_units, KL_UNITS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if ema_start < 0 or ema_every < 1:
            raise ValueError(f"need ema_start >= 0 and ema_every >= 1, got {ema_start} and {ema_every}")
        if n == 0:
            raise ValueError("no cells to train on")
        weights = torch.from_numpy(combination_weights(codes, rescale=combo_weights == "rescaled"))
        self.net.set_label_stats(codes)
        self.ema.set_label_stats(codes)
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, foreach=True)
        coef = {
            "recon": recon_weight, "pred": pred_weight, "adv": 1.0, "indep": adv_weight,
            "excl": excl_weight, "exo": exo_weight, "kl": kl_weight,
        }
        bs = min(batch_size, n)
        order = rng.permutation(n)
        pos = 0
        running: dict[str, float] = {}
        count = 0
        prog = _progress(progress, n_steps, "CausCell training")
        self.net.train()
        try:
            for step in range(n_steps):
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(grad_accum):
                    if pos + bs > n:
                        order, pos = rng.permutation(n), 0
                    idx = np.sort(order[pos:pos + bs])
                    pos += bs
                    x0 = torch.from_numpy(_rows(X, idx)).to(self.device)
                    c = torch.from_numpy(codes[idx]).to(self.device)
                    w = weights[idx].to(self.device)
                    terms = self.net.losses(
                        x0, c, w, gen, recon_reduction=recon_reduction, label_head=label_head,
                        kl_units=kl_units, exclusivity=excl_weight > 0, exogenous=exo_weight > 0,
                    )
                    loss = sum(coef[k] * v for k, v in terms.items())
                    (loss / grad_accum).backward()
                    for k, v in terms.items():
                        running[k] = running.get(k, 0.0) + float(v.detach())
                    loss_value = float(loss.detach())
                    running["total"] = running.get("total", 0.0) + loss_value
                    step_loss += loss_value
                    count += 1
                if grad_clip:
                    nn.utils.clip_grad_norm_(self.net.parameters(), grad_clip)
                opt.step()
                self._ema_update(ema_decay, ema_start, ema_every)
                if (step + 1) % log_every == 0 or step + 1 == n_steps:
                    rec = {"step": float(self.n_updates), **{k: v / count for k, v in running.items()}}
                    if not all(math.isfinite(v) for v in rec.values()):
                        raise FloatingPointError(f"CausCell training diverged at step {step + 1}: {rec}; lower lr")
                    self.history.append(rec)
                    running, count = {}, 0
                if prog is not None:
                    prog.update(prog.task_ids[0], advance=1, info=f"loss {float(loss):.3f}")
                if callback is not None:
                    callback(step + 1, n_steps, step_loss / grad_accum)
        finally:
            if prog is not None:
                prog.stop()
        self.net.eval()
        return self.history

    @torch.no_grad()
    def _ema_update(self, decay: float, start: int = 0, every: int = 1) -> None:
        self.n_updates += 1
        if self.n_updates < start:
            # before the EMA starts it follows the online weights, so it starts from trained ones
            for pe, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                pe.copy_(p.detach())
        elif self.n_updates % every == 0:
            self.ema_updates += 1
            # warm-up so that short runs are not dominated by the initial weights
            dk = min(decay, (1 + self.ema_updates) / (10 + self.ema_updates))
            for pe, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                pe.mul_(dk).add_(p.detach(), alpha=1 - dk)
        for be, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            be.copy_(b)

    # --- encoding -----------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, X: Any, *, n_samples: int = 0, seed: int = 0, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """(eps, z), each (n_cells, m+1, d), from the inference encoder (EMA or online).

        ``n_samples=0``: posterior means (deterministic); ``k > 0``: the
        average of k reparameterised samples (the authors' 10 passes; ``k = 1``
        is one stochastic encoding).
        """
        net = self.inference_net
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        eps_out, z_out = [], []
        for s in range(0, X.shape[0], batch_size):
            x0 = torch.from_numpy(_rows(X, slice(s, s + batch_size))).to(self.device)
            mu, logvar = net.encode(x0)
            if n_samples > 0:
                std = (0.5 * logvar).exp()
                eps = torch.stack(
                    [mu + torch.randn(mu.shape, generator=gen, device=mu.device) * std for _ in range(n_samples)]
                ).mean(0)
            else:
                eps = mu
            eps_out.append(eps.cpu())
            z_out.append(net.scm(eps).cpu())
        if not eps_out:
            shape = (0, self.m + 1, self.net.d)
            return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        return torch.cat(eps_out).numpy(), torch.cat(z_out).numpy()

    def predict_labels(self, z: np.ndarray) -> list[np.ndarray]:
        """Label codes the inference predictors read from each concept token of z (n, m+1, d)."""
        zt = torch.as_tensor(z, device=self.device)
        with torch.no_grad():
            return [p(zt[:, k]).argmax(-1).cpu().numpy() for k, p in enumerate(self.inference_net.predictors)]

    # --- counterfactuals ------------------------------------------------------
    def build_pools(self, X: Any, codes: np.ndarray, *, pool_size: int = 512, seed: int = 0) -> None:
        """Keep, per concept value, up to ``pool_size`` training cells' (eps_k, z_k) posterior means."""
        codes = np.asarray(codes, dtype=np.int64)
        rng = np.random.default_rng(seed)
        chosen: list[list[np.ndarray]] = []
        for k, size in enumerate(self.net.concept_sizes):
            per_value = []
            for v in range(size):
                idx = np.flatnonzero(codes[:, k] == v)
                if len(idx) > pool_size:
                    idx = np.sort(rng.choice(idx, size=pool_size, replace=False))
                per_value.append(idx)
            chosen.append(per_value)
        union = np.unique(np.concatenate([i for per in chosen for i in per] + [np.zeros(0, np.int64)]))
        eps, z = self.encode(_SubRows(X, union))
        where = {int(c): i for i, c in enumerate(union)}
        self.pools = [
            [
                (
                    torch.from_numpy(eps[[where[int(i)] for i in idx], k].copy()),
                    torch.from_numpy(z[[where[int(i)] for i in idx], k].copy()),
                )
                for idx in per_value
            ]
            for k, per_value in enumerate(chosen)
        ]

    def draw_donors(self, concept: int, value: int, n: int, rng: np.random.Generator, mode: str) -> np.ndarray:
        """``n`` donor representations (eps_k for ``exogenous``, z_k for ``do``) of cells with label ``value``."""
        if not self.pools:
            raise ValueError("no donor pools: call build_pools() after fit()")
        eps_pool, z_pool = self.pools[concept][value]
        if eps_pool.shape[0] == 0:
            raise ValueError(f"no training cell has value code {value} of concept {concept}; cannot intervene")
        pick = rng.integers(0, eps_pool.shape[0], n)
        return (eps_pool if mode == "exogenous" else z_pool)[pick].numpy()

    def intervene(self, eps: np.ndarray, donors: Mapping[int, np.ndarray], mode: str = "do") -> np.ndarray:
        """Counterfactual z (n, m+1, d) from exogenous ``eps`` with ``donors[k]`` (n, d) set on node k.

        ``do``: z is computed factually, then intervened nodes take the donor
        z (their parents are cut), and their descendants are recomputed in
        topological order as z_j = sum_p A[p, j] z_p + eps_j; every other node
        (u included) keeps its factual z exactly.
        ``exogenous``: eps_k is replaced by the donor's eps_k and the whole SCM
        is run forward (the authors' procedure).
        """
        if mode not in MODES:
            raise ValueError(f"unknown counterfactual mode {mode!r}; use one of {MODES}")
        for k in donors:
            if not 0 <= k < self.m:
                raise ValueError(f"node {k} is not an observed concept (0..{self.m - 1}); u cannot be intervened on")
        eps_t = torch.as_tensor(np.asarray(eps, dtype=np.float32))
        c = self.net.C.detach().cpu()
        if mode == "exogenous":
            e2 = eps_t.clone()
            for k, v in donors.items():
                e2[:, k] = torch.as_tensor(v)
            return scm_forward(e2, c).numpy()
        a = self.net.A.detach().cpu()
        z = scm_forward(eps_t, c)
        affected = descendants(self.adjacency, list(donors)) | set(donors)
        for j in self.net.topo:
            if j in donors:
                z[:, j] = torch.as_tensor(donors[j])
            elif j in affected:
                z[:, j] = torch.einsum("p,bpd->bd", a[:, j], z) + eps_t[:, j]
        return z.numpy()

    # --- sampling -------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        z: np.ndarray,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        n_samples: int = 1,
        seed: int = 0,
        batch_size: int = 512,
        clamp_x0: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Generate x0 (n, n_genes) by reverse diffusion conditioned on concept tokens z (n, m+1, d).

        ``ancestral``: the paper's T-step DDPM sampler; ``ddim``: deterministic
        DDIM (eta = 0) over ``steps`` evenly spaced timesteps. ``n_samples``
        runs are averaged. ``clamp_x0`` keeps the x0 estimate non-negative at
        every step (log1p expression is never negative); the authors do not
        clamp, so their output can be negative.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        if sampler == "ddim" and not 1 <= steps <= self.net.n_timesteps:
            raise ValueError(f"ddim steps must be in 1..{self.net.n_timesteps}, got {steps}")
        z_all = torch.as_tensor(np.asarray(z, dtype=np.float32))
        n = z_all.shape[0]
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        net = self.inference_net
        if sampler == "ancestral":
            ts = list(range(self.net.n_timesteps - 1, -1, -1))
        else:
            ts = sorted({int(round(t)) for t in np.linspace(self.net.n_timesteps - 1, 0, steps)}, reverse=True)
        n_batches = math.ceil(n / batch_size) if n else 0
        prog = _progress(progress, n_batches * n_samples * len(ts), f"CausCell {sampler} sampling")
        out = np.zeros((n, self.net.n_genes), dtype=np.float32)
        try:
            for s in range(0, n, batch_size):
                ctx = z_all[s:s + batch_size].to(self.device)
                b = ctx.shape[0]
                acc = torch.zeros(b, self.net.n_genes, device=self.device)
                for _ in range(n_samples):
                    x = torch.randn((b, self.net.n_genes), generator=gen, device=self.device)
                    for i, t in enumerate(ts):
                        tt = torch.full((b,), t, device=self.device, dtype=torch.long)
                        x0 = net.denoiser(x, tt, ctx)
                        if clamp_x0:
                            x0 = x0.clamp_min(0.0)
                        if sampler == "ancestral":
                            if t > 0:
                                mean = net.post_c0[t] * x0 + net.post_ct[t] * x
                                noise = torch.randn(x.shape, generator=gen, device=self.device)
                                x = mean + net.post_var[t].sqrt() * noise
                            else:
                                x = x0
                        else:
                            if i + 1 < len(ts):
                                ab, ab_prev = net.abar[t], net.abar[ts[i + 1]]
                                eps_hat = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
                                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps_hat
                            else:
                                x = x0
                        if prog is not None:
                            prog.update(prog.task_ids[0], advance=1)
                    acc += x
                out[s:s + b] = (acc / n_samples).cpu().numpy()
        finally:
            if prog is not None:
                prog.stop()
        return out

    # --- persistence ----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (plain containers and tensors only)."""
        return {
            "config": self.config,
            "net": {k: v.cpu() for k, v in self.net.state_dict().items()},
            "ema": {k: v.cpu() for k, v in self.ema.state_dict().items()},
            "n_updates": self.n_updates,
            "ema_updates": self.ema_updates,
            "history": self.history,
            "pools": [[(e.cpu(), z.cpu()) for e, z in per] for per in self.pools],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: str | torch.device = "auto") -> CausCellModel:
        cfg = dict(state["config"])
        obj = cls(cfg.pop("n_genes"), cfg.pop("concept_sizes"), np.asarray(cfg.pop("adjacency")), device=device, **cfg)
        obj.net.load_state_dict(state["net"])
        obj.ema.load_state_dict(state["ema"])
        obj.n_updates = int(state["n_updates"])
        # saved before the EMA schedule existed: it was updated at every step
        obj.ema_updates = int(state.get("ema_updates", obj.n_updates))
        obj.history = list(state["history"])
        obj.pools = [[(e, z) for e, z in per] for per in state["pools"]]
        obj.net.eval()
        return obj


class _SubRows:
    """A row subset of a matrix, sliced lazily (keeps sparse inputs sparse)."""

    def __init__(self, x: Any, idx: np.ndarray) -> None:
        self.x, self.idx = x, idx
        self.shape = (len(idx), x.shape[1])

    def __getitem__(self, key: slice) -> Any:
        return self.x[self.idx[key]]


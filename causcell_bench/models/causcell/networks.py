"""The networks of CausCell: the causal disentanglement module F and the denoiser of the generative module G.

After Gao, Dong et al., Nat Commun 2025, Methods. F is an MLP encoder x0 -> q(eps | x0) over m+1
concept tokens, the closed-form linear SCM layer (:mod:`.dag`), one linear label head per observed
concept, and, for the independence of the unexplained token u from the labels, either one adversary
per concept (ours, bounded: :meth:`CausCellNet._adversary_pair`) or minus the label heads'
cross-entropy on u (the authors'). G's denoiser takes the noisy cell as ONE query token and the m+1
concept tokens as keys/values of pre-LN cross-attention blocks with GEGLU feed-forward layers.
:meth:`CausCellNet.losses` gives the loss terms of one minibatch; the optional exclusivity and
exogenous-independence penalties are additions of this implementation (docs/causcell.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from causcell_bench.models.causcell.dag import check_dag, descendants, scm_forward, scm_matrix, topological_order
from causcell_bench.models.causcell.diffusion import SCHEDULE_KEYS, diffusion_schedule, sinusoidal
from causcell_bench.models.causcell.losses import linear_dependence

__all__ = [
    "GEGLU",
    "INDEPENDENCE",
    "KL_UNITS",
    "LABEL_HEADS",
    "RECON_REDUCTIONS",
    "Block",
    "CausCellNet",
    "CrossAttention",
    "Denoiser",
]

# "mean": mean over genes and cells; "gene_sum": sum over genes, mean over cells;
# "sum": sum over genes and cells (the authors'; grows with the batch size)
RECON_REDUCTIONS = ("mean", "gene_sum", "sum")
LABEL_HEADS = ("logits", "softmax")
INDEPENDENCE = ("adversary", "negative_ce")
KL_UNITS = ("nats", "bits")


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
        excl_adversary: bool = False,
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
        # non-linear exclusivity (``excl_adversary``): the linear term above cannot see a label stored
        # non-linearly (on Kang, the cell-type embedding carried the condition, so do(condition) moved
        # the held-out type by a third to a half of the real change). One MLP adversary per pair
        # (k, j) of observed concepts reads z_k and is confused towards p(y_j | y_k) of the training cells
        self.excl_adversary = bool(excl_adversary)
        self.excl_nl_pairs = [(k, j) for k, j in self.excl_pairs if k < self.m] if self.excl_adversary else []
        self.excl_adversaries = nn.ModuleList(self._adversary(self.concept_sizes[j]) for _, j in self.excl_nl_pairs)
        for k, j in self.excl_nl_pairs:
            nk, nj = self.concept_sizes[k], self.concept_sizes[j]
            self.register_buffer(f"cond{k}_{j}", torch.full((nk, nj), 1.0 / nj))
        self.denoiser = Denoiser(
            self.n_genes, self.d, hidden, n_blocks, heads, head_dim, ff_mult, int(time_mlp_mult), bool(qkv_bias)
        )
        for k, v in diffusion_schedule(self.n_timesteps).items():
            self.register_buffer(k, v.float())

    @property
    def schedule(self) -> dict[str, torch.Tensor]:
        """The diffusion schedule buffers (float32, on the net's device), as the samplers take them."""
        return {k: getattr(self, k) for k in SCHEDULE_KEYS}

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
        for k, j in self.excl_nl_pairs:
            nk, nj = self.concept_sizes[k], self.concept_sizes[j]
            both = (codes[:, k] >= 0) & (codes[:, j] >= 0)
            counts = np.zeros((nk, nj))
            np.add.at(counts, (codes[both, k], codes[both, j]), 1.0)
            # a label of k never seen with a label of j falls back on j's marginal
            cond = counts + smoothing + (counts.sum(1, keepdims=True) == 0) * getattr(self, f"prior{j}").cpu().numpy()
            getattr(self, f"cond{k}_{j}").copy_(torch.from_numpy(cond / cond.sum(1, keepdims=True)))

    # F: causal disentanglement ---------------------------------------------
    def encode(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(eps | x0): (mean, logvar), each (B, m+1, d)."""
        out = self.encoder(x0).view(-1, self.m + 1, 2, self.d)
        return out[:, :, 0], out[:, :, 1].clamp(-10.0, 10.0)

    def scm(self, eps: torch.Tensor) -> torch.Tensor:
        """The linear SCM layer: z = C eps, (B, m+1, d) -> (B, m+1, d)."""
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

    def exclusivity_adversary_terms(self, z: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversary loss, encoder confusion loss) of z_k against y_j beyond y_k, means over ``excl_nl_pairs``.

        The target of each cell is p(y_j | y_k) of the training cells (y_j's marginal where y_k is
        missing), so the embedding may say what its own label implies about y_j and nothing more.
        """
        ce_sum, conf_sum = z.new_zeros(()), z.new_zeros(())
        for (k, j), adv in zip(self.excl_nl_pairs, self.excl_adversaries):
            yk = codes[:, k]
            cond = getattr(self, f"cond{k}_{j}")[yk.clamp_min(0)]
            target = torch.where((yk >= 0)[:, None], cond, getattr(self, f"prior{j}").expand_as(cond))
            ce, conf = self._adversary_pair(adv, z[:, k], codes[:, j], target)
            ce_sum, conf_sum = ce_sum + ce, conf_sum + conf
        n = max(len(self.excl_nl_pairs), 1)
        return ce_sum / n, conf_sum / n

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
        exclusivity_nl: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one minibatch (unweighted; the trainer combines them).

        ``independence="adversary"``: ``adv`` is the u adversaries' own
        cross-entropy (it only trains them) and ``indep`` the encoder's bounded
        confusion term against them. ``"negative_ce"`` (the authors'): no
        ``adv``; ``indep`` is minus the label heads' mean cross-entropy on the
        sampled z_u, nothing detached (bounded below only with
        ``label_head="softmax"``). The optional ``excl``/``exo`` are closed-form
        linear-dependence penalties in [0, 1]; ``exclusivity_nl`` (a net built with
        ``excl_adversary``) adds ``excl_adv`` (those adversaries' own cross-entropy) and
        ``excl_nl`` (the encoder's confusion against them). ``recon_reduction``: see
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
        if exclusivity_nl and self.excl_nl_pairs:
            extra["excl_adv"], extra["excl_nl"] = self.exclusivity_adversary_terms(z_mean, codes)
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

"""CausCellModel: trains CausCell, encodes cells, draws donors, intervenes and generates.

The training loop, EMA weights, donor pools and inference procedures around the networks of
:mod:`.networks`, after Gao, Dong et al., Nat Commun 2025 (Methods). Where this implementation
and the authors' code differ (EMA schedule, encoding, sampler, counterfactual mode), the choice is
a parameter; docs/causcell.md tabulates both. The model knows nothing of the benchmark: expression
arrays (dense or scipy CSR, log1p CP10k), integer label codes and a DAG adjacency matrix go in;
arrays come out.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from causcell_bench.models.causcell.dag import MODES, intervene_scm
from causcell_bench.models.causcell.diffusion import SAMPLERS, reverse_diffusion, sampling_timesteps
from causcell_bench.models.causcell.losses import combination_weights
from causcell_bench.models.causcell.networks import KL_UNITS, LABEL_HEADS, RECON_REDUCTIONS, CausCellNet
from causcell_bench.models.causcell.persistence import constructor_arguments, export_state, import_state
from causcell_bench.models.utils import EarlyStopping, StepCallback, resolve_device

__all__ = ["CausCellModel"]


def _rows(x: Any, idx: np.ndarray | slice) -> np.ndarray:
    """Dense float32 rows of a dense or sparse matrix (only these rows are densified)."""
    r = x[idx]
    if sp.issparse(r):
        r = r.toarray()
    return np.asarray(r, dtype=np.float32)


def _progress(enabled: bool, total: int, what: str) -> Any:
    """A started rich progress bar with one task, or None when disabled (rich is imported only then)."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        transient=True,
    )
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
        excl_adversary: bool = False,
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
            "excl_adversary": bool(excl_adversary),
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
        self.val_history: list[dict[str, float]] = []  # per validation check: its loss terms
        # pools[k][v] = (eps_k, z_k) posterior means of training cells with label v of concept k
        self.pools: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    @property
    def m(self) -> int:
        """The number of observed concepts (u not counted)."""
        return self.net.m

    @property
    def adjacency(self) -> np.ndarray:
        """The (m+1, m+1) float32 DAG the SCM layer uses, u last."""
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
        excl_nl_weight: float = 0.0,
        kl_weight: float = 1.0,
        grad_clip: float | None = 1.0,
        log_every: int = 50,
        seed: int = 0,
        progress: bool = False,
        callback: StepCallback | None = None,
        validation: tuple[Any, np.ndarray] | None = None,
        val_every: int = 100,
        stopper: EarlyStopping | None = None,
    ) -> list[dict[str, float]]:
        """Train end to end with Adam for at most ``n_steps`` optimizer steps; returns the loss history.

        Loss = recon_weight * L_G + pred_weight * L_pred + kl_weight * KL + adv_weight * L_indep(u)
        [+ excl_weight * L_excl + exo_weight * L_exo + excl_nl_weight * L_excl_nl] + L_adv (the
        adversaries' own cross-entropy, which reaches only their parameters; absent with
        ``independence="negative_ce"``). ``excl_weight``/``exo_weight``/``excl_nl_weight`` switch on
        the optional linear exclusivity, exogenous-independence and non-linear exclusivity penalties
        (0 = the paper's objective); the last needs a model built with ``excl_adversary=True``.
        ``recon_reduction``/``label_head``/``kl_units``: see :meth:`CausCellNet.losses`;
        ``combo_weights``: ``"rescaled"`` (mean 1) or ``"raw"`` 1 - freq/N cell weights.
        EMA: after optimizer step s (1-based), the EMA copies the online weights while
        s < ``ema_start``, then takes a decay step whenever s is a multiple of ``ema_every``.
        ``callback(step, n_steps, loss)``, if given, is called after every optimizer step with that
        step's total loss (mean over its ``grad_accum`` minibatches); it must not touch random state.

        Early stopping: with ``validation`` = (X_val, codes_val), cells not trained on, and a
        ``stopper``, every ``val_every`` steps :meth:`validation_loss` is computed on them and handed to
        the stopper; training ends when it says so, and the online and EMA weights of the best check
        are restored. ``n_steps`` is then the budget, not the length.
        """
        if (validation is None) != (stopper is None):
            raise ValueError("early stopping needs both validation cells and a stopper")
        if val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {val_every}")
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
        if excl_nl_weight > 0 and not self.net.excl_adversary:
            raise ValueError("excl_nl_weight > 0 needs a model built with excl_adversary=True")
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
            "excl_adv": 1.0, "excl_nl": excl_nl_weight,
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
                        exclusivity_nl=excl_nl_weight > 0,
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
                if stopper is not None and ((step + 1) % val_every == 0 or step + 1 == n_steps):
                    assert validation is not None
                    val = self.validation_loss(*validation, recon_weight=recon_weight, pred_weight=pred_weight,
                                               label_head=label_head, seed=seed)
                    self.net.train()
                    if stopper.check(step + 1, val, self._weights(), train=step_loss / grad_accum):
                        break
        finally:
            if prog is not None:
                prog.stop()
        if stopper is not None:
            stopper.restore(self._weights())
        self.net.eval()
        return self.history

    def _weights(self) -> nn.Module:
        """Online and EMA networks together: early stopping keeps and restores both."""
        return nn.ModuleDict({"net": self.net, "ema": self.ema})

    @torch.no_grad()
    def validation_loss(
        self, X: Any, codes: np.ndarray, *, recon_weight: float = 1.0, pred_weight: float = 1.0,
        label_head: str = "logits", seed: int = 0, batch_size: int = 512,
    ) -> float:
        """recon_weight x diffusion error + pred_weight x label cross-entropy of the inference network
        on cells ``X`` (per cell and gene, unweighted, whatever ``recon_reduction`` training uses).

        Deterministic: timesteps, noise and encodings are drawn from a generator seeded by ``seed``
        afresh on every call, so successive checks differ only by the weights.
        """
        codes = np.asarray(codes, dtype=np.int64)
        net = self.inference_net
        was_training = net.training
        net.eval()
        gen = torch.Generator(device=self.device).manual_seed(int(seed) + 7919)
        recon = pred = 0.0
        n = codes.shape[0]
        try:
            for start in range(0, n, batch_size):
                idx = np.arange(start, min(start + batch_size, n))
                x0 = torch.from_numpy(_rows(X, idx)).to(self.device)
                c = torch.from_numpy(codes[idx]).to(self.device)
                terms = net.losses(x0, c, torch.ones(len(idx), device=self.device), gen,
                                   recon_reduction="mean", label_head=label_head)
                recon += float(terms["recon"]) * len(idx)
                pred += float(terms["pred"]) * len(idx)
        finally:
            net.train(was_training)
        n = max(n, 1)
        self.val_history.append({"step": self.n_updates, "recon": recon / n, "pred": pred / n})
        return (recon_weight * recon + pred_weight * pred) / n

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
        return intervene_scm(eps_t, donors, self.adjacency, self.net.C.detach().cpu(), mode).numpy()

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
        clamp_x0: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """Generate x0 (n, n_genes) by reverse diffusion conditioned on concept tokens z (n, m+1, d).

        ``ancestral``: the paper's T-step DDPM sampler; ``ddim``: deterministic
        DDIM (eta = 0) over ``steps`` evenly spaced timesteps. ``n_samples``
        runs are averaged. ``clamp_x0`` keeps the x0 estimate non-negative at
        every step; off by default (as in the authors' code), since on sparse data the lift of
        near-zero genes compounds over the chain; the output can then be slightly negative.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        if sampler == "ddim" and not 1 <= steps <= self.net.n_timesteps:
            raise ValueError(f"ddim steps must be in 1..{self.net.n_timesteps}, got {steps}")
        z_all = torch.as_tensor(np.asarray(z, dtype=np.float32))
        n = z_all.shape[0]
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        net = self.inference_net
        ts = sampling_timesteps(sampler, self.net.n_timesteps, steps)
        n_batches = math.ceil(n / batch_size) if n else 0
        prog = _progress(progress, n_batches * n_samples * len(ts), f"CausCell {sampler} sampling")
        out = np.zeros((n, self.net.n_genes), dtype=np.float32)
        schedule = net.schedule

        def tick() -> None:
            if prog is not None:
                prog.update(prog.task_ids[0], advance=1)

        try:
            for s in range(0, n, batch_size):
                ctx = z_all[s:s + batch_size].to(self.device)
                b = ctx.shape[0]
                acc = torch.zeros(b, self.net.n_genes, device=self.device)
                for _ in range(n_samples):
                    x = torch.randn((b, self.net.n_genes), generator=gen, device=self.device)
                    # ctx bound as a default: the chain denoises against this batch's concept tokens
                    acc += reverse_diffusion(
                        lambda x_t, t, ctx=ctx: net.denoiser(x_t, t, ctx), x, ts, schedule,
                        sampler=sampler, generator=gen, clamp_x0=clamp_x0, on_step=tick,
                    )
                out[s:s + b] = (acc / n_samples).cpu().numpy()
        finally:
            if prog is not None:
                prog.stop()
        return out

    # --- persistence (the format: .persistence) -------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (plain containers and tensors only)."""
        return export_state(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: str | torch.device = "auto") -> CausCellModel:
        """The model saved as :meth:`state`, on ``device``."""
        args, kwargs = constructor_arguments(state)
        obj = cls(*args, device=device, **kwargs)
        import_state(obj, state)
        return obj


class _SubRows:
    """A row subset of a matrix, sliced lazily (keeps sparse inputs sparse)."""

    def __init__(self, x: Any, idx: np.ndarray) -> None:
        self.x, self.idx = x, idx
        self.shape = (len(idx), x.shape[1])

    def __getitem__(self, key: slice) -> Any:
        return self.x[self.idx[key]]


"""MichiGAN, clean-room: a beta-TCVAE code feeding a conditional WGAN-GP.

Implements the two-stage model of MichiGAN (Yu & Welch, "MichiGAN: sampling
from disentangled representations of single-cell data using generative
adversarial networks", Genome Biol 22, 158, 2021), written from the paper's
description, not from the authors' code.

Stage 1, :class:`TCVAE`: a VAE on log-normalised expression whose loss adds a
total-correlation (TC) penalty on the aggregate posterior of the code, estimated
by minibatch-weighted sampling (Chen et al., "Isolating sources of
disentanglement in VAEs", NeurIPS 2018)::

    loss = -E_q[log N(x | dec(z), diag(sigma^2))] + KL(q(z|x) || N(0, I)) + lambda_tc * TC

Stage 2, :class:`CodeGenerator` / :class:`ProjectionCritic`: a Wasserstein GAN
with gradient penalty whose generator sees [noise || code] and whose critic is a
projection discriminator (Miyato & Koyama 2018) conditioned on the code:
``score(x, c) = w^T h(x) + b + <c, h(x)>``.

Early stopping (optional, both stages): cells ``val_idx`` are held out of training. The VAE's
validation loss is its negative ELBO at the posterior mean (reconstruction NLL of the decoded mean
code + KL; eval mode, no sampling: deterministic; the TC term needs samples and is left out). The
GAN has no likelihood; its validation loss, every ``check_every`` generator updates, is the energy
distance between the generator's cells for the held-out cells' codes (fixed noise) and those cells
(:func:`energy_distance`): zero only when the two distributions agree, and blind to the critic,
whose own loss drifts as the critic changes.

The module knows nothing of the benchmark: arrays and tensors in, out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from causcell_bench.models.utils import EarlyStopping, StepCallback

LOG_2PI = math.log(2.0 * math.pi)

# A callable giving dense float32 rows for an index array (lets callers keep sparse data sparse).
RowGetter = Callable[[np.ndarray], np.ndarray]


def _mlp(sizes: Sequence[int], *, batchnorm: bool, dropout: float, slope: float = 0.2) -> nn.Sequential:
    """Linear layers with (BatchNorm,) LeakyReLU and dropout after each; no head."""
    layers: list[nn.Module] = []
    for a, b in pairwise(sizes):
        layers.append(nn.Linear(a, b))
        if batchnorm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.LeakyReLU(slope))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------
# Stage 1: beta-TCVAE
# --------------------------------------------------------------------------
def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z | mu, std^2) (broadcasting)."""
    return -0.5 * (LOG_2PI + 2.0 * torch.log(std) + ((z - mu) / std) ** 2)


def total_correlation_mws(
    z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, dataset_size: int | None = None
) -> torch.Tensor:
    """Minibatch-weighted-sampling estimate of TC(q(z)) = KL(q(z) || prod_j q(z_j)).

    ``z[i]`` is a sample from ``q(z | x_i)`` with ``(mu[i], std[i])``; the
    aggregate posterior at ``z[i]`` is estimated from the M cells of the batch
    as drawn from a data set of ``dataset_size`` cells, weight 1/(N*M) (Chen et
    al. 2018). ``dataset_size=None`` takes the M cells as the whole population
    (weight 1/M), the exact mixture of these cells' posteriors.
    """
    m = z.shape[0]
    # log q(z_i | x_j) per dimension: (M, M, D)
    logq = gaussian_log_density(z[:, None, :], mu[None, :, :], std[None, :, :])
    log_norm = math.log(m if dataset_size is None else dataset_size * m)
    log_qz = torch.logsumexp(logq.sum(2), dim=1) - log_norm
    log_prod_marginals = (torch.logsumexp(logq, dim=1) - log_norm).sum(1)
    return (log_qz - log_prod_marginals).mean()


class TCVAE(nn.Module):
    """Encoder G -> hidden -> (mean, softplus std) of the code; mirror decoder; Gaussian likelihood."""

    def __init__(self, n_genes: int, n_latent: int = 10, hidden: Sequence[int] = (512, 256), dropout: float = 0.2):
        super().__init__()
        hidden = list(hidden)
        # the constructor's arguments: a saved model is rebuilt from them (Method's default state hook)
        self.config: dict[str, Any] = {"n_genes": n_genes, "n_latent": n_latent, "hidden": hidden, "dropout": dropout}
        self.n_genes, self.n_latent = n_genes, n_latent
        self.encoder = _mlp([n_genes, *hidden], batchnorm=True, dropout=dropout)
        self.mean = nn.Linear(hidden[-1], n_latent)
        self.std_raw = nn.Linear(hidden[-1], n_latent)
        self.decoder = _mlp([n_latent, *hidden[::-1]], batchnorm=True, dropout=dropout)
        self.out = nn.Linear(hidden[0], n_genes)
        # gene-wise log variance of the Gaussian likelihood, learned
        self.log_var = nn.Parameter(torch.zeros(n_genes))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mean(h), F.softplus(self.std_raw(h)) + 1e-4

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(z))

    def loss(
        self, x: torch.Tensor, *, dataset_size: int, lambda_tc: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO plus ``lambda_tc`` x TC, averaged over cells; also the parts as floats."""
        mu, std = self.encode(x)
        z = mu + std * torch.randn_like(std)
        x_hat = self.decode(z)
        log_var = self.log_var.clamp(min=math.log(1e-4), max=math.log(1e2))
        nll = 0.5 * (LOG_2PI + log_var + (x - x_hat) ** 2 / log_var.exp())
        recon = nll.sum(1).mean()
        kl = (0.5 * (mu**2 + std**2 - 1.0) - torch.log(std)).sum(1).mean()
        tc = total_correlation_mws(z, mu, std, dataset_size) if x.shape[0] > 1 else z.new_zeros(())
        loss = recon + kl + lambda_tc * tc
        return loss, {"loss": loss.item(), "recon": recon.item(), "kl": kl.item(), "tc": tc.item()}


def train_tcvae(
    vae: TCVAE,
    rows: RowGetter,
    n_cells: int,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-4,
    lambda_tc: float = 100.0,
    rng: np.random.Generator,
    device: torch.device,
    callback: StepCallback | None = None,
    val_idx: np.ndarray | None = None,
    early_stopping: EarlyStopping | None = None,
) -> dict[str, list[float]]:
    """Adam on the TC-penalised ELBO for at most ``epochs`` epochs; returns per-epoch mean loss parts.

    ``callback(update, epochs * updates per epoch, loss)`` follows every minibatch update.
    ``val_idx``: cells (of the ``n_cells``) held out of training; the history then also holds
    ``val_loss`` (:func:`validation_neg_elbo`). With ``early_stopping`` as well, training stops when
    that has not improved for its patience and the best weights are restored.
    """
    vae.to(device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    hist: dict[str, list[float]] = {"loss": [], "recon": [], "kl": [], "tc": []}
    val_idx = np.zeros(0, dtype=np.int64) if val_idx is None else np.asarray(val_idx, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(n_cells), val_idx)
    if early_stopping is not None and val_idx.size == 0:
        raise ValueError("early_stopping needs validation cells (val_idx)")
    if val_idx.size:
        hist["val_loss"] = []
    n_train = len(train_idx)
    # minibatches of one cell are skipped below; count the rest for the progress total
    per_epoch = sum(1 for start in range(0, n_train, batch_size) if min(batch_size, n_train - start) >= 2)
    done = 0
    for epoch in range(epochs):
        vae.train()
        sums = dict.fromkeys(("loss", "recon", "kl", "tc"), 0.0)
        n_batches = 0
        order = rng.permutation(n_train)
        for start in range(0, n_train, batch_size):
            idx = train_idx[order[start:start + batch_size]]
            if len(idx) < 2:  # BatchNorm and the TC estimate need >= 2 cells
                continue
            x = torch.from_numpy(rows(idx)).to(device)
            loss, parts = vae.loss(x, dataset_size=n_train, lambda_tc=lambda_tc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k in sums:
                sums[k] += parts[k]
            n_batches += 1
            done += 1
            if callback is not None:
                callback(done, epochs * per_epoch, parts["loss"])
        for k, total in sums.items():
            hist[k].append(total / max(n_batches, 1))
        if val_idx.size:
            val = validation_neg_elbo(vae, rows, val_idx, device=device)
            hist["val_loss"].append(val)
            if early_stopping is not None and early_stopping.check(epoch + 1, val, vae, train=hist["loss"][-1]):
                if callback is not None and done:  # stopped early: the budget shrinks to what ran
                    callback(done, done, parts["loss"])
                break
    if early_stopping is not None:
        early_stopping.restore(vae)
    vae.eval()
    return hist


@torch.no_grad()
def validation_neg_elbo(vae: TCVAE, rows: RowGetter, idx: np.ndarray, *, device: torch.device, chunk: int = 1024) -> float:
    """Negative ELBO per cell of cells ``idx`` at the posterior mean: Gaussian NLL of the decoded mean
    code plus the KL to the prior, in eval mode (deterministic). The training loss's TC term is left out."""
    vae.eval()
    log_var = vae.log_var.clamp(min=math.log(1e-4), max=math.log(1e2))
    total = 0.0
    for s in range(0, len(idx), chunk):
        x = torch.from_numpy(rows(idx[s:s + chunk])).to(device)
        mu, std = vae.encode(x)
        nll = 0.5 * (LOG_2PI + log_var + (x - vae.decode(mu)) ** 2 / log_var.exp())
        kl = 0.5 * (mu**2 + std**2 - 1.0) - torch.log(std)
        total += float(nll.sum() + kl.sum())
    return total / max(len(idx), 1)


@torch.no_grad()
def encode_rows(
    vae: TCVAE, rows: RowGetter, n_cells: int, *, device: torch.device, batch_size: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Code mean and std of every cell, in minibatches (eval mode)."""
    vae.to(device).eval()
    mus, stds = [], []
    for start in range(0, n_cells, batch_size):
        idx = np.arange(start, min(start + batch_size, n_cells))
        mu, std = vae.encode(torch.from_numpy(rows(idx)).to(device))
        mus.append(mu.cpu().numpy())
        stds.append(std.cpu().numpy())
    if not mus:
        return np.zeros((0, vae.n_latent), np.float32), np.zeros((0, vae.n_latent), np.float32)
    return np.concatenate(mus).astype(np.float32), np.concatenate(stds).astype(np.float32)


def estimate_total_correlation(
    mu: np.ndarray, std: np.ndarray, *, seed: int = 0, dataset_size: int | None = None
) -> float:
    """TC of the aggregate posterior of codes ``q(z|x_i) = N(mu_i, std_i^2)`` over the given cells (nats).

    Draws one z per cell and applies the minibatch-weighted-sampling estimator with
    the given cells as the batch. ``dataset_size`` defaults to the number of cells,
    i.e. the aggregate posterior of exactly these (e.g. held-out) cells.
    """
    mu_t = torch.as_tensor(np.asarray(mu, dtype=np.float64))
    std_t = torch.as_tensor(np.asarray(std, dtype=np.float64))
    if mu_t.ndim != 2 or mu_t.shape != std_t.shape or mu_t.shape[0] < 2:
        raise ValueError(f"need (n >= 2, d) arrays of equal shape; got {tuple(mu_t.shape)} and {tuple(std_t.shape)}")
    g = torch.Generator().manual_seed(seed)
    z = mu_t + std_t * torch.randn(mu_t.shape, generator=g, dtype=torch.float64)
    n = mu_t.shape[0]
    log_norm = math.log(n if dataset_size is None else dataset_size * n)
    total = 0.0
    for start in range(0, n, 256):  # chunk the (n, n, d) density tensor to bound memory
        logq = gaussian_log_density(z[start:start + 256, None, :], mu_t[None], std_t[None])
        log_qz = torch.logsumexp(logq.sum(2), dim=1) - log_norm
        log_prod = (torch.logsumexp(logq, dim=1) - log_norm).sum(1)
        total += float((log_qz - log_prod).sum())
    return total / n


# --------------------------------------------------------------------------
# Stage 2: conditional WGAN-GP with a projection critic
# --------------------------------------------------------------------------
class CodeGenerator(nn.Module):
    """[noise || code] -> 256 -> 512 -> 1024 -> genes (linear output in log-expression space)."""

    def __init__(self, n_genes: int, n_latent: int = 10, n_noise: int = 118, hidden: Sequence[int] = (256, 512, 1024)):
        super().__init__()
        self.config: dict[str, Any] = {"n_genes": n_genes, "n_latent": n_latent, "n_noise": n_noise, "hidden": list(hidden)}
        self.n_noise, self.n_latent = n_noise, n_latent
        self.body = _mlp([n_noise + n_latent, *hidden], batchnorm=False, dropout=0.0)
        self.out = nn.Linear(list(hidden)[-1], n_genes)

    def forward(self, noise: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([noise, code], dim=1)))

    @torch.no_grad()
    def init_output_bias(self, gene_means: np.ndarray) -> None:
        """Start the output at the data's gene means so early critic steps see more than an offset."""
        self.out.bias.copy_(torch.as_tensor(np.asarray(gene_means, dtype=np.float32)))


class ProjectionCritic(nn.Module):
    """genes -> 1024 -> 512 -> h (code width); score = Linear(h) + <code, h>."""

    def __init__(self, n_genes: int, n_latent: int = 10, hidden: Sequence[int] = (1024, 512)):
        super().__init__()
        self.config: dict[str, Any] = {"n_genes": n_genes, "n_latent": n_latent, "hidden": list(hidden)}
        self.body = _mlp([n_genes, *hidden], batchnorm=False, dropout=0.0)
        self.h = nn.Linear(list(hidden)[-1], n_latent)
        self.psi = nn.Linear(n_latent, 1)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h = self.h(self.body(x))
        return self.psi(h).squeeze(1) + (code * h).sum(1)


def gan_step_budget(n_cells: int, batch_size: int, epochs: float | None, *, floor: int, cap: int) -> int:
    """Generator updates for ``epochs`` passes over ``n_cells`` training cells in minibatches of
    ``batch_size``, at least ``floor`` and at most ``cap`` (the cap wins); ``epochs=None``: ``cap``.

    A budget that grows with the data instead of one fixed step count: a fixed count sized for
    thousands of cells is many passes over a few hundred, and the cost of a step grows with the genes.
    """
    if epochs is None:
        return int(cap)
    return int(min(cap, max(floor, math.ceil(epochs * n_cells / max(1, min(batch_size, n_cells))))))


def gradient_penalty(critic: ProjectionCritic, real: torch.Tensor, fake: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """(||grad_x critic(x_hat, c)|| - 1)^2 on random interpolates x_hat (Gulrajani et al. 2017)."""
    eps = torch.rand(real.shape[0], 1, device=real.device)
    x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    score = critic(x_hat, code)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.norm(2, dim=1) - 1.0) ** 2).mean()


def train_wgan_gp(
    gen: CodeGenerator,
    critic: ProjectionCritic,
    rows: RowGetter,
    codes: np.ndarray,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    n_critic: int = 5,
    gp_weight: float = 10.0,
    rng: np.random.Generator,
    device: torch.device,
    log_every: int = 50,
    callback: StepCallback | None = None,
    val_idx: np.ndarray | None = None,
    early_stopping: EarlyStopping | None = None,
    val_seed: int = 0,
) -> dict[str, list[float]]:
    """At most ``steps`` generator updates, each after ``n_critic`` critic updates; real cells paired
    with their codes (``codes[i]`` is the code of ``rows([i])``).

    ``callback(step, steps, critic loss)`` follows every generator update (WGAN-GP's critic loss,
    minus the Wasserstein estimate plus the penalty, is the curve that tracks convergence).
    The history logs means over every ``log_every`` updates (``step``: updates done).

    ``val_idx``: cells held out of training; each log entry then also holds ``val_energy``,
    :func:`energy_distance` between the generator's cells for their codes (noise fixed by
    ``val_seed``, so checks differ only by the weights) and the cells themselves. With
    ``early_stopping`` as well (patience counted in log entries), training stops when that has not
    improved for its patience and the best generator and critic are restored.
    """
    gen.to(device).train()
    critic.to(device).train()
    # Adam betas of Gulrajani et al.: momentum hurts the critic/generator alternation
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    codes_t = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32)).to(device)
    val_idx = np.zeros(0, dtype=np.int64) if val_idx is None else np.asarray(val_idx, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(codes.shape[0]), val_idx)
    if early_stopping is not None and val_idx.size == 0:
        raise ValueError("early_stopping needs validation cells (val_idx)")
    n = len(train_idx)
    metrics = ("critic", "generator", "wasserstein", "gp")
    hist: dict[str, list[float]] = {"step": [], **{key: [] for key in metrics}}
    if val_idx.size:
        hist["val_energy"] = []
        val_x = torch.from_numpy(rows(val_idx)).to(device)
        val_noise = torch.randn(len(val_idx), gen.n_noise, generator=torch.Generator().manual_seed(val_seed)).to(device)
        both = nn.ModuleDict({"generator": gen, "critic": critic})  # what early stopping saves and restores
    acc = dict.fromkeys(metrics, 0.0)
    k = 0
    bs = min(batch_size, n)

    def draw() -> tuple[np.ndarray, torch.Tensor]:
        idx = train_idx[rng.choice(n, size=bs, replace=False)]
        return idx, codes_t[torch.from_numpy(idx).to(device)]

    for step in range(steps):
        for p in critic.parameters():
            p.requires_grad_(True)
        for _ in range(n_critic):
            idx, c = draw()
            real = torch.from_numpy(rows(idx)).to(device)
            with torch.no_grad():
                fake = gen(torch.randn(bs, gen.n_noise, device=device), c)
            w = critic(real, c).mean() - critic(fake, c).mean()
            gp = gradient_penalty(critic, real, fake, c)
            loss_c = -w + gp_weight * gp
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
        for p in critic.parameters():  # generator step needs no critic grads
            p.requires_grad_(False)
        _, c = draw()
        loss_g = -critic(gen(torch.randn(bs, gen.n_noise, device=device), c), c).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        critic_loss = loss_c.item()
        acc["critic"] += critic_loss
        acc["generator"] += loss_g.item()
        acc["wasserstein"] += w.item()
        acc["gp"] += gp.item()
        k += 1
        if callback is not None:
            callback(step + 1, steps, critic_loss)
        if k == log_every or step == steps - 1:
            hist["step"].append(step + 1)
            for key in metrics:
                hist[key].append(acc[key] / k)
            acc = dict.fromkeys(metrics, 0.0)
            k = 0
            if val_idx.size:
                with torch.no_grad():
                    gen.eval()
                    fake = gen(val_noise, codes_t[torch.from_numpy(val_idx).to(device)])
                    gen.train()
                val = energy_distance(fake, val_x)
                hist["val_energy"].append(val)
                if early_stopping is not None and early_stopping.check(step + 1, val, both, train=hist["critic"][-1]):
                    if callback is not None and step + 1 < steps:  # stopped early: the budget shrinks to what ran
                        callback(step + 1, step + 1, critic_loss)
                    break
    if early_stopping is not None:
        early_stopping.restore(both)
    for p in critic.parameters():
        p.requires_grad_(True)
    gen.eval()
    critic.eval()
    return hist


@torch.no_grad()
def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|a - b| - E|a - a'| - E|b - b'| between the rows of ``a`` and ``b`` (Euclidean;
    within-set means over distinct pairs). Zero when the two samples come from one distribution."""
    a, b = a.double(), b.double()
    ab = torch.cdist(a, b).mean()
    na, nb = a.shape[0], b.shape[0]
    aa = torch.cdist(a, a).sum() / max(na * (na - 1), 1)
    bb = torch.cdist(b, b).sum() / max(nb * (nb - 1), 1)
    return float(2.0 * ab - aa - bb)


@torch.no_grad()
def generate_from_codes(
    gen: CodeGenerator, codes: np.ndarray, *, seed: int, device: torch.device, batch_size: int = 2048
) -> np.ndarray:
    """Generator output for each code with fresh N(0, I) noise drawn from ``seed`` (device-independent)."""
    gen.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(codes.shape[0], gen.n_noise, generator=g)
    out = []
    for start in range(0, codes.shape[0], batch_size):
        c = torch.from_numpy(np.ascontiguousarray(codes[start:start + batch_size], dtype=np.float32)).to(device)
        out.append(gen(noise[start:start + batch_size].to(device), c).cpu().numpy())
    if not out:
        return np.zeros((0, gen.out.out_features), np.float32)
    return np.concatenate(out).astype(np.float32)

"""Clean-room scDisInFact.

Zhang, Zhao, Wang, Zhang, "scDisInFact: disentangled learning for integration
and prediction of multi-batch multi-condition single-cell RNA-sequencing
data", Nat Commun 15, 912 (2024).

Written from the paper's description and the benchmark's baselines spec; no
code from the authors' repository. The model knows nothing of the benchmark:
arrays and tensors in, arrays and tensors out.

Architecture
    shared encoder   [standardised log1p(x / sf), batch one-hot] -> 2 x hidden -> z_c (Gaussian)
    condition enc k  standardised log1p(x / sf) -> 1 x hidden -> z_d^k (Gaussian), one per condition
    decoder          [z_c, z_d^1..z_d^K, batch one-hot] -> 2 x hidden -> softplus rate; NB mean = rate * sf
    classifier k     Linear(z_d^k) -> labels of condition k
    prior k          learnable Gaussian N(m_kl, diag s_kl^2) per label l of condition k

with size factor sf = library / 100 and per-gene NB dispersion.

Training alternates two updates on a minibatch drawn from every group
(group = one observed combination of batch x condition labels):

1. condition encoders frozen: NB recon + w_kl_c KL(z_c || N(0, I)) + w_mmd_c MMD of z_c across groups;
2. shared encoder frozen: NB recon + w_mmd_d MMD of z_d^k within each label across groups
   + w_ce cross-entropy + w_kl_d KL(z_d^k || label prior) + w_gl group lasso on the
   condition encoders' first-layer input columns.

Early stopping (optional): cells ``val_idx`` are held out of training (and of the input
standardisation statistics); after every epoch their NB reconstruction NLL, decoded from posterior
means in eval mode (deterministic), is the validation loss.

Scale choices (ours; the paper gives weights, not normalisations): the NB term
is the mean over cells *and genes*, and the group lasso is averaged over genes,
so the weights stay meaningful whatever the number of genes. Each MMD is a
mean over kernel pairs with scale-free bandwidths (see :func:`mmd_across_groups`),
and the z_d MMD is averaged over the labels of a condition; the adapter's presets
convert the paper's MMD weight to this normalisation
(:mod:`causcell_bench.methods.scdisinfact`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from causcell_bench.models.utils import EarlyStopping, RowFn, StepCallback, expected_log1p_cp10k, nb_nll

# --- losses ------------------------------------------------------------------


def kl_gaussians(mu: torch.Tensor, logvar: torch.Tensor, p_mu: torch.Tensor, p_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(p_mu, e^p_logvar)), summed over dims, mean over rows."""
    kl = 0.5 * (p_logvar - logvar + (logvar.exp() + (mu - p_mu) ** 2) / p_logvar.exp() - 1.0)
    return kl.sum(1).mean()


def mean_sq_dist(z: torch.Tensor) -> torch.Tensor:
    """Mean squared pairwise distance of the rows, 2 x total variance (detached; O(n d), no sort)."""
    with torch.no_grad():
        return (2.0 * z.var(0, unbiased=False).sum()).clamp_min(1e-6)


def mmd_across_groups(
    z: torch.Tensor,
    groups: torch.Tensor,
    base: torch.Tensor | None = None,
    multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
) -> torch.Tensor:
    """Mean over groups of MMD^2(group rows, all rows), multi-bandwidth Gaussian kernel.

    Bandwidths are multiples of ``base`` (default: the mean squared pairwise
    distance of ``z``), so the term is invariant to the latent's scale. For z_d
    within one label pass the ``base`` of *all* labels: a bandwidth set within the label
    would shrink as the label's cells cluster, and the MMD would then fight the
    classifier. Comparing each group with the pool (rather than all pairs)
    costs one kernel matrix whatever the group count.
    """
    uniq, inv = torch.unique(groups, return_inverse=True)
    if uniq.numel() < 2:
        return z.new_zeros(())
    d2 = torch.cdist(z, z).pow(2)
    base = mean_sq_dist(z) if base is None else base
    k = sum(torch.exp(-d2 / (m * base)) for m in multipliers)
    n_groups = uniq.numel()
    size = torch.bincount(inv, minlength=n_groups).to(z.dtype)
    # row means of k per group, O(n^2) whatever the number of groups (a dense one-hot matmul is O(groups n^2))
    kp = z.new_zeros((n_groups, k.shape[1])).index_add(0, inv, k) / size[:, None]  # (groups, n)
    p = F.one_hot(inv, n_groups).to(z.dtype).T / size[:, None]  # (groups, n), rows sum to 1
    within = (kp * p).sum(1)
    cross = kp.mean(1)
    pooled = k.mean()
    return (within - 2.0 * cross + pooled).clamp_min(0.0).mean()


def group_lasso(weight: torch.Tensor) -> torch.Tensor:
    """Mean over input columns (genes) of the L2 norm of a Linear layer's weight column."""
    return weight.norm(dim=0).mean()


# --- network -------------------------------------------------------------------
class _GaussianEncoder(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_layers: int, n_out: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.mu = nn.Linear(hidden, n_out)
        self.logvar = nn.Linear(hidden, n_out)

    @property
    def first_layer(self) -> nn.Linear:
        return self.body[0]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)


class ScDisInFactNet(nn.Module):
    """Shared + per-condition encoders, NB decoder, per-condition classifiers and label priors.

    ``n_classes[k]`` is the number of labels of condition k; ``n_batches`` the
    number of batches (the batch one-hot is used only when it is > 1).
    Input standardisation statistics are buffers, so ``state_dict`` is the whole model.
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: Sequence[int],
        n_batches: int = 1,
        z_c_dim: int = 8,
        z_d_dim: int = 2,
        hidden: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            n_genes=n_genes, n_classes=list(n_classes), n_batches=n_batches,
            z_c_dim=z_c_dim, z_d_dim=z_d_dim, hidden=hidden, dropout=dropout,
        )
        self.n_batch_cols = n_batches if n_batches > 1 else 0
        self.enc_c = _GaussianEncoder(n_genes + self.n_batch_cols, hidden, 2, z_c_dim, dropout)
        self.enc_d = nn.ModuleList(_GaussianEncoder(n_genes, hidden, 1, z_d_dim, dropout) for _ in n_classes)
        n_z = z_c_dim + z_d_dim * len(n_classes) + self.n_batch_cols
        self.decoder = nn.Sequential(
            nn.Linear(n_z, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_genes)
        )
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.classifiers = nn.ModuleList(nn.Linear(z_d_dim, k) for k in n_classes)
        # label priors start spread apart so that labels are separable from the first step
        self.prior_mu = nn.ParameterList(nn.Parameter(torch.randn(k, z_d_dim)) for k in n_classes)
        self.prior_logvar = nn.ParameterList(nn.Parameter(torch.zeros(k, z_d_dim)) for k in n_classes)
        self.register_buffer("x_mean", torch.zeros(n_genes))
        self.register_buffer("x_std", torch.ones(n_genes))

    # pieces ---------------------------------------------------------------------
    def batch_onehot(self, batch: torch.Tensor) -> torch.Tensor:
        if self.n_batch_cols == 0:
            return batch.new_zeros((batch.shape[0], 0), dtype=torch.float32)
        return F.one_hot(batch, self.n_batch_cols).float()

    def normalise(self, counts: torch.Tensor, sf: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(counts / sf[:, None]) - self.x_mean) / self.x_std

    def encode(
        self, xn: torch.Tensor, b: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """(mu_c, logvar_c), [(mu_d^k, logvar_d^k)] from standardised input and batch one-hot."""
        return self.enc_c(torch.cat([xn, b], 1)), [enc(xn) for enc in self.enc_d]

    def decode(self, z_c: torch.Tensor, z_ds: Sequence[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        """Per-cell NB rate (mean = rate * size factor)."""
        return F.softplus(self.decoder(torch.cat([z_c, *z_ds, b], 1))) + 1e-8


def _sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def size_factors(library: np.ndarray) -> np.ndarray:
    """Library / 100, floored so that empty cells do not divide by zero."""
    return np.maximum(np.asarray(library, dtype=np.float32), 1.0) / 100.0


# --- training ------------------------------------------------------------------
def fit_input_stats(net: ScDisInFactNet, rows: RowFn, sf: np.ndarray, chunk: int = 4096) -> None:
    """Per-gene mean/std of log1p(counts / sf) over the training cells, in chunks."""
    n = sf.shape[0]
    s = np.zeros(net.config["n_genes"], dtype=np.float64)
    ss = np.zeros_like(s)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        v = np.log1p(rows(idx) / sf[idx, None]).astype(np.float64)
        s += v.sum(0)
        ss += (v * v).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
    net.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    net.x_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))


def train_scdisinfact(
    net: ScDisInFactNet,
    rows: RowFn,
    labels: np.ndarray,
    batch: np.ndarray,
    library: np.ndarray,
    *,
    epochs: int,
    batch_per_group: int = 64,
    lr: float = 5e-4,
    w_kl_c: float = 1e-5,
    w_kl_d: float = 1e-2,
    w_mmd_c: float = 1e-4 * 64**2,
    w_mmd_d: float = 1e-4 * 64**2,
    w_ce: float = 1.0,
    w_gl: float = 1.0,
    gl_alpha: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    val_idx: np.ndarray | None = None,
    early_stopping: EarlyStopping | None = None,
) -> list[dict[str, float]]:
    """Train ``net`` in place with the two alternating updates for at most ``epochs`` epochs; return
    per-epoch loss history.

    ``labels`` is (n_cells, n_conditions) int codes, ``batch`` (n_cells,) int codes,
    ``library`` (n_cells,) total counts. One epoch draws about n_cells cells,
    ``batch_per_group`` (or all, if fewer) from every group per iteration.
    ``callback(iteration, epochs * iterations per epoch, reconstruction NLL)`` follows every iteration.

    ``val_idx``: cells held out of training; each entry then also holds ``val_recon``, their NB NLL
    per count and cell. With ``early_stopping`` as well, training stops when that has not improved
    for its patience and the best weights are restored (the last progress report reads done == total).
    """
    device = torch.device(device)
    labels = np.asarray(labels, dtype=np.int64).reshape(len(library), -1)
    batch = np.asarray(batch, dtype=np.int64)
    sf = size_factors(library)
    val_idx = np.zeros(0, dtype=np.int64) if val_idx is None else np.asarray(val_idx, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(library)), val_idx)
    if early_stopping is not None and val_idx.size == 0:
        raise ValueError("early_stopping needs validation cells (val_idx)")
    fit_input_stats(net, lambda i: rows(train_idx[i]), sf[train_idx])
    net.to(device)
    rng = np.random.default_rng(seed)

    combo = np.column_stack([batch, labels])[train_idx]
    _, group_train = np.unique(combo, axis=0, return_inverse=True)
    group = np.full(len(library), -1, dtype=np.int64)  # only training cells are ever drawn
    group[train_idx] = group_train.ravel()
    members = [train_idx[group_train.ravel() == g] for g in range(group_train.max() + 1)]
    per_iter = sum(min(batch_per_group, len(m)) for m in members)
    n_iter = max(1, math.ceil(len(train_idx) / per_iter))

    shared_params = [*net.enc_c.parameters(), *net.decoder.parameters(), net.log_theta]
    cond_params = [
        *net.enc_d.parameters(), *net.classifiers.parameters(), *net.prior_mu.parameters(),
        *net.prior_logvar.parameters(), *net.decoder.parameters(), net.log_theta,
    ]
    opt_c = torch.optim.Adam(shared_params, lr=lr)
    opt_d = torch.optim.Adam(cond_params, lr=lr)
    n_cond = labels.shape[1]
    history: list[dict[str, float]] = []

    for epoch in range(epochs):
        net.train()
        tot = {"recon": 0.0, "mmd_c": 0.0, "mmd_d": 0.0, "ce": 0.0, "acc": 0.0, "kl_c": 0.0, "kl_d": 0.0, "gl": 0.0}
        for it in range(n_iter):
            idx = np.concatenate([rng.choice(m, size=min(batch_per_group, len(m)), replace=False) for m in members])
            x = torch.as_tensor(rows(idx), device=device)
            s = torch.as_tensor(sf[idx], device=device)
            g = torch.as_tensor(group[idx], device=device)
            y = torch.as_tensor(labels[idx], device=device)
            b = net.batch_onehot(torch.as_tensor(batch[idx], device=device))
            xn = net.normalise(x, s)
            theta = net.log_theta.exp()

            # update 1: shared encoder + decoder; condition encoders frozen
            mu_c, lv_c = net.enc_c(torch.cat([xn, b], 1))
            with torch.no_grad():
                z_ds = [_sample(*enc(xn)) for enc in net.enc_d]
            recon = nb_nll(x, net.decode(_sample(mu_c, lv_c), z_ds, b) * s[:, None], theta).mean()
            kl_c = kl_gaussians(mu_c, lv_c, torch.zeros_like(mu_c), torch.zeros_like(lv_c))
            mmd_c = mmd_across_groups(mu_c, g)
            opt_c.zero_grad(set_to_none=True)
            (recon + w_kl_c * kl_c + w_mmd_c * mmd_c).backward()
            opt_c.step()

            # update 2: condition encoders, classifiers, priors + decoder; shared encoder frozen
            theta = net.log_theta.exp()
            with torch.no_grad():
                z_c = _sample(*net.enc_c(torch.cat([xn, b], 1)))
            outs = [enc(xn) for enc in net.enc_d]
            z_ds = [_sample(mu, lv) for mu, lv in outs]
            recon_d = nb_nll(x, net.decode(z_c, z_ds, b) * s[:, None], theta).mean()
            ce = x.new_zeros(())
            kl_d = x.new_zeros(())
            mmd_d = x.new_zeros(())
            gl = x.new_zeros(())
            acc = 0.0
            for k, ((mu, lv), z) in enumerate(zip(outs, z_ds)):
                logits = net.classifiers[k](z)
                ce = ce + F.cross_entropy(logits, y[:, k])
                acc += float((logits.argmax(1) == y[:, k]).float().mean()) / n_cond
                kl_d = kl_d + kl_gaussians(mu, lv, net.prior_mu[k][y[:, k]], net.prior_logvar[k][y[:, k]])
                base = mean_sq_dist(mu)
                labs = torch.unique(y[:, k])
                for lab in labs:  # mean over labels, so conditions with many labels do not dominate
                    sel = y[:, k] == lab
                    mmd_d = mmd_d + mmd_across_groups(mu[sel], g[sel], base) / len(labs)
                gl = gl + gl_alpha * group_lasso(net.enc_d[k].first_layer.weight)
            opt_d.zero_grad(set_to_none=True)
            (recon_d + w_mmd_d * mmd_d + w_ce * ce + w_kl_d * kl_d + w_gl * gl).backward()
            opt_d.step()

            for key, val in (("recon", recon), ("mmd_c", mmd_c), ("mmd_d", mmd_d), ("ce", ce),
                             ("kl_c", kl_c), ("kl_d", kl_d), ("gl", gl)):
                tot[key] += float(val.detach()) / n_iter
            tot["acc"] += acc / n_iter
            if callback is not None:
                callback(epoch * n_iter + it + 1, epochs * n_iter, float(recon.detach()))
        history.append({"epoch": epoch + 1, **tot})
        if val_idx.size:
            val = validation_recon(net, rows, val_idx, batch[val_idx], library[val_idx], device=device)
            history[-1]["val_recon"] = val
            if early_stopping is not None and early_stopping.check(epoch + 1, val, net, train=tot["recon"]):
                if callback is not None:  # stopped early: the budget shrinks to what ran
                    done = (epoch + 1) * n_iter
                    callback(done, done, float(recon.detach()))
                break
    if early_stopping is not None:
        early_stopping.restore(net)
    net.eval()
    return history


@torch.no_grad()
def validation_recon(
    net: ScDisInFactNet, rows: RowFn, idx: np.ndarray, batch: np.ndarray, library: np.ndarray, *,
    device: torch.device, chunk: int = 1024,
) -> float:
    """Mean NB NLL (per cell and gene, as in training) of cells ``idx`` decoded from their posterior
    means in eval mode: deterministic, no dropout, no sampling."""
    net.eval()
    sf = size_factors(library)
    theta = net.log_theta.exp()
    total, count = 0.0, 0
    for s in range(0, len(idx), chunk):
        x = torch.as_tensor(rows(idx[s:s + chunk]), device=device)
        sfb = torch.as_tensor(sf[s:s + chunk], device=device)
        b = net.batch_onehot(torch.as_tensor(np.asarray(batch[s:s + chunk]), dtype=torch.long, device=device))
        (mu_c, _), outs = net.encode(net.normalise(x, sfb), b)
        rate = net.decode(mu_c, [mu for mu, _ in outs], b)
        total += float(nb_nll(x, rate * sfb[:, None], theta).sum())
        count += x.numel()
    return total / max(count, 1)


# --- inference -------------------------------------------------------------------
@torch.no_grad()
def encode_means(
    net: ScDisInFactNet, rows: RowFn, batch: np.ndarray, library: np.ndarray, *,
    device: torch.device | str = "cpu", chunk: int = 2048,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Posterior means: z_c (n, z_c_dim) and one z_d (n, z_d_dim) per condition."""
    net.eval().to(device)
    sf = size_factors(library)
    n = len(library)
    zc_parts: list[np.ndarray] = []
    zd_parts: list[list[np.ndarray]] = [[] for _ in net.enc_d]
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        x = torch.as_tensor(rows(idx), device=device)
        b = net.batch_onehot(torch.as_tensor(np.asarray(batch)[idx], dtype=torch.long, device=device))
        (mu_c, _), outs = net.encode(net.normalise(x, torch.as_tensor(sf[idx], device=device)), b)
        zc_parts.append(mu_c.cpu().numpy())
        for k, (mu, _) in enumerate(outs):
            zd_parts[k].append(mu.cpu().numpy())
    empty = np.zeros((0, 0), dtype=np.float32)
    z_c = np.concatenate(zc_parts) if zc_parts else empty
    return z_c, [np.concatenate(p) if p else empty for p in zd_parts]


@torch.no_grad()
def decode_frequencies(
    net: ScDisInFactNet, z_c: np.ndarray, z_ds: Sequence[np.ndarray], batch: np.ndarray, *,
    device: torch.device | str = "cpu", chunk: int = 2048,
) -> np.ndarray:
    """Decoder NB rates normalised per cell to sum to 1: each cell's expected expression proportions."""
    net.eval().to(device)
    out = []
    for start in range(0, z_c.shape[0], chunk):
        sl = slice(start, start + chunk)
        b = net.batch_onehot(torch.as_tensor(np.asarray(batch)[sl], dtype=torch.long, device=device))
        rate = net.decode(
            torch.as_tensor(z_c[sl], device=device), [torch.as_tensor(z[sl], device=device) for z in z_ds], b
        )
        out.append((rate / rate.sum(1, keepdim=True)).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, net.config["n_genes"]), np.float32)


def decode_log1p_cp10k(
    net: ScDisInFactNet, z_c: np.ndarray, z_ds: Sequence[np.ndarray], batch: np.ndarray, library: np.ndarray, *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Expected log1p(CP10k) under the decoder's NB at each cell's own ``library`` (its observed total over
    these genes): the expectation of X's transform of the counts, not the transform of their mean
    (see :func:`causcell_bench.models.utils.expected_log1p_cp10k`)."""
    freq = decode_frequencies(net, z_c, z_ds, batch, device=device)
    theta = net.log_theta.detach().exp().cpu().numpy()
    mean = freq * np.asarray(library, dtype=np.float32).reshape(-1, 1)
    return expected_log1p_cp10k(mean, theta)

"""Clean-room CPA, the Compositional Perturbation Autoencoder.

Lotfollahi, Klimovskaia Susmelj, De Donno, Hetzel, Ji, Ibarra, Srivatsan,
Naghipourfar, Daza, Martin, Shendure, McFaline-Figueroa, Boyeau, Wolf, Yakubova,
Theis, Lopez-Paz, "Predicting cellular responses to complex perturbations in
high-throughput screens", Mol Syst Biol 19, e11517 (2023).

Written from the paper's description and the benchmark's baselines spec; no
code from the authors' repository (``cpa-tools`` cannot be installed with
Python 3.11 / torch 2.x). Arrays and tensors in, arrays and tensors out.

Model
    encoder      log1p(counts) -> 3 x hidden (BatchNorm, ReLU) -> z_basal
    perturbation z_pert = s_p(dose) * E_pert[p],  s_p(d) = sigmoid(a_p log1p(d) + b_p)  (learned dose response)
    covariates   z_cov_j = E_cov_j[c_j]
    decoder      z = z_basal + z_pert + sum_j z_cov_j -> 3 x hidden (BatchNorm, ReLU)
                 -> softmax over genes * library = NB mean; gene-wise dispersion
    adversaries  one MLP per label (perturbation, each covariate) on z_basal

Training alternates, per minibatch, ``adv_steps`` adversary updates
(cross-entropy + ``pen_adv`` x squared gradient norm of the adversary's
logits w.r.t. its input, which keeps the adversaries smooth; the input is
z_basal standardised per minibatch, see :func:`standardise`) with one
autoencoder update (NB reconstruction + ``reg_adv`` x an adversarial term
that trains the encoder to defeat the adversaries, so that z_basal carries
no label information). The adversarial weight ramps up linearly over the first
``adv_warmup`` epochs, so the autoencoder first learns to reconstruct.

Early stopping (optional): cells ``val_idx`` are held out of training; after every epoch their
reconstruction NLL (eval mode, deterministic) is the validation loss, checked from the end of the
warm-up on (before it the objective is still changing, so an earlier model cannot be the one kept).

The adversarial term (``adv_objective``):

- ``"negative_ce"`` (default) — the paper's: minus the adversaries'
  cross-entropy. It is unbounded below, so it can push an adversary *below*
  chance (labels encoded in reverse); the per-minibatch standardisation, the
  warm-up and adversaries that learn fast enough keep that in check in our tests.
- ``"confusion"`` — cross-entropy of the adversaries' outputs against the
  training label marginals: bounded, minimal when they can do no better than
  the prior. A more stable alternative, not the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from causcell_bench.models.utils import EarlyStopping, RowFn, StepCallback, expected_log1p_cp10k, nb_nll


def standardise(z: torch.Tensor) -> torch.Tensor:
    """Per-dimension minibatch standardisation of z_basal before the adversaries.

    Without it the encoder can defeat gradient-penalised adversaries by merely
    shrinking z_basal (the decoder's BatchNorm undoes any scale), leaving the
    label information in place: the penalty, and the adversary, must see a
    scale-free latent.
    """
    return (z - z.mean(0)) / z.std(0).clamp_min(1e-4)


def _mlp(sizes: Sequence[int], *, batchnorm: bool, last_plain: bool = True) -> nn.Sequential:
    """Linear layers with (BatchNorm +) ReLU between them; the last layer is plain when ``last_plain``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or not last_plain:
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CPANet(nn.Module):
    """Basal encoder, perturbation/covariate embeddings, NB decoder and label adversaries.

    ``n_perts``: number of perturbation values; ``covariate_sizes``: number of
    values of each covariate (may be empty).
    """

    def __init__(
        self,
        n_genes: int,
        n_perts: int,
        covariate_sizes: Sequence[int] = (),
        latent_dim: int = 64,
        hidden: int = 256,
        n_layers: int = 3,
        adv_hidden: int = 128,
        adv_layers: int = 2,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            n_genes=n_genes, n_perts=n_perts, covariate_sizes=list(covariate_sizes), latent_dim=latent_dim,
            hidden=hidden, n_layers=n_layers, adv_hidden=adv_hidden, adv_layers=adv_layers,
        )
        self.encoder = _mlp([n_genes, *[hidden] * n_layers, latent_dim], batchnorm=True)
        self.decoder = _mlp([latent_dim, *[hidden] * n_layers, n_genes], batchnorm=True)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.pert_emb = nn.Embedding(n_perts, latent_dim)
        # dose response s_p(d) = sigmoid(a_p * log1p(d) + b_p); with dose 1 everywhere it is a learned scale per value
        self.dose_a = nn.Parameter(torch.ones(n_perts))
        self.dose_b = nn.Parameter(torch.zeros(n_perts))
        self.cov_embs = nn.ModuleList(nn.Embedding(k, latent_dim) for k in covariate_sizes)
        self.adversaries = nn.ModuleList(
            _mlp([latent_dim, *[adv_hidden] * adv_layers, k], batchnorm=False)
            for k in [n_perts, *covariate_sizes]
        )

    def basal(self, counts: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.log1p(counts))

    def label_embeddings(
        self, pert: torch.Tensor, covs: torch.Tensor, dose: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """[z_pert, z_cov_1, ...] for integer labels ``pert`` (n,) and ``covs`` (n, n_covariates)."""
        dose = torch.ones_like(pert, dtype=torch.float32) if dose is None else dose
        scale = torch.sigmoid(self.dose_a[pert] * torch.log1p(dose) + self.dose_b[pert])
        out = [scale[:, None] * self.pert_emb(pert)]
        out += [emb(covs[:, j]) for j, emb in enumerate(self.cov_embs)]
        return out

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Per-gene logits; softmax gives each cell's expression proportions."""
        return self.decoder(z)


# --- training --------------------------------------------------------------------
def train_cpa(
    net: CPANet,
    rows: RowFn,
    pert: np.ndarray,
    covs: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 128,
    lr_ae: float = 5e-4,
    lr_adv: float = 3e-4,
    weight_decay: float = 1e-6,
    reg_adv: float = 5.0,
    pen_adv: float = 3.0,
    adv_steps: int = 1,
    adv_objective: str = "negative_ce",
    adv_warmup: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    val_idx: np.ndarray | None = None,
    early_stopping: EarlyStopping | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` in place for at most ``epochs`` epochs; return one dict per epoch run.

    Each history entry holds ``recon`` (mean NB NLL per count), ``adv_loss``,
    ``adv_acc`` (concept index -> adversary accuracy on minibatches, measured
    before the adversary's own update, so it is not training-set memorisation)
    and ``adv_acc_mean``. ``callback(minibatch, epochs * minibatches per epoch,
    reconstruction NLL)`` follows every minibatch.

    ``val_idx``: cells (indices into ``rows``/``pert``/``covs``) held out of training; each entry
    then also holds ``val_recon``, their NB NLL per count. With ``early_stopping`` as well, training
    stops when that has not improved for its patience (checked from epoch ``adv_warmup`` on) and the
    best weights are restored; the last progress report then reads done == total.
    """
    device = torch.device(device)
    net.to(device)
    n_all = len(pert)
    pert = np.asarray(pert, dtype=np.int64)
    covs = np.asarray(covs, dtype=np.int64).reshape(n_all, -1)
    all_targets = np.column_stack([pert, covs])
    val_idx = np.zeros(0, dtype=np.int64) if val_idx is None else np.asarray(val_idx, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(n_all), val_idx)
    if early_stopping is not None and val_idx.size == 0:
        raise ValueError("early_stopping needs validation cells (val_idx)")
    targets = all_targets[train_idx]
    n = len(train_idx)
    rng = np.random.default_rng(seed)
    ae_params = [
        *net.encoder.parameters(), *net.decoder.parameters(), net.log_theta, *net.pert_emb.parameters(),
        net.dose_a, net.dose_b, *net.cov_embs.parameters(),
    ]
    opt_ae = torch.optim.Adam(ae_params, lr=lr_ae, weight_decay=weight_decay)
    opt_adv = torch.optim.Adam(net.adversaries.parameters(), lr=lr_adv, weight_decay=weight_decay)
    n_heads = targets.shape[1]
    if adv_objective not in ("confusion", "negative_ce"):
        raise ValueError(f"adv_objective must be 'confusion' or 'negative_ce', not {adv_objective!r}")
    priors = [
        torch.as_tensor(np.bincount(targets[:, h], minlength=k) / n, dtype=torch.float32, device=device)
        for h, k in enumerate([net.config["n_perts"], *net.config["covariate_sizes"]])
    ]
    history: list[dict[str, Any]] = []
    # BatchNorm cannot train on a single cell: fold a trailing singleton into the previous batch
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()

    for epoch in range(epochs):
        net.train()
        # the adversarial weight ramps up linearly over the first ``adv_warmup`` epochs
        reg = reg_adv * min(1.0, epoch / adv_warmup) if adv_warmup > 0 else reg_adv
        order = rng.permutation(n)
        recon_sum = adv_sum = 0.0
        correct = np.zeros(n_heads)
        seen = 0
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else n
            local = order[start:stop]
            idx = train_idx[local]
            x = torch.as_tensor(rows(idx), device=device)
            y = torch.as_tensor(targets[local], device=device)
            lib = x.sum(1, keepdim=True).clamp_min(1.0)

            # one encoder pass per minibatch: the adversaries train on it detached, the autoencoder after them
            zb_raw = net.basal(x)
            zb = standardise(zb_raw.detach())
            for step in range(adv_steps):
                zb_req = zb.detach().requires_grad_(True)
                loss_adv = zb.new_zeros(())
                penalty = zb.new_zeros(())
                for h, adv in enumerate(net.adversaries):
                    logits = adv(zb_req)
                    if step == 0:
                        correct[h] += float((logits.argmax(1) == y[:, h]).sum())
                    loss_adv = loss_adv + F.cross_entropy(logits, y[:, h])
                    (grad,) = torch.autograd.grad(logits.sum(), zb_req, create_graph=True)
                    penalty = penalty + grad.pow(2).sum(1).mean()
                opt_adv.zero_grad(set_to_none=True)
                (loss_adv + pen_adv * penalty).backward()
                opt_adv.step()
            seen += len(idx)

            # autoencoder: reconstruct, and make the adversaries fail on z_basal
            z = zb_raw + sum(net.label_embeddings(y[:, 0], y[:, 1:]))
            mu = F.softmax(net.decode_logits(z), dim=1) * lib
            recon = nb_nll(x, mu, net.log_theta.exp()).mean()
            zb = standardise(zb_raw)
            if adv_objective == "confusion":
                # cross-entropy of the adversaries' outputs against the label marginals: minimal
                # (and bounded) when they can only guess the prior
                fool = sum(-(priors[h] * F.log_softmax(adv(zb), 1)).sum(1).mean() for h, adv in enumerate(net.adversaries))
            else:
                fool = -sum(F.cross_entropy(adv(zb), y[:, h]) for h, adv in enumerate(net.adversaries))
            opt_ae.zero_grad(set_to_none=True)
            (recon + reg * fool).backward()
            opt_ae.step()
            recon_value = float(recon.detach())
            recon_sum += recon_value * len(idx)
            adv_sum += float(loss_adv.detach()) * len(idx)
            if callback is not None:
                callback(epoch * len(starts) + i + 1, epochs * len(starts), recon_value)
        acc = {h: float(correct[h] / seen) for h in range(n_heads)}
        history.append({
            "epoch": epoch + 1,
            "recon": recon_sum / seen,
            "adv_loss": adv_sum / seen,
            "adv_acc": acc,
            "adv_acc_mean": float(np.mean(list(acc.values()))),
            "reg_adv": reg,
        })
        if val_idx.size:
            val = validation_recon(net, rows, val_idx, all_targets[val_idx], device=device)
            history[-1]["val_recon"] = val
            if early_stopping is not None and early_stopping.check(epoch + 1, val, net, train=recon_sum / seen):
                if callback is not None:  # stopped early: the budget shrinks to what ran
                    done = (epoch + 1) * len(starts)
                    callback(done, done, recon_value)
                break
    if early_stopping is not None:
        early_stopping.restore(net)
    net.eval()
    return history


@torch.no_grad()
def validation_recon(
    net: CPANet, rows: RowFn, idx: np.ndarray, targets: np.ndarray, *, device: torch.device, chunk: int = 1024
) -> float:
    """Mean NB NLL per count of cells ``idx`` (labels ``targets``: perturbation, then covariates) in eval
    mode: deterministic, and the term :func:`train_cpa` minimises besides the adversarial one."""
    net.eval()
    targets = np.asarray(targets, dtype=np.int64).reshape(len(idx), -1)
    total, count = 0.0, 0
    for s in range(0, len(idx), chunk):
        x = torch.as_tensor(rows(idx[s:s + chunk]), device=device)
        y = torch.as_tensor(targets[s:s + chunk], device=device)
        z = net.basal(x) + sum(net.label_embeddings(y[:, 0], y[:, 1:]))
        mu = F.softmax(net.decode_logits(z), dim=1) * x.sum(1, keepdim=True).clamp_min(1.0)
        total += float(nb_nll(x, mu, net.log_theta.exp()).sum())
        count += x.numel()
    return total / max(count, 1)


# --- inference ---------------------------------------------------------------------
@torch.no_grad()
def encode_basal(
    net: CPANet, rows: RowFn, n: int, *, device: torch.device | str = "cpu", chunk: int = 2048
) -> np.ndarray:
    """z_basal of ``n`` cells (eval mode: BatchNorm running statistics)."""
    net.eval().to(device)
    parts = [net.basal(torch.as_tensor(rows(np.arange(s, min(n, s + chunk))), device=device)).cpu().numpy()
             for s in range(0, n, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, net.config["latent_dim"]), np.float32)


@torch.no_grad()
def label_embeddings(
    net: CPANet, pert: np.ndarray, covs: np.ndarray, *, device: torch.device | str = "cpu"
) -> list[np.ndarray]:
    """[z_pert, z_cov_1, ...] as arrays for integer labels."""
    net.eval().to(device)
    p = torch.as_tensor(np.asarray(pert, dtype=np.int64), device=device)
    c = torch.as_tensor(np.asarray(covs, dtype=np.int64).reshape(len(p), -1), device=device)
    return [e.cpu().numpy() for e in net.label_embeddings(p, c)]


@torch.no_grad()
def decode_frequencies(
    net: CPANet, z_basal: np.ndarray, pert: np.ndarray, covs: np.ndarray, *,
    device: torch.device | str = "cpu", chunk: int = 2048,
) -> np.ndarray:
    """Decode z_basal + label embeddings to each cell's expression proportions (softmax over genes)."""
    net.eval().to(device)
    covs = np.asarray(covs, dtype=np.int64).reshape(len(pert), -1)
    out = []
    for s in range(0, z_basal.shape[0], chunk):
        sl = slice(s, s + chunk)
        p = torch.as_tensor(np.asarray(pert[sl], dtype=np.int64), device=device)
        c = torch.as_tensor(covs[sl], device=device)
        z = torch.as_tensor(z_basal[sl], device=device) + sum(net.label_embeddings(p, c))
        out.append(F.softmax(net.decode_logits(z), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, net.config["n_genes"]), np.float32)


def decode_log1p_cp10k(
    net: CPANet, z_basal: np.ndarray, pert: np.ndarray, covs: np.ndarray, library: np.ndarray, *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Expected log1p(CP10k) under the decoder's NB (mean = proportions x each cell's own ``library``, its
    observed total over these genes): the expectation of X's transform of the counts, not the transform
    of their mean (see :func:`causcell_bench.models.utils.expected_log1p_cp10k`)."""
    freq = decode_frequencies(net, z_basal, pert, covs, device=device)
    theta = net.log_theta.detach().exp().cpu().numpy()
    mean = freq * np.asarray(library, dtype=np.float32).reshape(-1, 1)
    return expected_log1p_cp10k(mean, theta)

"""Small torch helpers shared by our models: device choice, seeding, the NB likelihood, and early
stopping on a held-out part of the training cells."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from causcell_bench.threads import cpu_count


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_cpu_threads() -> None:
    """Size torch's intra-op pool to the cores actually available to this process."""
    n = cpu_count()
    if torch.get_num_threads() > n:
        torch.set_num_threads(max(1, n))


RowFn = Callable[[np.ndarray], np.ndarray]
"""Row indices -> dense float32 counts of those cells (densifies one minibatch only)."""

StepCallback = Callable[[int, int, float | None], None]
"""``callback(done, total, loss)`` a training loop calls after each update: a plain callable, so the
models stay benchmark-agnostic. It must not touch random state (the fit would change)."""


MIN_CELLS_TO_VALIDATE = 50
"""Below this many training cells :func:`holdout_split` holds none out: a validation loss on fewer than
five cells is noise, and a model that small loses more from the missing cells than it gains."""

MIN_VAL_CELLS = 5
"""The fewest cells :func:`holdout_split` holds out when it holds any."""


def check_stopping_params(val_fraction: float, patience: int, min_delta: float = 0.0) -> None:
    """Raise ``ValueError`` for an early-stopping setting outside its range (adapters turn it into a BenchError)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 0.5]: the share of training cells held out")
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience={patience!r} must be a whole number >= 1 (validation checks without improvement)")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0.0 <= min_delta < 1.0:
        raise ValueError(f"min_delta={min_delta!r} must be in [0, 1): the relative improvement that counts")


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of ``n`` cells: a seeded random ``fraction`` held out.

    As scvi-tools does (a random tenth by default). Fewer than :data:`MIN_CELLS_TO_VALIDATE`
    cells: nothing is held out (the caller then trains for its whole budget); otherwise at least
    :data:`MIN_VAL_CELLS`. The draw has its own random stream, so
    it neither consumes nor mirrors the training order drawn from the same ``seed``.
    """
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction={fraction!r} must be in (0, 0.5]")
    if n < MIN_CELLS_TO_VALIDATE:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    n_val = max(MIN_VAL_CELLS, round(fraction * n))
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1D])).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class EarlyStopping:
    """Stop when a validation loss has not improved for ``patience`` checks; keep the best weights.

    Call :meth:`check` after each validation; it returns True when training should stop.
    ``min_delta`` is relative (an improvement must beat the best by ``min_delta x |best|``), so one
    value serves losses of any scale. The best weights are a CPU copy of ``module.state_dict()``;
    :meth:`restore` loads them back. ``history`` holds every check as
    ``{"step": ..., "train": ..., "val": ...}``; ``checks_from`` ignores checks before that step
    (a warm-up whose objective is still changing cannot give the best model).
    """

    def __init__(self, patience: int, min_delta: float = 0.0, checks_from: int = 0) -> None:
        check_stopping_params(0.1, patience, min_delta)
        self.patience, self.min_delta, self.checks_from = int(patience), float(min_delta), int(checks_from)
        self.best = math.inf
        self.best_step: int | None = None
        self.stopped_step: int | None = None
        self.bad_checks = 0
        self.history: list[dict[str, float]] = []
        self._weights: dict[str, torch.Tensor] | None = None

    def check(self, step: int, val: float, module: nn.Module, train: float | None = None) -> bool:
        """Record the check at ``step``; remember ``module``'s weights if ``val`` is the best so far."""
        self.history.append({"step": step, "train": math.nan if train is None else float(train), "val": float(val)})
        if step < self.checks_from:
            return False
        if not math.isfinite(val):  # a diverged model is never the best, and cannot recover by waiting
            self.bad_checks += 1
        elif self.best_step is None or val < self.best - self.min_delta * abs(self.best):
            self.best, self.best_step, self.bad_checks = float(val), step, 0
            self._weights = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        else:
            self.bad_checks += 1
        if self.bad_checks >= self.patience:
            self.stopped_step = step
            return True
        return False

    def restore(self, module: nn.Module) -> None:
        """Load the best weights seen into ``module`` (no-op if no check was counted)."""
        if self._weights is not None:
            module.load_state_dict(self._weights)

    def summary(self, cap: int, unit: str, monitor: str, last_step: int) -> dict[str, Any]:
        """What the run did, for ``convergence_`` records: cap, where it stopped and why, the curve."""
        return {
            "unit": unit, "monitor": monitor, "cap": int(cap), "patience": self.patience, "min_delta": self.min_delta,
            "stopped": self.stopped_step is not None, "last": int(last_step),
            "best": self.best_step, "best_val": None if self.best_step is None else self.best,
            "history": copy.deepcopy(self.history),
        }


def plan_early_stopping(
    n: int, *, enabled: bool, val_fraction: float, patience: int, min_delta: float, seed: int, checks_from: int = 0,
) -> tuple[np.ndarray | None, EarlyStopping | None]:
    """(validation cells, stopper) for a training run on ``n`` cells, or (None, None) when early stopping
    is off or the data are too small to hold cells out (:func:`holdout_split`). Bad settings raise
    ``ValueError`` even when off, so a typo is not silently ignored."""
    check_stopping_params(val_fraction, patience, min_delta)
    if not enabled:
        return None, None
    _, val_idx = holdout_split(n, val_fraction, seed)
    if val_idx.size == 0:
        return None, None
    return val_idx, EarlyStopping(patience, min_delta, checks_from=checks_from)


def no_stopping_summary(cap: int, unit: str, monitor: str, history: list[dict[str, float]]) -> dict[str, Any]:
    """A ``convergence_`` record for a run without validation (early stopping off, or too few cells)."""
    return {"unit": unit, "monitor": monitor, "cap": int(cap), "patience": None, "min_delta": None,
            "stopped": False, "last": int(cap), "best": None, "best_val": None, "history": history}


def nb_nll(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Element-wise negative log-likelihood of counts ``x`` under NB(mean ``mu``, inverse dispersion ``theta``)."""
    log_theta_mu = torch.log(theta + mu + eps)
    ll = (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )
    return -ll


EXACT_COUNTS = 32
"""Counts 0..EXACT_COUNTS enter :func:`expected_log1p_cp10k` exactly; above them log1p is smooth
and a Gamma stands in for the rest of the distribution."""


def expected_log1p_cp10k(
    mean: np.ndarray,
    theta: np.ndarray | None,
    *,
    zi_prob: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """E[log1p(c / library * 1e4)] for counts c ~ NB(``mean``, ``theta``), per cell and gene.

    The benchmark's X is log1p(counts / library * 1e4) of *observed* counts, so a count
    model's answer on X's scale is the expectation of that transform under its likelihood,
    not the transform of its expected counts: the log of a mean exceeds the mean of a log
    (Jensen), by ~2x on sparse data (pbmc68k). The library is the expected total of a draw
    over these genes (the cell's own library when ``mean`` = proportions x library); a
    draw's own total differs from it a little (dividing by it instead moved the mean by < 0.001
    in a 2,000-gene check).

    ``mean`` (n_cells, n_genes): NB means; ``theta``: inverse dispersion, (n_genes,) or like
    ``mean``, ``None`` for Poisson counts; ``zi_prob``: zero-inflation probability like ``mean``
    (scVI's ZINB), or ``None``. Computed, not sampled (no Monte Carlo noise, ~0.4 us per
    entry): counts up to :data:`EXACT_COUNTS` are summed exactly and the tail above them is
    approximated by a Gamma, within 0.02 of the exact sum for theta in [0.05, inf) and means
    up to 1e4 (tests/test_scale.py).
    """
    mean = np.asarray(mean)
    th_all = np.broadcast_to(np.asarray(np.inf if theta is None else theta, dtype=np.float64), mean.shape)
    out = np.empty(mean.shape, dtype=np.float32)
    for start in range(0, mean.shape[0], chunk):  # bounds the float64 temporaries
        sl = slice(start, start + chunk)
        mu = np.maximum(np.asarray(mean[sl], dtype=np.float64), 0.0)
        keep = 1.0 - (0.0 if zi_prob is None else np.asarray(zi_prob[sl], dtype=np.float64))
        total = (keep * mu).sum(1, keepdims=True)
        scale = np.divide(1e4, total, out=np.zeros_like(total), where=total > 0)
        out[sl] = keep * _nb_expected_log1p(mu, th_all[sl], scale)
    return out


def _nb_expected_log1p(mu: np.ndarray, theta: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """E[log1p(scale * c)], c ~ NB(mu, theta) element-wise; ``scale`` (n, 1) >= 0."""
    from scipy.special import digamma, gammaincc

    mu, scale = np.asarray(mu, dtype=np.float64), np.asarray(scale, dtype=np.float64)
    mu, scale = np.broadcast_arrays(mu, scale)
    th = np.broadcast_to(np.clip(np.asarray(theta, dtype=np.float64), 1e-8, 1e12), mu.shape)  # Poisson: huge theta
    ratio = mu / (th + mu + 1e-300)
    p = np.exp(-th * np.log1p(mu / th))  # P(c = 0)
    cum_p, cum_k, cum_k2, acc = p.copy(), np.zeros_like(mu), np.zeros_like(mu), np.zeros_like(mu)
    for k in range(1, EXACT_COUNTS + 1):
        p = p * ((k - 1 + th) / k) * ratio  # P(c = k) from P(c = k - 1)
        acc += p * np.log1p(scale * k)
        cum_p += p
        cum_k += k * p
        cum_k2 += k * k * p
    tail = 1.0 - cum_p
    at = np.nonzero((tail > 1e-9) & (scale > 0))
    if at[0].size == 0:
        return acc
    # the tail c > K, where log1p(s c) = log(s c) + log1p(1 / (s c)) and c ~ its Gamma mixing variable
    mu_t, th_t, s_t, t = mu[at], th[at], scale[at], tail[at]
    m_t = np.maximum((mu_t - cum_k[at]) / t, EXACT_COUNTS + 1.0)
    # a Gamma with the tail's exact mean and variance: right when the tail is narrow on log scale
    v_t = np.maximum((mu_t + mu_t * mu_t / th_t + mu_t * mu_t - cum_k2[at]) / t - m_t * m_t, 1e-8 * m_t * m_t)
    a = np.minimum(m_t * m_t / v_t, 1e8)
    elog = digamma(a) + np.log(v_t / m_t)
    # where K sits low in the mixing Gamma(theta, mu / theta) (small theta, large mu) the tail spans
    # decades and the match fails: use that Gamma's own log-moment above K instead
    z = (EXACT_COUNTS + 0.5) * th_t / mu_t
    low = z <= 2.0
    if low.any():
        thl, zl = th_t[low], z[low]
        elog[low] = np.log(mu_t[low] / thl) + (digamma(thl) - _gamma_log_moment_below(thl, zl)) / gammaincc(thl, zl)
    acc[at] += t * (elog + np.log(s_t) + np.log1p(1.0 / (s_t * m_t)))
    return acc


def _gamma_log_moment_below(a: np.ndarray, z: np.ndarray, n_terms: int = 40) -> np.ndarray:
    """E[log X; X <= z] for X ~ Gamma(a, 1), by the power series of e^-x (z <= 2: 40 terms are plenty)."""
    from scipy.special import gammaln

    log_z = np.log(z)
    out = np.zeros_like(z)
    for n in range(n_terms):
        b = n + a  # integral of x^(b - 1) log x over (0, z] = z^b (log z / b - 1 / b^2)
        mag = np.exp(b * log_z - gammaln(a) - gammaln(n + 1.0))
        out += (-1.0) ** n * mag * (log_z / b - 1.0 / (b * b))
    return out

"""Loss ingredients of CausCell that need no network: per-cell weights and the linear-dependence penalty.

:func:`combination_weights` is the paper's reweighting of the reconstruction loss, 1 - freq/N of a
cell's label combination (Gao, Dong et al., Nat Commun 2025, Methods). :func:`linear_dependence`
is not in the paper: it is the closed-form penalty behind this implementation's optional
exclusivity and exogenous-independence terms (``excl_weight``, ``exo_weight``; docs/causcell.md).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["combination_weights", "linear_dependence"]


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

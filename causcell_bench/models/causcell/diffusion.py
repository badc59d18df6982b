"""The diffusion side of CausCell's generative module G: noise schedule, time embedding, samplers.

G is an x0-predicting diffusion model with T = 1000 steps and the "linear" schedule (Gao, Dong
et al., Nat Commun 2025, Methods, "Generative module"). Two reverse processes: the paper's T-step
ancestral (DDPM) sampler and a deterministic DDIM sampler (eta = 0) over fewer steps, which is
ours (docs/causcell.md). The denoiser network itself is in :mod:`.networks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SAMPLERS",
    "SCHEDULE_KEYS",
    "diffusion_schedule",
    "reverse_diffusion",
    "sampling_timesteps",
    "sinusoidal",
]

SAMPLERS = ("ancestral", "ddim")
# the tensors diffusion_schedule returns, in that order (CausCellNet keeps each as a buffer)
SCHEDULE_KEYS = ("betas", "abar", "abar_prev", "post_c0", "post_ct", "post_var")


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


def sampling_timesteps(sampler: str, n_timesteps: int, steps: int) -> list[int]:
    """The timesteps a reverse process visits, from T - 1 down to 0.

    ``ancestral``: all T of them (``steps`` is ignored); ``ddim``: ``steps`` evenly spaced ones
    (fewer when rounding makes two coincide).
    """
    if sampler == "ancestral":
        return list(range(n_timesteps - 1, -1, -1))
    # float(): Python's round of a float gives an int, rounding half to even as numpy does
    return sorted({round(float(t)) for t in np.linspace(n_timesteps - 1, 0, steps)}, reverse=True)


def reverse_diffusion(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Mapping[str, torch.Tensor],
    *,
    sampler: str,
    generator: torch.Generator,
    clamp_x0: bool = False,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One reverse chain from the noise ``x`` (B, G) at ``timesteps[0]`` to a generated x0 (B, G).

    ``denoise(x_t, t)`` predicts x0 from the noisy batch and its (B,) timesteps. ``schedule`` holds
    the tensors of :func:`diffusion_schedule` on ``x``'s device. ``ancestral`` draws fresh noise
    from ``generator`` at every step but the last; ``ddim`` (eta = 0) draws none. ``clamp_x0``
    keeps each x0 estimate non-negative (log1p expression never is). ``on_step`` is called after
    every step (progress display).
    """
    for i, t in enumerate(timesteps):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = denoise(x, tt)
        if clamp_x0:
            x0 = x0.clamp_min(0.0)
        if sampler == "ancestral":
            if t > 0:
                mean = schedule["post_c0"][t] * x0 + schedule["post_ct"][t] * x
                noise = torch.randn(x.shape, generator=generator, device=x.device)
                x = mean + schedule["post_var"][t].sqrt() * noise
            else:
                x = x0
        else:
            if i + 1 < len(timesteps):
                ab, ab_prev = schedule["abar"][t], schedule["abar"][timesteps[i + 1]]
                eps_hat = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps_hat
            else:
                x = x0
        if on_step is not None:
            on_step()
    return x

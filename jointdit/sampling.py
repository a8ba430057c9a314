"""Samplers for rectified flow, as pure functions of (velocity, x, ts) (k-diffusion style).

`x` is a tuple of tensors (video, audio latents) that move together; `velocity(x, t)` returns
the velocity for each. Time runs from ts[0] = 1 (noise) to ts[-1] = 0 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Latents = tuple[Tensor, ...]
Velocity = Callable[[Latents, float], Latents]


def timesteps(steps: int, shift: float = 1.0) -> Tensor:
    """steps + 1 times from 1 to 0; shift > 1 spends more steps near the noise end (SD3)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


@torch.no_grad()
def sample_euler(velocity: Velocity, x: Latents, ts: Tensor) -> Latents:
    """Euler steps: exactly len(ts) - 1 velocity evaluations."""
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        v = velocity(x, t)
        x = tuple(xi + (t_next - t) * vi for xi, vi in zip(x, v, strict=True))
    return x

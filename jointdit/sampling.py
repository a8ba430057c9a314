"""Samplers for rectified flow, as pure functions of (velocity, x, ts) (k-diffusion style).

`x` is a tuple of tensors (video, audio latents) that move together; `velocity(x, t)` returns
the velocity for each. Time runs from ts[0] = 1 (noise) to ts[-1] = 0 (data). A velocity that
returns zeros for one element holds it fixed (the conditional modes v2a / a2v).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Latents = tuple[Tensor, ...]
Velocity = Callable[[Latents, float], Latents]
SAMPLERS = ("euler", "heun")


def timesteps(intervals: int, shift: float = 1.0) -> Tensor:
    """intervals + 1 times from 1 to 0; shift > 1 spends more of them near the noise end (SD3)."""
    if intervals < 1:
        raise ValueError(f"need at least one interval, got {intervals}")
    t = torch.linspace(1.0, 0.0, intervals + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def _step(x: Latents, v: Latents, dt: float) -> Latents:
    return tuple(xi + dt * vi for xi, vi in zip(x, v, strict=True))


@torch.no_grad()
def sample_euler(velocity: Velocity, x: Latents, ts: Tensor) -> Latents:
    """Euler: exactly len(ts) - 1 velocity evaluations."""
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        x = _step(x, velocity(x, t), t_next - t)
    return x


@torch.no_grad()
def sample_heun(velocity: Velocity, x: Latents, ts: Tensor, final_euler: bool = False) -> Latents:
    """Heun (trapezoidal predictor-corrector): 2 evaluations per interval.

    With final_euler the last interval takes a single Euler step, so the count is
    2 (len(ts) - 1) - 1; `sample` uses that to meet an odd evaluation budget exactly.
    """
    pairs = list(zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True))
    for k, (t, t_next) in enumerate(pairs):
        v = velocity(x, t)
        guess = _step(x, v, t_next - t)
        if final_euler and k == len(pairs) - 1:
            x = guess
            continue
        v_next = velocity(guess, t_next)
        x = _step(x, tuple((a + b) / 2 for a, b in zip(v, v_next, strict=True)), t_next - t)
    return x


def sample(sampler: str, velocity: Velocity, x: Latents, evaluations: int, shift: float) -> Latents:
    """Run `sampler` with exactly `evaluations` calls of `velocity`."""
    if sampler == "euler":
        return sample_euler(velocity, x, timesteps(evaluations, shift))
    if sampler == "heun":
        if evaluations < 2:
            raise ValueError(f"heun needs at least 2 evaluations, got {evaluations}")
        intervals = (evaluations + 1) // 2
        return sample_heun(velocity, x, timesteps(intervals, shift), evaluations % 2 == 1)
    raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")

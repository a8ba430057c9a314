"""Rotary position embeddings over several axes, with time in seconds for every modality.

A head's channels are split into groups, one per axis; the time group comes first and has the
same width for video and audio, so a video token and an audio token at the same instant get the
same temporal rotation and their dot product depends only on their time difference.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _even(n: int) -> int:
    return n - n % 2


def axis_dims(head_dim: int, spatial_axes: int) -> list[int]:
    """Channels per axis: [time, *spatial]; the rest of the head is left unrotated.

    Video has two spatial axes (h, w); audio has one (frequency) that takes the width of both,
    so the time group is identical across modalities.
    """
    time = _even(head_dim // 3)
    space = _even((head_dim - time) // 2)
    if spatial_axes == 2:
        return [time, space, space]
    if spatial_axes == 1:
        return [time, 2 * space]
    raise ValueError(f"spatial_axes must be 1 or 2, got {spatial_axes}")


def rope_angles(positions: Tensor, dims: list[int], theta: float) -> Tensor:
    """Angles (N, sum(dims) // 2) for positions (N, n_axes) given in each axis' own units."""
    if positions.shape[-1] != len(dims):
        raise ValueError(f"positions have {positions.shape[-1]} axes, dims {len(dims)}")
    parts = []
    for axis, dim in enumerate(dims):
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        parts.append(positions[:, axis, None].double() * freqs)
    return torch.cat(parts, dim=-1).float()


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, H, N, D) by angles (N, R); channels >= 2R pass."""
    rotated = 2 * angles.shape[-1]
    head, tail = x[..., :rotated], x[..., rotated:]
    pairs = head.float().unflatten(-1, (-1, 2))
    cos, sin = angles.cos(), angles.sin()
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), tail), dim=-1)

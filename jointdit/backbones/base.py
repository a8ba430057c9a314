"""The Backbone interface: a pretrained denoiser split into Input, Experts and Output.

    state = backbone.input(x_t, t, cond)      # the backbone's own time embedding, input layers
    state = backbone.expert(i, state)         # i = 0 .. num_experts - 1, in order
    raw = backbone.output(state)              # the prediction in the backbone's own terms
    velocity = backbone.velocity(raw, x_t, t) # the flow velocity eps - x0

x_t and t are the shared rectified flow's (x_t = (1 - t) x0 + t eps); each adapter maps them
to its own input scaling and time parameterisation (jointdit/backbones/timemaps.py).

Between experts the joint layers see the state as tokens: `to_tokens(state)` gives (B, N, C_i)
and positions (N, 1 + spatial axes), column 0 the time in seconds (video frames, audio time
bins: both modalities share their temporal phase), the other columns in feature-map units;
`from_tokens(state, tokens)` puts edited tokens back. `time_embedding(state)` (B, cond_dim) is
what the joint layers' AdaLN reads.

States are never edited in place: an expert returns a new state, so a step can be recomputed
under activation checkpointing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class BackboneCond:
    """Conditions a backbone may use: the first-frame latent (B, C, H, W) for video, and the
    shared context tokens (B, N, D) (text / image embedding), None when absent."""

    image: Tensor | None = None
    context: Tensor | None = None


class Backbone(nn.Module, ABC):
    @property
    @abstractmethod
    def num_experts(self) -> int: ...

    @property
    @abstractmethod
    def cond_dim(self) -> int:
        """Width of the time embedding the joint layers are modulated by."""

    @abstractmethod
    def expert_dim(self, i: int) -> int:
        """Channels C_i of expert i's output tokens."""

    @abstractmethod
    def input(self, x: Tensor, t: Tensor, cond: BackboneCond) -> Any: ...

    @abstractmethod
    def expert(self, i: int, state: Any) -> Any: ...

    @abstractmethod
    def output(self, state: Any) -> Tensor: ...

    @abstractmethod
    def velocity(self, raw: Tensor, x: Tensor, t: Tensor) -> Tensor: ...

    @abstractmethod
    def time_embedding(self, state: Any) -> Tensor: ...

    @abstractmethod
    def to_tokens(self, state: Any) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def from_tokens(self, state: Any, tokens: Tensor) -> Any: ...

    def forward(self, x: Tensor, t: Tensor, cond: BackboneCond) -> Tensor:
        """The whole backbone alone: the flow velocity for x_t at t."""
        state = self.input(x, t, cond)
        for i in range(self.num_experts):
            state = self.expert(i, state)
        return self.velocity(self.output(state), x, t)


def video_map_to_tokens(h: Tensor, batch: int) -> Tensor:
    """(B*T, C, H, W) -> (B, T*H*W, C), frame-major."""
    bt, c = h.shape[:2]
    return h.unflatten(0, (batch, bt // batch)).permute(0, 1, 3, 4, 2).reshape(batch, -1, c)


def video_tokens_to_map(x: Tensor, like: Tensor) -> Tensor:
    """Inverse of video_map_to_tokens, shaped like the map `like`."""
    bt, c, height, width = like.shape
    b = x.shape[0]
    x = x.reshape(b, bt // b, height, width, c).permute(0, 1, 4, 2, 3)
    # contiguous: the next convolution then runs exactly as on the original map
    return x.reshape(bt, c, height, width).contiguous()


def video_positions(frames: int, height: int, width: int, fps: float, device: Any) -> Tensor:
    """(T*H*W, 3): (seconds, row, column) of each token of a frame-major video feature map."""
    grid = torch.meshgrid(
        torch.arange(frames, device=device) / fps,
        torch.arange(height, device=device).float(),
        torch.arange(width, device=device).float(),
        indexing="ij",
    )
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def audio_positions(
    time_bins: int, latent_time_bins: int, freq_bins: int, frame_rate: float, time_first: bool,
    device: Any,
) -> Tensor:
    """(N, 2): (seconds, frequency bin) of each token of an audio feature map flattened in its
    own (row, column) order. A bin of a level downsampled by d = latent / bins covers latent
    frames [j d, (j + 1) d); its time is their centre."""
    d = latent_time_bins / time_bins
    seconds = ((torch.arange(time_bins, device=device) + 0.5) * d - 0.5) / frame_rate
    freq = torch.arange(freq_bins, device=device).float()
    if time_first:
        time, f = torch.meshgrid(seconds, freq, indexing="ij")
    else:
        f, time = torch.meshgrid(freq, seconds, indexing="ij")
    return torch.stack((time, f), dim=-1).reshape(-1, 2)

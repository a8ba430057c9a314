"""Codecs: media <-> latents. One interface; `patch` needs no weights (the default)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from torch import Tensor

from jointdit.codecs.patch import PatchCodec, PatchCodecConfig


class Codec(Protocol):
    name: str

    @property
    def video_channels(self) -> int: ...

    @property
    def audio_channels(self) -> int: ...

    @property
    def audio_bins(self) -> int: ...

    @property
    def audio_frame_rate(self) -> float: ...

    def encode_video(self, frames: np.ndarray) -> Tensor: ...

    def decode_video(self, latents: Tensor) -> np.ndarray: ...

    def encode_audio(self, wave: np.ndarray) -> Tensor: ...

    def decode_audio(self, latents: Tensor) -> np.ndarray: ...


def build_codec(name: str, patch: PatchCodecConfig) -> Codec:
    if name == "patch":
        return PatchCodec(patch)
    raise ValueError(f"unknown codec {name!r}; available: patch")

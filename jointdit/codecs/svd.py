"""Video through Stable Video Diffusion's VAE (diffusers `AutoencoderKLTemporalDecoder`).

Frames are encoded one by one by the 2D encoder (the posterior's mode: deterministic) and scaled
by the config's `scaling_factor`; no temporal compression, so the latent frame rate is the clip's.
The decoder is temporal: it mixes the frames of one call, so decoding in chunks of
`decode_chunk` frames bounds memory but is exact only against the same chunking (SVD's own
pipeline decodes in chunks the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from jointdit.codecs.patch import to_uint8, to_unit
from jointdit.pretrained import load_frozen


@dataclass(frozen=True)
class SVDCodecConfig:
    path: str = ""  # an SVD pipeline snapshot (with vae/) or its vae/ directory
    # float32 | float16 | bfloat16, the weights' dtype, encoder included (SVD's pipeline upcasts
    # an fp16 VAE to float32 to encode its image; bfloat16 has the range without that)
    dtype: str = "float32"
    device: str = "cpu"
    encode_chunk: int = 8  # frames per encoder call (frames encode independently: exact)
    decode_chunk: int = 8  # frames per temporal-decoder call (its num_frames)


class SVDVideoCodec:
    name = "svd"

    def __init__(self, cfg: SVDCodecConfig):
        # imported here so that the default patch codec never pays for importing diffusers
        from diffusers import AutoencoderKLTemporalDecoder

        where = "codec.svd"
        for key in ("encode_chunk", "decode_chunk"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"{where}.{key} must be >= 1, got {getattr(cfg, key)}")
        self.vae, directory = load_frozen(
            AutoencoderKLTemporalDecoder, cfg.path, "vae", cfg.dtype, cfg.device, where
        )
        self.dtype, self.device = self.vae.dtype, self.vae.device
        config = self.vae.config
        if config.in_channels != 3 or config.out_channels != 3:
            raise ValueError(
                f"{directory}: an RGB VAE is expected, got {config.in_channels} in / "
                f"{config.out_channels} out channels"
            )
        self.cfg = cfg
        self.scaling_factor = float(config.scaling_factor)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self._channels = int(config.latent_channels)

    @property
    def video_channels(self) -> int:
        return self._channels

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> Tensor:
        """uint8 (T, H, W, 3) -> float32 (T, C, H / d, W / d), scaled by the scaling factor."""
        d = self.downsample
        t, h, w, _ = frames.shape
        if h % d or w % d:
            raise ValueError(
                f"frame size {h}x{w} is not divisible by the SVD VAE's {d}x downsampling"
            )
        x = to_unit(frames).permute(0, 3, 1, 2)
        latents = []
        for i in range(0, t, self.cfg.encode_chunk):
            chunk = x[i : i + self.cfg.encode_chunk].to(self.device, self.dtype)
            latents.append(self.vae.encode(chunk).latent_dist.mode().float().cpu())
        return torch.cat(latents) * self.scaling_factor

    @torch.no_grad()
    def decode_video(self, latents: Tensor) -> np.ndarray:
        """(T, C, h, w) -> uint8 (T, h d, w d, 3), decoded `decode_chunk` frames at a time."""
        z = latents.float() / self.scaling_factor
        frames = []
        for i in range(0, z.shape[0], self.cfg.decode_chunk):
            chunk = z[i : i + self.cfg.decode_chunk].to(self.device, self.dtype)
            pixels = self.vae.decode(chunk, num_frames=chunk.shape[0]).sample
            frames.append(pixels.float().cpu())
        return to_uint8(torch.cat(frames).permute(0, 2, 3, 1))

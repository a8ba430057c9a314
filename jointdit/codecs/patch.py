"""The parameter-free default codec.

Video: pixels in [-1, 1], space-to-depth by `video_factor` (an exact, invertible reshape).
Audio: normalised log-mel (torchaudio), inverted with a least-squares mel inverse and
Griffin-Lim, so decoding is approximate (phase is estimated) but needs no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torch import Tensor

from jointdit.codecs.logmel import seeded_griffin_lim


def to_unit(frames: np.ndarray) -> Tensor:
    """uint8 pixels (..., 3) -> float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> np.ndarray:
    """[-1, 1] -> uint8 pixels, clamped (a decoder may overshoot)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


@dataclass(frozen=True)
class PatchCodecConfig:
    video_factor: int = 4
    sample_rate: int = 16000
    n_fft: int = 512
    hop: int = 250  # 64 mel frames per second at 16 kHz
    n_mels: int = 32
    f_min: float = 0.0
    f_max: float = 8000.0
    log_mean: float = -6.0  # log-mel normalisation, so latents are roughly unit-scaled
    log_std: float = 4.0
    griffin_lim_iters: int = 32


class PatchCodec:
    name = "patch"
    audio_decoder = "griffin-lim"

    def __init__(self, cfg: PatchCodecConfig):
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            power=1.0,
        )
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=cfg.n_fft // 2 + 1,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=cfg.n_fft, hop_length=cfg.hop, power=1.0, n_iter=cfg.griffin_lim_iters
        )

    @property
    def video_channels(self) -> int:
        return 3 * self.cfg.video_factor**2

    @property
    def audio_channels(self) -> int:
        return 1

    @property
    def audio_bins(self) -> int:
        return self.cfg.n_mels

    @property
    def audio_frame_rate(self) -> float:
        return self.cfg.sample_rate / self.cfg.hop

    def encode_video(self, frames: np.ndarray) -> Tensor:
        """uint8 (T, H, W, 3) -> (T, 3 f^2, H / f, W / f) in [-1, 1]."""
        f = self.cfg.video_factor
        t, h, w, _ = frames.shape
        if h % f or w % f:
            raise ValueError(f"frame size {h}x{w} is not divisible by video_factor {f}")
        x = to_unit(frames)
        x = x.reshape(t, h // f, f, w // f, f, 3).permute(0, 5, 2, 4, 1, 3)
        return x.reshape(t, 3 * f * f, h // f, w // f)

    def decode_video(self, latents: Tensor) -> np.ndarray:
        """(T, 3 f^2, h, w) -> uint8 (T, h f, w f, 3)."""
        f = self.cfg.video_factor
        t, _, h, w = latents.shape
        x = latents.float().reshape(t, 3, f, f, h, w).permute(0, 4, 2, 5, 3, 1)
        x = x.reshape(t, h * f, w * f, 3)
        return to_uint8(x)

    def encode_audio(self, wave: np.ndarray) -> Tensor:
        """float32 (S,) -> (1, n_mels, S // hop); frame l is centred at l * hop / sample_rate."""
        mel = self.mel(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
        mel = mel[:, : len(wave) // self.cfg.hop]
        return ((torch.log(mel + 1e-5) - self.cfg.log_mean) / self.cfg.log_std)[None]

    def decode_audio(self, latents: Tensor) -> np.ndarray:
        """(1, n_mels, L) -> float32 (L * hop,) by mel inversion + Griffin-Lim."""
        mel = torch.exp(latents[0].float() * self.cfg.log_std + self.cfg.log_mean) - 1e-5
        spec = self.inverse_mel(mel.clamp_min(0))
        length = latents.shape[-1] * self.cfg.hop
        wave = seeded_griffin_lim(self.griffin_lim, spec)
        wave = torch.nn.functional.pad(wave, (0, max(0, length - wave.shape[-1])))[:length]
        return wave.clamp(-1, 1).numpy().astype(np.float32)

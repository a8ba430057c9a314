"""Audio through AudioLDM2's VAE (diffusers `AutoencoderKL`) on AudioLDM2's log-mel.

The front end is the one the checkpoint was trained on (`mel_spectrogram_train` of AudioLDM's
training code, haoheliu/AudioLDM-training-finetuning, the HiFi-GAN recipe: `logmel`): 16 kHz,
n_fft and window 1024, hop 160 (S samples give exactly S / 160 frames, frame t centred on
sample 160 t + 80), 64 Slaney mel bands over 0-8 kHz. The VAE sees it as an image
(B, 1, time, mel); its latents (B, C, time / d, mel / d) are exposed as (C, mel / d, time / d).

Decoding: VAE -> log-mel -> waveform by the snapshot's HiFi-GAN vocoder (`vocoder/`,
transformers `SpeechT5HifiGan`) when present and wanted, else by Griffin-Lim on the inverted
mel (phase estimated: approximate). `audio_decoder` says which.

AudioLDM's data loader also removes the DC offset and scales each clip to a peak of 0.5; a codec
must give back the level it was given, so that is not done here: clips far louder or quieter
than that sit off the VAE's training distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jointdit.codecs.logmel import LogMel, MelSpec
from jointdit.pretrained import check_class, load_frozen

MEL = MelSpec(sample_rate=16000, n_fft=1024, hop=160, win=1024, n_mels=64, f_min=0.0, f_max=8000.0)
SAMPLE_RATE, HOP, N_MELS = MEL.sample_rate, MEL.hop, MEL.n_mels


@dataclass(frozen=True)
class AudioLDM2CodecConfig:
    path: str = ""  # an AudioLDM2 pipeline snapshot (vae/, vocoder/) or its vae/ directory
    dtype: str = "float32"  # float32 | float16 | bfloat16: the weights' dtype
    device: str = "cpu"
    vocoder: bool = True  # the snapshot's HiFi-GAN when it has one; else Griffin-Lim
    griffin_lim_iters: int = 32


class AudioLDM2AudioCodec:
    name = "audioldm2"

    def __init__(self, cfg: AudioLDM2CodecConfig, sample_rate: int):
        # imported here so that the default patch codec never pays for importing diffusers
        from diffusers import AutoencoderKL

        where = "codec.audioldm2"
        if sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"{where}: the clip sample rate is {sample_rate} Hz, but AudioLDM2's VAE and "
                f"vocoder work at {SAMPLE_RATE} Hz: set clip.sample_rate to {SAMPLE_RATE}"
            )
        self.vae, directory = load_frozen(
            AutoencoderKL, cfg.path, "vae", cfg.dtype, cfg.device, where
        )
        self.dtype, self.device = self.vae.dtype, self.vae.device
        config = self.vae.config
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        if config.in_channels != 1 or config.out_channels != 1 or N_MELS % self.downsample:
            raise ValueError(
                f"{directory}: a one-channel mel VAE downsampling {N_MELS} mel bins evenly is "
                f"expected, got {config.in_channels} in / {config.out_channels} out channels "
                f"and {self.downsample}x downsampling"
            )
        self.cfg = cfg
        self.scaling_factor = float(config.scaling_factor)
        self._channels = int(config.latent_channels)
        self.mel = LogMel(MEL, cfg.griffin_lim_iters)
        self.vocoder = self._load_vocoder(directory) if cfg.vocoder else None
        self.audio_decoder = "hifigan" if self.vocoder is not None else "griffin-lim"

    def _load_vocoder(self, vae_dir: Path) -> torch.nn.Module | None:
        """The snapshot's vocoder/ next to its vae/; None for a bare VAE directory."""
        directory = vae_dir.parent / "vocoder"
        if vae_dir.name != "vae" or not directory.is_dir():
            return None
        from transformers import SpeechT5HifiGan

        check_class(directory, "SpeechT5HifiGan")
        vocoder = SpeechT5HifiGan.from_pretrained(
            directory, dtype=self.dtype, local_files_only=True
        )
        config = vocoder.config
        upsampling = math.prod(config.upsample_rates)
        if (config.model_in_dim, config.sampling_rate, upsampling) != (N_MELS, SAMPLE_RATE, HOP):
            raise ValueError(
                f"{directory}: a vocoder of {N_MELS} mel bins at {SAMPLE_RATE} Hz upsampling "
                f"{HOP}x is expected, got {config.model_in_dim} bins at {config.sampling_rate} "
                f"Hz upsampling {upsampling}x"
            )
        return vocoder.to(self.device).eval().requires_grad_(False)

    @property
    def audio_channels(self) -> int:
        return self._channels

    @property
    def audio_bins(self) -> int:
        return N_MELS // self.downsample

    @property
    def audio_frame_rate(self) -> float:
        return SAMPLE_RATE / HOP / self.downsample

    @torch.no_grad()
    def encode_audio(self, wave: np.ndarray) -> Tensor:
        """float (S,) at 16 kHz -> float32 (C, 64 / d, L), L = S // (160 d) latent frames."""
        frames = len(wave) // (HOP * self.downsample) * self.downsample
        if frames == 0:
            raise ValueError(
                f"{len(wave)} samples are shorter than one latent frame "
                f"({HOP * self.downsample} samples at {SAMPLE_RATE} Hz)"
            )
        mel = self.mel(torch.from_numpy(np.asarray(wave, dtype=np.float32)))
        mel = mel[:frames][None, None].to(self.device, self.dtype)
        z = self.vae.encode(mel).latent_dist.mode()[0].float().cpu()
        return (z * self.scaling_factor).transpose(1, 2).contiguous()

    @torch.no_grad()
    def decode_audio(self, latents: Tensor) -> np.ndarray:
        """(C, 64 / d, L) -> float32 (L d 160,) in [-1, 1]."""
        z = (latents.float() / self.scaling_factor).transpose(1, 2)[None]
        mel = self.vae.decode(z.to(self.device, self.dtype)).sample[:, 0]  # (1, time, mel)
        if self.vocoder is not None:
            # HiFi-GAN's transposed convolutions overshoot by a few samples: cut to 160 a frame
            wave = self.vocoder(mel.to(self.vocoder.dtype))[0, : mel.shape[1] * HOP]
        else:
            wave = self.mel.invert(mel[0].float().cpu())
        return wave.float().cpu().clamp(-1, 1).numpy()

"""The HiFi-GAN log-mel spectrogram, and its approximate inverse by Griffin-Lim.

The recipe of HiFi-GAN's training code (jik876/hifi-gan, `meldataset.mel_spectrogram`), which
AudioLDM's training code and the universal HiFi-GAN vocoder share, at any `MelSpec`: a periodic
Hann window of `win`, the signal reflect-padded by (n_fft - hop) / 2 on each side and framed
without centring (so S samples give S // hop frames, frame t centred on sample hop t + hop / 2),
the magnitude (not power) spectrum, a Slaney mel filter bank (librosa's default: Slaney scale
and area normalisation) over [f_min, f_max], and `log(clamp(mel, 1e-5))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelSpec:
    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int
    f_min: float
    f_max: float


def seeded_griffin_lim(griffin_lim: torchaudio.transforms.GriffinLim, spec: Tensor) -> Tensor:
    """``griffin_lim(spec)`` from a fixed random phase: Griffin-Lim starts from a random phase,
    and drawn from torch's global stream the wave would depend on how much of it ran before
    (evaluate's scores moved when a model grew a module). The caller's stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return griffin_lim(spec)


class LogMel:
    """wave -> log-mel at one `MelSpec`, and back by least-squares mel inversion + Griffin-Lim
    (the phase is estimated: approximate, but it needs no weights)."""

    def __init__(self, spec: MelSpec, griffin_lim_iters: int = 32):
        self.spec = spec
        bins = spec.n_fft // 2 + 1
        # (n_fft / 2 + 1, n_mels)
        self.filterbank = torchaudio.functional.melscale_fbanks(
            bins, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate, "slaney", "slaney"
        )
        self.window = torch.hann_window(spec.win)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=bins,
            n_mels=spec.n_mels,
            sample_rate=spec.sample_rate,
            f_min=spec.f_min,
            f_max=spec.f_max,
            norm="slaney",
            mel_scale="slaney",
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=spec.n_fft,
            win_length=spec.win,
            hop_length=spec.hop,
            power=1.0,
            n_iter=griffin_lim_iters,
        )

    def __call__(self, wave: Tensor) -> Tensor:
        """float (S,) at spec.sample_rate -> (S // hop, n_mels) natural-log mel magnitudes."""
        s = self.spec
        pad = (s.n_fft - s.hop) // 2
        x = F.pad(wave.float()[None, None], (pad, pad), mode="reflect")[0]
        spec = torch.stft(
            x, s.n_fft, s.hop, s.win, window=self.window, center=False, return_complex=True
        ).abs()[0]
        return torch.log(torch.clamp(self.filterbank.T @ spec, min=LOG_FLOOR)).T

    def invert(self, mel: Tensor) -> Tensor:
        """(time, n_mels) log-mel -> (time * hop,) float wave, by Griffin-Lim."""
        # ((time - 1) hop,)
        wave = seeded_griffin_lim(self.griffin_lim, self.inverse_mel(torch.exp(mel.float()).T))
        # GriffinLim centres frame t on sample t hop; this framing centres it on t hop + hop / 2
        half = self.spec.hop // 2
        return F.pad(wave, (half, self.spec.hop - half))

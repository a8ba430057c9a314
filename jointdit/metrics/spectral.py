"""How close a reconstructed sound is to the original, in spectra (for vocoders and codecs).

Two views, because they disagree on purpose: `log_mel_distance` compares the log-mel a vocoder
was given with the log-mel of what it made (Griffin-Lim iterates towards exactly that and wins
it); `log_spectral_distance` compares the sound with the original at an STFT resolution of the
caller's choice, where an estimated phase shows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_DB_PER_NEPER = 20 / math.log(10)  # a natural-log magnitude step, in dB


def log_mel_distance(mel: torch.Tensor, other: torch.Tensor) -> float:
    """Mean absolute difference of two natural-log mel magnitude spectrograms, in dB (over
    their common frames)."""
    frames = min(len(mel), len(other))
    return float((mel[:frames] - other[:frames]).abs().mean()) * _DB_PER_NEPER


def log_spectral_distance(a: np.ndarray, b: np.ndarray, n_fft: int, hop: int) -> float:
    """Log-spectral distance in dB: the RMS over frequency of the log-power difference of two
    sounds' STFTs (Hann window of n_fft), averaged over frames (over their common length)."""
    n = min(len(a), len(b))
    window = torch.hann_window(n_fft)
    power = [
        torch.stft(
            torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32)),
            n_fft,
            hop,
            window=window,
            return_complex=True,
        ).abs()
        ** 2
        for x in (a, b)
    ]
    diff = 10 * (torch.log10(power[0] + 1e-8) - torch.log10(power[1] + 1e-8))
    return float(diff.pow(2).mean(0).sqrt().mean())

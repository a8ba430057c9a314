"""VGGish, the audio embedding behind FAD, with its exact log-mel input preprocessing.

Fréchet Audio Distance (Kilgour et al., 2019) fits a Gaussian to the 128-d VGGish embeddings
of a set of clips and compares two sets with ``frechet.frechet_distance``. The numbers here
come from Google's AudioSet release (``vggish_params.py``, ``mel_features.py``,
``vggish_input.py``, ``vggish_slim.py``): 16 kHz mono, 25 ms periodic-Hann windows every 10 ms,
a 512-point FFT magnitude, 64 HTK-mel bands over 125-7500 Hz, ``log(mel + 0.01)``, and
non-overlapping 0.96 s examples of 96 frames x 64 bands.

The layer names match the PyTorch port's checkpoint (harritaylor/torchvggish,
``vggish-10086976.pth``), so a user can point at that file; weights are never downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from jointdit.weights import load_weights

SAMPLE_RATE = 16_000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT_LENGTH = 512  # the power of two above the window
N_MELS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s, also the hop between examples
EMBEDDING_SIZE = 128

_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """VGG-style network from log-mel examples ``(B, 96, 64)`` to embeddings ``(B, 128)``.

    The output is the pre-activation 128-d layer: Google's current ``vggish_slim`` and the FAD
    reference have no ReLU after the last layer (the torchvggish port adds one, which FAD
    implementations strip), and neither applies the PCA / 8-bit quantisation post-processing
    used for the released AudioSet features.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in _CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU()]
                channels = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, EMBEDDING_SIZE),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x.unsqueeze(1))  # (B, 512, 6, 4)
        # The original is a TensorFlow (NHWC) graph: flattening in its order lets ported
        # weights of the first fully connected layer see their inputs where they expect them.
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_weights() -> np.ndarray:
    """Triangular filters from the 257 FFT bins to the 64 mel bands, ``(257, 64)``.

    Triangles are built in mel on evenly spaced band edges; they are not area-normalised.
    """
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), N_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # The reference drops the DC bin even where a band's triangle would reach it.
    weights[0] = 0.0
    return weights


def stft_magnitude(wave: np.ndarray) -> np.ndarray:
    """Magnitude (not power) spectrogram of a 16 kHz waveform ``(S,)``, ``(frames, 257)``.

    Whole 400-sample frames only, no padding: ``1 + (S - 400) // 160`` frames.
    """
    # Periodic, not symmetric, Hann: the reference's window sums to exactly WINDOW / 2.
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW) / WINDOW)
    frames = _frame(np.asarray(wave, dtype=np.float64), WINDOW, HOP)
    return np.abs(np.fft.rfft(frames * window, FFT_LENGTH))


def log_mel_spectrogram(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """VGGish log-mel spectrogram ``(frames, 64)`` in float64, 100 frames per second.

    ``audio`` is a float waveform ``(S,)`` in [-1, 1], or ``(C, S)`` averaged over channels
    (the reference averages axis 1, i.e. soundfile's ``(S, C)`` layout). Other rates are
    resampled to 16 kHz with torchaudio's Kaiser-windowed sinc set to resampy's
    ``kaiser_best`` parameters; the reference calls resampy itself, so resampled input can
    differ from it slightly (16 kHz input is untouched and matches exactly).
    """
    wave = np.asarray(audio, dtype=np.float64)
    if wave.ndim == 2:
        wave = wave.mean(axis=0)
    if wave.ndim != 1:
        raise ValueError(f"audio must be (S,) or (C, S), got {np.shape(audio)}")
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(
            torch.from_numpy(wave),
            sample_rate,
            SAMPLE_RATE,
            lowpass_filter_width=64,
            rolloff=0.9475937167399596,
            resampling_method="sinc_interp_kaiser",
            beta=14.769656459379492,
        ).numpy()
    return np.log(stft_magnitude(wave) @ mel_weights() + LOG_OFFSET)


def vggish_examples(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Non-overlapping 0.96 s log-mel examples ``(N, 96, 64)``, float32, as VGGish eats them.

    Like ``vggish_input.waveform_to_examples``: a trailing partial example is dropped, so a
    clip shorter than 0.96 s (15,600 samples at 16 kHz) gives ``N = 0``.
    """
    log_mel = log_mel_spectrogram(audio, sample_rate)
    return _frame(log_mel, EXAMPLE_FRAMES, EXAMPLE_FRAMES).astype(np.float32)


def _frame(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Whole windows along the first axis, ``(n, window, *x.shape[1:])``; none if too short."""
    n = max(0, 1 + (len(x) - window) // hop)
    return x[np.arange(n)[:, None] * hop + np.arange(window)]


class VGGishEmbedder:
    """VGGish embeddings of audio clips, from weights in a local file.

    FAD pools the per-example embeddings of all clips of a set into one Gaussian, so a clip
    contributes one row per 0.96 s it lasts, and clips of different lengths weigh differently.
    """

    def __init__(self, weights: Path, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size
        self.model = load_weights(VGGish(), weights).to(device).eval()

    @torch.no_grad()
    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Embeddings ``(N, 128)`` in float64 of one clip, one row per 0.96 s example."""
        examples = torch.from_numpy(vggish_examples(audio, sample_rate))
        if len(examples) == 0:
            return np.zeros((0, EMBEDDING_SIZE))
        rows = [
            self.model(batch.to(self.device)).double().cpu()
            for batch in examples.split(self.batch_size)
        ]
        return torch.cat(rows).numpy()

"""DeSync: the audio-video offset Synchformer predicts, in seconds, as av-benchmark computes it.

The protocol of hkchengrex/av-benchmark (used by MMAudio and the 2025-2026 joint-generation
papers that report DeSync):

- video at 25 fps (frames picked by time, as ffmpeg's ``fps`` filter does), the short side
  resized to 224 (bicubic, antialiased), centre-cropped to 224x224, scaled to [-1, 1];
- audio averaged to mono, resampled to 16 kHz (torchaudio's default windowed sinc);
- segments of 0.64 s every 0.32 s: 16 frames every 8, and 10,240 samples every 5,120, each
  turned into a 128-band mel power spectrogram (n_fft 1024, 25 ms windows every 10 ms), then
  ``log(x + 1e-6)``, padded from 65 to 66 frames with zeros and normalised by
  ``(x + 4.2677393) / (2 * 4.5689974)``;
- the offset is classified on the first 14 segments (4.8 s) and on the last 14; each window's
  offset is the most likely of the 21 classes from -2 s to +2 s; DeSync is the mean absolute
  offset over both windows (a clip of exactly 4.8 s counts its one window twice), and a set's
  DeSync is the mean over its clips. Lower is better; 0 is in sync.

Clips shorter than 4.8 s have no window and are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from jointdit.metrics.synchformer import (
    SEGMENT_FRAMES,
    SPEC_FRAMES,
    WINDOW_SEGMENTS,
    Synchformer,
    SynchformerConfig,
)
from jointdit.weights import load_weights

FPS = 25.0
SAMPLE_RATE = 16_000
SEGMENT_STEP_FRAMES = 8
SEGMENT_SAMPLES = 10_240
SEGMENT_STEP_SAMPLES = 5_120
WINDOW_S = (WINDOW_SEGMENTS - 1) * SEGMENT_STEP_FRAMES / FPS + SEGMENT_FRAMES / FPS  # 4.8
MAX_OFFSET_S = 2.0
MEL_WINDOW = 400
MEL_HOP = 160
MEL_FFT = 1024
LOG_OFFSET = 1e-6
MEL_MEAN = -4.2677393
MEL_STD = 4.5689974


def offset_grid(num_offsets: int = 21) -> np.ndarray:
    """The offset classes in seconds, -2 ... 2; float32 values, as the benchmark's grid."""
    return np.linspace(-MAX_OFFSET_S, MAX_OFFSET_S, num_offsets).astype(np.float32)


def frames_at(frames: np.ndarray, fps: float, rate: float = FPS) -> np.ndarray:
    """The frames on screen at ``0, 1/rate, 2/rate, ...``, as ffmpeg's ``fps`` filter picks them.

    Frame k of the input (shown from k / fps) lands on output slot round(k * rate / fps),
    halves away from zero; slot n shows the last input frame that landed on or before it.
    The output covers the input's duration, T / fps, rounded to whole output frames.
    """
    landing = np.floor(np.arange(len(frames)) * rate / fps + 0.5).astype(np.int64)
    count = int(np.floor(len(frames) * rate / fps + 0.5))
    picks = np.searchsorted(landing, np.arange(count), side="right") - 1
    return frames[np.maximum(picks, 0)]


def video_input(frames: np.ndarray, fps: float, size: int = 224) -> Tensor:
    """uint8 RGB ``(T, H, W, 3)`` at ``fps`` -> float32 ``(N, 3, size, size)`` at 25 fps."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 RGB (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    video = torch.from_numpy(np.ascontiguousarray(frames_at(frames, fps))).permute(0, 3, 1, 2)
    video = TF.resize(video, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    video = TF.center_crop(video, [size, size])
    return (video.float() / 255.0 - 0.5) / 0.5


def audio_input(audio: np.ndarray, sample_rate: int) -> Tensor:
    """A waveform ``(S,)`` or ``(C, S)`` -> float32 mono ``(S',)`` at 16 kHz."""
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if wave.ndim == 2:
        wave = wave.mean(dim=0)
    if wave.ndim != 1:
        raise ValueError(f"audio must be (S,) or (C, S), got shape {tuple(wave.shape)}")
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, sample_rate, SAMPLE_RATE)
    return wave


def log_mel(segments: Tensor, n_mels: int = 128) -> Tensor:
    """Audio segments ``(N, 10240)`` at 16 kHz -> normalised log-mel ``(N, n_mels, 66)``."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        win_length=MEL_WINDOW,
        hop_length=MEL_HOP,
        n_fft=MEL_FFT,
        n_mels=n_mels,
    )(segments)
    x = torch.log(mel + LOG_OFFSET)
    x = torch.nn.functional.pad(x, (0, SPEC_FRAMES - x.shape[-1]))
    return (x - MEL_MEAN) / (2 * MEL_STD)


def segment_count(video_frames: int, audio_samples: int) -> int:
    """Segments both streams hold (a 25-fps frame count and a 16-kHz sample count)."""
    video = (video_frames - SEGMENT_FRAMES) // SEGMENT_STEP_FRAMES + 1
    audio = (audio_samples - SEGMENT_SAMPLES) // SEGMENT_STEP_SAMPLES + 1
    return max(0, min(video, audio))


class DeSyncScorer:
    """Synchformer from a local weights file, scoring clips with the benchmark's protocol."""

    def __init__(
        self,
        weights: Path,
        device: str = "cpu",
        cfg: SynchformerConfig | None = None,
        batch_size: int = 4,
    ) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_weights(Synchformer(cfg), weights).to(self.device).eval()
        self.grid = offset_grid(self.model.cfg.num_offsets)

    def offsets(
        self, frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int
    ) -> np.ndarray:
        """Predicted audio offsets in seconds of the first and the last 4.8-s window, ``(2,)``."""
        cfg = self.model.cfg
        video = video_input(frames, fps, cfg.image_size)
        wave = audio_input(audio, sample_rate)
        n = segment_count(len(video), len(wave))
        if n < WINDOW_SEGMENTS:
            raise ValueError(
                f"DeSync needs clips of at least {WINDOW_S:.1f} s; this one has "
                f"{len(frames) / fps:.2f} s of video and {np.shape(audio)[-1] / sample_rate:.2f} s "
                "of audio"
            )
        starts = [0, n - WINDOW_SEGMENTS]  # the first 14 segments and the last 14
        used = sorted({s + i for s in starts for i in range(WINDOW_SEGMENTS)})
        step_v, step_a = SEGMENT_STEP_FRAMES, SEGMENT_STEP_SAMPLES
        v_segments = torch.stack([video[i * step_v : i * step_v + SEGMENT_FRAMES] for i in used])
        a_segments = torch.stack([wave[i * step_a : i * step_a + SEGMENT_SAMPLES] for i in used])
        with torch.no_grad():
            v_feats = self._batched(self.model.video_features, v_segments)
            a_feats = self._batched(
                self.model.audio_features, log_mel(a_segments, cfg.num_mel_bins)
            )
            row = {segment: k for k, segment in enumerate(used)}
            windows = [[row[s + i] for i in range(WINDOW_SEGMENTS)] for s in starts]
            logits = self.model.offset_logits(
                torch.stack([v_feats[w] for w in windows]),
                torch.stack([a_feats[w] for w in windows]),
            )
        return self.grid[logits.argmax(dim=-1).cpu().numpy()].astype(np.float64)

    def desync(self, frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int) -> float:
        """DeSync of one clip: the mean absolute offset of its two windows, in seconds."""
        return float(np.abs(self.offsets(frames, fps, audio, sample_rate)).mean())

    def _batched(self, network: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        parts = [
            network(inputs[i : i + self.batch_size].to(self.device))
            for i in range(0, len(inputs), self.batch_size)
        ]
        return torch.cat(parts)

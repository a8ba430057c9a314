"""Distances between feature sets (Fréchet; kernel MMD), and two parameter-free embeddings.

The embeddings are deliberately simple statistics, not the pretrained networks behind FAD
(VGGish) and FVD (I3D): they need no weights and are deterministic, so they can gate a pipeline
offline. Their distances are reported as ``fd_logmel`` and ``fd_frames``; they are not
comparable with published FAD / FVD numbers.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torchaudio

_N_MELS = 64
_WINDOW_S = 0.064  # the same time resolution at any sample rate (rounded to a power of two)
_LOG_FLOOR = 1e-6  # keeps log finite on digital silence


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a (N, D)`` and ``b (M, D)``.

    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2))``, in float64. The last
    trace is computed as the sum of square roots of the eigenvalues of
    ``C_a^(1/2) C_b C_a^(1/2)``, which is symmetric positive semi-definite and has the same
    eigenvalues as ``C_a C_b``; unlike a general ``sqrtm`` this stays real and stable when the
    covariances are singular (fewer samples than dimensions). Needs at least two rows per set.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) features, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a covariance needs at least two samples per set")
    cov_a = np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])
    cov_b = np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1])
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    mean_term = np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
    distance = mean_term + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    # Rounding can leave identical sets a hair below zero; a distance is never negative.
    return float(max(distance, 0.0))


def kernel_distance(a: np.ndarray, b: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased squared MMD with the polynomial kernel ``k(x, y) = (x.y / D + coef0) ** degree``.

    The kernel of KID (Binkowski et al. 2018) and of KVD (Unterthiner et al. 2018), in float64.
    Unlike the Fréchet distance this estimator has no bias from the sample count, so it can be
    compared across set sizes; being unbiased, it can come out slightly negative when the two
    sets come from one distribution. Published KID averages it over random subsets of 1000 to
    bound the cost; with fewer samples than that, one subset is the whole set and the value is
    the same estimator. Needs at least two rows per set.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) features, got {a.shape} and {b.shape}")
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError("the unbiased estimate needs at least two samples per set")
    dim = a.shape[1]
    k_aa = (a @ a.T / dim + coef0) ** degree
    k_bb = (b @ b.T / dim + coef0) ** degree
    k_ab = (a @ b.T / dim + coef0) ** degree
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def logmel_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-band mean and standard deviation over time of a 64-band log-mel spectrogram, ``(128,)``.

    ``audio`` is a float waveform ``(S,)`` (``(C, S)`` is averaged over channels). The window
    is the power of two nearest to 64 ms (1024 samples at 16 kHz) with a quarter-window hop,
    and the bands span 0 .. sample_rate / 2 (HTK mel), so compare embeddings computed at one
    sample rate. Natural log of power: a gain of g shifts every band mean by 2 ln g, as long as
    the band is well above the 1e-6 floor.
    """
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=0)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"audio must be a non-empty (S,) or (C, S) array, got {np.shape(audio)}")
    n_fft = 1 << round(np.log2(_WINDOW_S * sample_rate))
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=n_fft // 4,
        n_mels=_N_MELS,
        pad_mode="constant",  # reflection needs more samples than half a window
    )(torch.from_numpy(wave)).double()
    log_mel = torch.log(mel + _LOG_FLOOR)
    mean = log_mel.mean(dim=1)
    std = log_mel.std(dim=1, correction=0)  # one frame is a valid (if short) clip: std 0
    return torch.cat([mean, std]).numpy()


def frames_embedding(frames: np.ndarray) -> np.ndarray:
    """Appearance and motion statistics of a clip, ``(256,)``.

    ``frames`` is uint8 RGB ``(T, H, W, 3)``. Each frame is area-resized to 16x16 and scaled to
    [0, 1]; the vector is the mean frame pooled to 8x8x3 (192 values: what is where, in which
    colour) followed by the mean absolute difference between consecutive grey frames pooled to
    8x8 (64 values: where things move, and how much). Differences are taken at 16x16 so that
    small moving objects are not averaged away before they are differenced. A single frame has
    zero motion.
    """
    video = np.ascontiguousarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3 or len(video) == 0 or video.dtype != np.uint8:
        raise ValueError(
            f"frames must be non-empty uint8 (T, H, W, 3), got {video.dtype} {video.shape}"
        )
    small = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in video])
    small = small.astype(np.float64) / 255.0
    appearance = _pool2(small.mean(axis=0))
    gray = small @ np.array([0.299, 0.587, 0.114])
    motion = np.abs(np.diff(gray, axis=0)).sum(axis=0) / max(len(gray) - 1, 1)
    return np.concatenate([appearance.reshape(-1), _pool2(motion).reshape(-1)])


def _pool2(image: np.ndarray) -> np.ndarray:
    """2x2 average pooling of an (H, W, ...) array with even H and W."""
    h, w = image.shape[:2]
    return image.reshape(h // 2, 2, w // 2, 2, *image.shape[2:]).mean(axis=(1, 3))

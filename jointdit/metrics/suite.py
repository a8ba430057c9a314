"""The evaluation suite: per-sample scores, set distances, and one row per system.

A *system* is a list of clips (``Media``: uint8 frames ``(T, H, W, 3)`` and a mono waveform
``(S,)``) — a model with a guidance, or real data — and its row holds the mean of the
per-sample scores plus the distances of its feature sets to one reference set of real clips.
Every set distance is reported with the number of feature vectors it was computed from:
Fréchet distances are biased by that count and only compare at equal counts.

Metric names say what they are. ``fad`` / ``fvd`` / ``kvd`` / ``desync`` exist only when the
VGGish / I3D / Synchformer weights were given; the parameter-free ``*_logmel`` / ``*_frames``
distances always exist and are not comparable with published numbers; ``av_align`` is AV-Align
as published, ``av_align_fine`` the project's variant, not comparable with published numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jointdit.encoders.clip import CLIPEncoder
from jointdit.metrics.desync import DeSyncScorer
from jointdit.metrics.fidelity import psnr, ssim
from jointdit.metrics.frechet import (
    frames_embedding,
    frechet_distance,
    kernel_distance,
    logmel_embedding,
)
from jointdit.metrics.i3d import I3DEmbedder
from jointdit.metrics.oracle import objects_kept, oracle_sync
from jointdit.metrics.sync import (
    audio_onsets,
    audio_onsets_fine,
    event_iou,
    event_iou_fine,
    video_peaks,
    video_peaks_fine,
)
from jointdit.metrics.vggish import VGGishEmbedder

Media = tuple[np.ndarray, np.ndarray]

# feature set -> (Fréchet name, kernel name)
DISTANCES = {
    "logmel": ("fd_logmel", "kd_logmel"),
    "frames": ("fd_frames", "kd_frames"),
    "vggish": ("fad", "kd_vggish"),
    "i3d": ("fvd", "kvd"),
}

SEM_KEYS = ("av_align", "av_align_fine", "oracle_f1", "objects_kept", "onsets", "desync")


@dataclass
class Embedders:
    """The pretrained networks available; a missing one drops its metrics, never fakes them."""

    vggish: VGGishEmbedder | None = None
    i3d: I3DEmbedder | None = None
    clip: CLIPEncoder | None = None
    synchformer: DeSyncScorer | None = None


@dataclass
class Events:
    """What AV-Align (as published) saw in one clip, kept for the contact sheets."""

    onsets: np.ndarray  # audio onset times (s)
    peaks: np.ndarray  # video motion peak times (s)


def sample_scores(
    media: Media, fps: float, sample_rate: int, image: np.ndarray | None, oracle: bool
) -> tuple[dict[str, float], Events]:
    """Sync (AV-Align, its fine variant; the tracking oracle when asked) and first-frame
    fidelity of one clip, with the event counts behind each AV-Align score.

    ``image`` is the conditioning image (uint8, the frames' size); None for real clips, whose
    first frame *is* the image.
    """
    frames, audio = media
    onsets, peaks = audio_onsets(audio, sample_rate), video_peaks(frames, fps)
    onsets_fine, peaks_fine = audio_onsets_fine(audio, sample_rate), video_peaks_fine(frames, fps)
    row = {
        "av_align": event_iou(onsets, peaks, fps),
        "onsets": float(len(onsets)),
        "peaks": float(len(peaks)),
        "av_align_fine": event_iou_fine(onsets_fine, peaks_fine, fps),
        "onsets_fine": float(len(onsets_fine)),
        "peaks_fine": float(len(peaks_fine)),
    }
    if oracle:
        row.update(
            {f"oracle_{k}": v for k, v in oracle_sync(frames, fps, audio, sample_rate).items()}
        )
        row["objects_kept"] = objects_kept(frames)
    if image is not None:
        row["psnr"] = psnr(frames[0], image)
        row["ssim"] = ssim(frames[0], image)
    return row, Events(onsets, peaks)


def set_features(
    media: list[Media], sample_rate: int, embedders: Embedders
) -> dict[str, np.ndarray]:
    """Feature sets of a system: one row per clip, or per 0.96 s example for VGGish."""
    features = {
        "logmel": np.stack([logmel_embedding(a, sample_rate) for _, a in media]),
        "frames": np.stack([frames_embedding(f) for f, _ in media]),
    }
    if embedders.vggish is not None:
        features["vggish"] = np.concatenate(
            [embedders.vggish.embed(a, sample_rate) for _, a in media]
        )
    if embedders.i3d is not None:
        features["i3d"] = embedders.i3d.embed([f for f, _ in media])
    return features


def set_distances(
    features: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, float]:
    """Fréchet and kernel distances of each feature set to the reference, with their counts."""
    out: dict[str, float] = {}
    for key, (fd_name, kd_name) in DISTANCES.items():
        if key not in features:
            continue
        out[fd_name] = frechet_distance(features[key], reference[key])
        out[kd_name] = kernel_distance(features[key], reference[key])
        out[f"n_{key}"] = float(len(features[key]))
    return out


def clip_similarity(
    encoder: CLIPEncoder, frames: list[np.ndarray], images: list[np.ndarray]
) -> np.ndarray:
    """Cosine similarity of CLIP embeddings of generated first frames and their images."""
    return np.sum(encoder.encode_images(frames) * encoder.encode_images(images), axis=1)


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each per-sample score over a system's clips (infinite PSNRs left out; all of them
    infinite, the mean is infinite).

    The sync scores also get their standard error (``*_sem``): with a dozen clips a difference
    of a few hundredths between two systems is often within it.
    """
    out = {}
    for key in rows[0]:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if len(finite):
            out[key] = float(finite.mean())
        else:  # every first frame an exact copy: PSNR's limit, not a missing value
            out[key] = math.inf if len(values) and np.all(values == math.inf) else math.nan
        if key in SEM_KEYS:
            spread = finite.std(ddof=1) if len(finite) > 1 else np.nan
            out[f"{key}_sem"] = float(spread / np.sqrt(len(finite)))
    out["n_samples"] = float(len(rows))
    return out

"""A generated clip as the bytes of an MP4 file, for answers sent over a network."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from jointdit.data.media import display_scale, write_clip


def mp4_bytes(frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> bytes:
    """H.264 (yuv420p) + AAC in a fast-start MP4, what browsers play: `write_clip`'s file,
    enlarged by whole pixels to at least `display_scale`'s size.

    ``frames`` uint8 (T, H, W, 3); ``audio`` float (S,) mono or (channels, S).
    """
    audio = np.asarray(audio, dtype=np.float32)
    # Through a file: fast start rewrites the finished file to put its index first, which
    # FFmpeg's muxer does by reopening the output by name, so a memory buffer cannot hold it.
    with tempfile.TemporaryDirectory(prefix="jointdit-mp4-") as tmp:
        path = Path(tmp) / "clip.mp4"
        sound = audio[None] if audio.ndim == 1 else audio
        write_clip(path, frames, fps, sound, sample_rate, display_scale(*frames.shape[1:3]))
        return path.read_bytes()

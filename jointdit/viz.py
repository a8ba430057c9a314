"""Pictures people would rather look at than read: sample sheets and loss curves (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt
import numpy as np
import torch
import torchaudio


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int = 64) -> np.ndarray:
    """A display spectrogram (n_mels, frames) in dB, independent of any codec."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate, n_fft=1024, hop_length=sample_rate // 100, n_mels=n_mels
    )(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
    return (10 * torch.log10(mel + 1e-10)).numpy()


_EVENT_STYLES = (
    {"color": "white", "ls": "-"},
    {"color": "red", "ls": "--"},
    {"color": "lime", "ls": ":"},
)


def sample_sheet(
    frames: np.ndarray,
    spectrogram: np.ndarray,
    duration_s: float,
    path: Path,
    title: str = "",
    max_frames: int = 8,
    events: dict[str, np.ndarray] | None = None,
) -> None:
    """A strip of frames (T, H, W, 3) above a spectrogram (F, L) spanning duration_s.

    ``events`` maps a label to times in seconds, drawn as vertical lines on the spectrogram
    (e.g. the audio onsets and video motion peaks a sync metric matched).
    """
    picks = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    fig = plt.figure(figsize=(1.4 * len(picks), 3.6))
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1, 1.2])
    for i, k in enumerate(picks):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(frames[k], interpolation="nearest")
        ax.set_title(f"{k}", fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(
        spectrogram, origin="lower", aspect="auto", extent=(0, duration_s, 0, len(spectrogram))
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel bin")
    for (label, times), style in zip((events or {}).items(), _EVENT_STYLES, strict=False):
        for k, t in enumerate(times):
            ax.axvline(t, label=label if k == 0 else None, lw=1.2, **style)
    if events:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_curve(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Train loss per step and validation loss where evaluated."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_loss"] for h in history], lw=0.8, alpha=0.7, label="train")
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("flow loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def system_bars(table: dict[str, dict[str, float]], metrics: list[str], path: Path) -> None:
    """One horizontal bar panel per metric, one bar per system (NaN / missing bars left out)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.4 * len(table) + 1))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        names = [s for s in table if np.isfinite(table[s].get(metric, np.nan))]
        ax.barh(names, [table[s][metric] for s in names], color="tab:blue")
        ax.set_title(metric, fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""AV-Align beside the published implementation, and how well each sync metric separates
aligned from shifted audio.

The default synthetic clips (``data.synthetic`` defaults: 32x32, 8 fps, 2 s, 16 kHz) are written
as MP4 as ``fetch`` writes them and read back as ``evaluate`` reads them. On each clip, with its
own audio and with that audio delayed by 0.5 s:

- ``av_align`` against the published code on the same decoded frames and waveform: its
  ``detect_audio_peaks`` on a float WAV of the waveform, ``detect_video_peaks`` on the frames in
  BGR, ``calc_intersection_over_union``; and end to end on files, with OpenCV decoding the MP4;
- the separation (aligned minus shifted, mean +- standard error over clips) of ``av_align``,
  the reference, ``av_align_fine`` and ``oracle_f1``.

The published code is not part of this project: point at a copy of TempoTokens' ``av_align.py``
(github.com/guyyariv/TempoTokens); it needs librosa and OpenCV, which the project has.

    python benchmarks/sync_agreement.py --reference /path/to/TempoTokens/av_align.py [--clips 48]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import soundfile

from jointdit.data.media import read_clip
from jointdit.data.sources import fetch_synthetic
from jointdit.data.synthetic import SyntheticConfig
from jointdit.metrics.oracle import oracle_sync
from jointdit.metrics.sync import av_align, av_align_fine

SHIFT_S = 0.5


def load_reference(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("published_av_align", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_score(
    ref: ModuleType, frames_bgr: list[np.ndarray], fps: float, audio: np.ndarray, sr: int, wav: Path
) -> float:
    soundfile.write(wav, audio, sr, subtype="FLOAT")
    _, peaks = ref.detect_video_peaks(frames_bgr, fps)
    onsets = ref.detect_audio_peaks(str(wav))
    if len(onsets) + len(peaks) == 0:
        return 0.0  # the published code divides by zero; ours scores 0
    return ref.calc_intersection_over_union(onsets, peaks, fps)


def delayed(audio: np.ndarray, sr: int) -> np.ndarray:
    shift = round(SHIFT_S * sr)
    return np.concatenate([np.zeros(shift, audio.dtype), audio[:-shift]])


def mean_sem(values: np.ndarray) -> str:
    return f"{values.mean():+.3f} +- {values.std(ddof=1) / np.sqrt(len(values)):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", type=Path, required=True, help="TempoTokens av_align.py")
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args()
    ref = load_reference(args.reference)
    cfg = SyntheticConfig(num_clips=args.clips)
    fps, sr = cfg.fps, cfg.sample_rate

    scores: dict[str, list[list[float]]] = {
        k: [[], []] for k in ("av_align", "reference", "av_align_fine", "oracle_f1")
    }
    files_ours, files_ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = fetch_synthetic(cfg, root / "raw")
        wav = root / "audio.wav"
        for path in manifest["path"]:
            clip = read_clip(root / "raw" / path, fps, cfg.width, cfg.height, sr, cfg.duration_s)
            bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in clip.frames]
            for k, audio in enumerate((clip.audio, delayed(clip.audio, sr))):
                scores["av_align"][k].append(av_align(clip.frames, fps, audio, sr))
                scores["reference"][k].append(reference_score(ref, bgr, fps, audio, sr, wav))
                scores["av_align_fine"][k].append(av_align_fine(clip.frames, fps, audio, sr))
                scores["oracle_f1"][k].append(oracle_sync(clip.frames, fps, audio, sr)["f1"])
            # The published pipeline from files: OpenCV decodes the MP4 (and reads its rate).
            decoded, file_fps = ref.extract_frames(str(root / "raw" / path))
            files_ref.append(reference_score(ref, decoded, file_fps, clip.audio, sr, wav))
            files_ours.append(scores["av_align"][0][-1])

    ours, theirs = (np.array(scores[k]) for k in ("av_align", "reference"))
    gap = np.abs(ours - theirs)
    print(f"{args.clips} default synthetic clips, aligned and delayed by {SHIFT_S} s")
    print(
        f"av_align vs published, same frames and waveform: mean |diff| {gap.mean():.4f}, "
        f"max {gap.max():.4f}, equal on {int((gap == 0).sum())} of {gap.size}; "
        f"means {ours.mean():.3f} vs {theirs.mean():.3f}"
    )
    file_gap = np.abs(np.array(files_ours) - np.array(files_ref))
    print(
        f"av_align vs published end to end (OpenCV decoding the MP4), aligned clips: mean |diff| "
        f"{file_gap.mean():.4f}, max {file_gap.max():.4f}, equal on "
        f"{int((file_gap == 0).sum())} of {file_gap.size}"
    )
    print("\n| metric | aligned | delayed 0.5 s | aligned - delayed (mean +- sem) |")
    print("|---|---:|---:|---:|")
    for name, (aligned, shifted) in scores.items():
        a, s = np.array(aligned), np.array(shifted)
        print(f"| {name} | {a.mean():.3f} | {s.mean():.3f} | {mean_sem(a - s)} |")


if __name__ == "__main__":
    main()

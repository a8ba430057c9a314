"""What spreading a clip's windows over its whole length costs to decode.

For a long clip (default: the Big Buck Bunny film `jointdit footage` downloads, or any file),
`plan_windows` spreads `--windows` windows over it; in one run this prints:
- the seeking reader: `read_windows` of those windows (a seek per far window), with the video
  frames and seconds of audio it decoded (`DecodeCost`) and its wall time;
- the baseline: one front-to-back pass over the file up to the end of the last window, PyAV
  decoding every video and audio frame and nothing else (no conversion, no resizing): what
  reading the same windows without seeking costs at the least.

    python benchmarks/window_cost.py [--clip PATH] [--windows 16] [--window-s 2] [--hop-s 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import av
import torch

from jointdit.data.media import DecodeCost, probe, read_windows
from jointdit.data.windows import ClipSpec, plan_windows


def front_to_back(path: Path, until_s: float) -> tuple[int, float, float]:
    """(video frames, audio seconds, wall seconds) of decoding everything up to `until_s`."""
    start = time.perf_counter()
    frames, audio_s, origin = 0, 0.0, None
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                if packet.stream is video:
                    origin = frame.time if origin is None else origin
                    frames += 1
                    if frame.time - origin > until_s:
                        return frames, audio_s, time.perf_counter() - start
                else:
                    audio_s += frame.samples / frame.sample_rate
    return frames, audio_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", type=Path, default=Path("data/footage/bbb/bbb_part01.mp4"))
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--hop-s", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = probe(args.clip)
    starts = plan_windows(info.duration_s, args.window_s, args.hop_s, args.windows)
    cost = DecodeCost()
    began = time.perf_counter()
    read_windows(
        args.clip,
        starts,
        ClipSpec(args.window_s, fps=8.0, width=32, height=32, sample_rate=16000),
        cost,
    )
    seeking_s = time.perf_counter() - began
    frames, audio_s, baseline_s = front_to_back(args.clip, starts[-1] + args.window_s)
    print(
        f"{args.clip}: {info.duration_s:.0f} s, {info.width}x{info.height} at {info.fps:g} fps; "
        f"{len(starts)} windows of {args.window_s} s from {starts[0]:.0f} s to {starts[-1]:.0f} s"
        f" ({len(set(cost.passes_from_s))} passes, {cost.seeks} seeks)\n"
    )
    print("| reader | video frames decoded | audio s decoded | wall s |")
    print("|---|---:|---:|---:|")
    print(f"| seeking | {cost.video_frames} | {cost.audio_s:.0f} | {seeking_s:.1f} |")
    print(f"| baseline: front to back, decode only | {frames} | {audio_s:.0f} | {baseline_s:.1f} |")
    print(f"\nthe seeking reader decodes {cost.video_frames / frames:.1%} of the baseline's frames")


if __name__ == "__main__":
    main()

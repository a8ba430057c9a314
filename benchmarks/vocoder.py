"""HiFi-GAN against Griffin-Lim on real sound: Big Buck Bunny's soundtrack.

Takes one window of `--seconds` from the middle of each clip of a footage folder (`jointdit
footage`: ten minutes of the film, its trailer, a 5.1 clip), mono at 22.05 kHz, and sends each
through the `hifigan` codec twice: decoded by the universal HiFi-GAN, and by Griffin-Lim on the
same mel (`vocoder: griffin-lim`, the baseline, in the same run). Prints, averaged over the
windows, how far the result is from the original:
- log-mel distance (dB): the mel the decoder was given against the mel of what it made;
- log-spectral distance (dB) at two other STFT resolutions, against the original sound;
- seconds of computation per second of sound (1 thread).

    python benchmarks/vocoder.py [--footage data/footage/bbb] [--seconds 2] [--iters 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from jointdit.codecs.hifigan import HiFiGANAudioCodec, HiFiGANCodecConfig
from jointdit.data.media import probe, read_windows
from jointdit.data.windows import ClipSpec
from jointdit.metrics.spectral import log_mel_distance, log_spectral_distance

RATE = 22050


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--footage", type=Path, default=Path("data/footage/bbb"))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clips = sorted(p for p in args.footage.glob("*.mp4"))
    if not clips:
        raise SystemExit(f"{args.footage}: no clips; run `jointdit footage {args.footage}` first")
    waves = []
    for clip in clips:
        middle = max(0.0, probe(clip).duration_s / 2 - args.seconds / 2)
        window = read_windows(
            clip, [middle], ClipSpec(args.seconds, fps=8.0, width=16, height=16, sample_rate=RATE)
        )[0]
        waves.append(window.audio)
    rows = {}
    for vocoder in ("griffin-lim", "hifigan"):
        codec = HiFiGANAudioCodec(
            HiFiGANCodecConfig(vocoder=vocoder, griffin_lim_iters=args.iters), RATE
        )
        torch.manual_seed(0)  # Griffin-Lim starts from random phases
        scores, seconds = [], 0.0
        for wave in waves:
            latents = codec.encode_audio(wave)
            start = time.perf_counter()
            back = codec.decode_audio(latents)
            seconds += time.perf_counter() - start
            mels = [codec.mel(torch.from_numpy(x)) for x in (wave, back)]
            scores.append(
                (
                    log_mel_distance(*mels),
                    log_spectral_distance(wave, back, 512, 128),
                    log_spectral_distance(wave, back, 2048, 512),
                )
            )
        rows[vocoder] = (*np.mean(scores, axis=0), seconds / (len(waves) * args.seconds))
    print(
        f"{len(waves)} windows of {args.seconds} s from {args.footage} "
        f"(Griffin-Lim: {args.iters} iterations; 1 thread)\n"
    )
    print("| decoder | log-mel distance dB | LSD 512/128 dB | LSD 2048/512 dB | s per s of sound |")
    print("|---|---:|---:|---:|---:|")
    for name, (mel, lsd_fine, lsd_coarse, cost) in rows.items():
        print(f"| {name} | {mel:.2f} | {lsd_fine:.2f} | {lsd_coarse:.2f} | {cost:.2f} |")


if __name__ == "__main__":
    main()

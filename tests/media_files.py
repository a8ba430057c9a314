"""Test media in any container and codec FFmpeg writes, made with PyAV (no files checked in).

`media.write_clip` only writes H.264 + AAC in a fast-start MP4; a user's folder holds AVIs from
FFmpeg, DVD and camcorder streams, Flash and Windows Media files, phone 3GPs, songs with cover
art, pictures and notes. `write` makes any of them from a moving square and a tone (or clicks).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Fast settings: the encoders' defaults would make the tests slow, not more telling.
VIDEO_OPTIONS = {
    "libx264": {"preset": "ultrafast"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8"},
}
# Codecs that only take some picture formats.
PIXEL_FORMATS = {"gif": "rgb8", "png": "rgb24", "mjpeg": "yuvj420p", "prores": "yuv422p10le"}


def picture(k: int, width: int, height: int) -> np.ndarray:
    """RGB grey with a bright square moving right: cheap to encode at any size."""
    frame = np.full((height, width, 3), 90, np.uint8)
    side = max(height // 4, 2)
    x = (k * 2) % max(width - side, 1)
    frame[height // 4 : height // 4 + side, x : x + side] = 235
    return frame


def grey_frames(levels: np.ndarray, height: int = 32, width: int = 48) -> np.ndarray:
    """Flat frames of the given grey levels: frame identity survives lossy coding."""
    return np.broadcast_to(
        np.asarray(levels, np.uint8)[:, None, None, None], (len(levels), height, width, 3)
    ).copy()


def tone(seconds: float, rate: int, channels: int, loud_from_s: float = 0.0) -> np.ndarray:
    """A 440 Hz tone (0.3 peak: -13.5 dBFS RMS) from loud_from_s on, digital silence before."""
    t = np.arange(round(seconds * rate)) / rate
    wave = np.where(t >= loud_from_s, 0.3 * np.sin(2 * np.pi * 440 * t), 0.0)
    return np.repeat(wave[None].astype(np.float32), channels, axis=0)


def clicks(seconds: float, rate: int, times: tuple[float, ...], channels: int = 1) -> np.ndarray:
    """Silence with a 0.9 click at each of ``times``."""
    audio = np.zeros((channels, round(seconds * rate)), np.float32)
    for t in times:
        if t < seconds:
            audio[:, round(t * rate)] = 0.9
    return audio


def write(
    path: Path,
    seconds: float = 2.0,
    *,
    video: str | None = "libx264",
    audio: str | None = "aac",
    fmt: str | None = None,
    size: tuple[int, int] = (32, 32),
    fps: int = 8,
    rate: int = 16000,
    channels: int = 1,
    loud_from_s: float = 0.0,
    sound: np.ndarray | None = None,
    audio_s: float | None = None,
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a test clip; ``fmt`` names the muxer (else FFmpeg picks it by the suffix).

    The video is ``seconds`` long; the audio too, unless ``audio_s`` says otherwise, and is
    ``sound`` (channels, samples) when given, else `tone`. ``gop`` sets the key-frame interval
    in frames; ``options`` go to the muxer (the MP4 default leaves the index at the end).
    """
    width, height = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        vstream = astream = None
        if video:
            vstream = out.add_stream(video, rate=fps, options=VIDEO_OPTIONS.get(video, {}))
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = PIXEL_FORMATS.get(video, "yuv420p")
            if gop:
                vstream.codec_context.gop_size = gop
        if audio:
            astream = out.add_stream(audio, rate=rate, layout="mono" if channels == 1 else "stereo")
            astream.bit_rate = 64000  # WMA's encoder has no default
        samples = None
        if astream:
            length = seconds if audio_s is None else audio_s
            samples = tone(length, rate, channels, loud_from_s) if sound is None else sound
        audio_out = _AudioMuxer(out, astream, samples, rate) if astream else None
        frames = round(seconds * fps) if vstream else 0
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(k, width, height), format="rgb24")
            frame = frame.reformat(format=vstream.pix_fmt)
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(vstream.encode(frame))
            if audio_out:  # interleaved, as recorders and muxers write them
                audio_out.until(round((k + 1) / fps * rate))
        if vstream:
            out.mux(vstream.encode(None))
        if audio_out:
            audio_out.until(samples.shape[1])
            audio_out.finish()
    return path


class _AudioMuxer:
    """Encodes (channels, samples) float audio in the encoder's frame size and sample format,
    a piece at a time, so that it interleaves with the video."""

    def __init__(
        self,
        out: av.container.OutputContainer,
        stream: av.AudioStream,
        samples: np.ndarray,
        rate: int,
    ):
        self.out, self.stream, self.samples, self.rate = out, stream, samples, rate
        self.step = stream.codec_context.frame_size or 1024
        self.convert = av.AudioResampler(
            format=stream.codec_context.format, layout=stream.layout, rate=rate
        )
        self.written = 0

    def until(self, end: int) -> None:
        """Encode whole encoder frames up to sample `end` (the rest, at the end)."""
        end = min(end, self.samples.shape[1])
        while self.written < end and (
            self.written + self.step <= end or end == self.samples.shape[1]
        ):
            chunk = np.ascontiguousarray(self.samples[:, self.written : self.written + self.step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.stream.layout)
            frame.sample_rate, frame.pts = self.rate, self.written
            frame.time_base = Fraction(1, self.rate)
            for converted in self.convert.resample(frame):
                self.out.mux(self.stream.encode(converted))
            self.written += chunk.shape[1]

    def finish(self) -> None:
        for converted in self.convert.resample(None):
            self.out.mux(self.stream.encode(converted))
        self.out.mux(self.stream.encode(None))


def write_song_with_cover(path: Path, seconds: float = 2.0) -> Path:
    """An MP3 with cover art: its only video stream is an attached picture."""
    with av.open(str(path), "w", format="mp3") as out:
        sound = out.add_stream("libmp3lame", rate=44100, layout="mono")
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        still = av.VideoFrame.from_ndarray(picture(0, 32, 32), format="rgb24")
        still = still.reformat(format="yuvj420p")
        still.pts = 0
        for packet in [*cover.encode(still), *cover.encode(None)]:
            out.mux(packet)
        audio = _AudioMuxer(out, sound, tone(seconds, 44100, 1), 44100)
        audio.until(audio.samples.shape[1])
        audio.finish()
    return path


def write_picture(path: Path, codec: str = "mjpeg", fmt: str = "image2") -> Path:
    """One still picture (a thumbnail, a cover)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = PIXEL_FORMATS.get(codec, "yuv420p")
        frame = av.VideoFrame.from_ndarray(picture(0, 64, 48), format="rgb24")
        frame = frame.reformat(format=stream.pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path

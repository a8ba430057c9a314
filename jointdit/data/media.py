"""Reading, writing and probing audio-video files with PyAV.

Written clips are MP4 with H.264 video and AAC audio. The H.264 encoder is the first one
PyAV's FFmpeg offers of libx264 (CRF 18, the usual "visually lossless" setting), libopenh264,
then MPEG-4 Part 2 as a last resort (not H.264, but every FFmpeg build has it); the last two
have no CRF mode and get a bit rate high enough for near-lossless output instead.

Audio-video sync: clips are aligned on the first video frame. AAC encoders prepend priming
samples; the MP4 muxer records them in the edit list and FFmpeg's demuxer and decoder drop them,
so decoded audio frames carry true presentation times and are placed by those.
"""

from __future__ import annotations

import math
import os
import uuid
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_AAC_FRAME = 1024
# Slack when comparing frame times with target times: far below any frame interval, far above
# the rounding of container time bases.
_TIME_EPS = 1e-4


class MediaError(Exception):
    """A file that cannot be used. ``code`` is machine-readable, the message names the file."""

    def __init__(self, path: Path, code: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClipInfo:
    duration_s: float
    fps: float
    width: int
    height: int
    sample_rate: int
    channels: int
    has_audio: bool


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    audio: np.ndarray  # float32 (S,) mono
    fps: float
    sample_rate: int


@contextmanager
def _open(path: Path) -> Iterator[av.container.InputContainer]:
    if path.stat().st_size == 0:
        raise MediaError(path, "empty_file", "file is empty")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(path, "unreadable", f"not a readable media container ({e})") from e
    with container:
        # An MP4 whose index (moov) is missing or cut opens without error, with no streams or
        # only a codec-less "data" stream; no_video would misdescribe it.
        if not (container.streams.video or container.streams.audio):
            raise MediaError(path, "unreadable", "no audio or video stream (truncated index?)")
        yield container


def probe(path: Path) -> ClipInfo:
    """Describe a clip, after checking that its streams are complete and their start decodes.

    The whole file is demuxed (cheap: no decoding beyond the first frames) so that a truncated
    file fails here even when its index sits at the front and the first frames are intact.
    A missing audio stream is reported as ``has_audio=False``; whether that is acceptable is the
    caller's decision.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no_video", "no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        first: dict[av.stream.Stream, av.frame.Frame] = {}
        packets, end_pts, start_pts = 0, None, None
        try:
            for packet in container.demux([s for s in (video, audio) if s is not None]):
                if packet.is_corrupt:
                    raise MediaError(path, "decode_error", _corrupt(packet))
                if packet.stream is video and packet.size and packet.pts is not None:
                    packets += 1
                    start_pts = packet.pts if start_pts is None else min(start_pts, packet.pts)
                    end = packet.pts + (packet.duration or 0)
                    end_pts = end if end_pts is None else max(end_pts, end)
                if packet.stream not in first:
                    # An empty packet at the end flushes the decoder, which yields delayed frames.
                    for frame in packet.decode():
                        first[packet.stream] = frame
                        break
        except av.FFmpegError as e:
            raise MediaError(path, "decode_error", f"cannot decode ({e})") from e
        for stream in (video, audio):
            if stream is not None and stream not in first:
                raise MediaError(path, "decode_error", f"no decodable frame in {stream.type}")
        if video.frames and packets < video.frames:
            raise MediaError(
                path, "decode_error", f"truncated: {packets} of {video.frames} video frames"
            )

        if video.duration:
            duration_s = float(video.duration * video.time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        elif end_pts is not None:
            duration_s = float((end_pts - start_pts) * video.time_base)
        else:
            raise MediaError(path, "unreadable", "no duration in metadata or timestamps")
        rate = video.average_rate or video.guessed_rate
        if not rate:
            raise MediaError(path, "unreadable", "no frame rate")
        picture = first[video]
        sound = first.get(audio)
        return ClipInfo(
            duration_s=duration_s,
            fps=float(rate),
            width=picture.width,
            height=picture.height,
            sample_rate=sound.sample_rate if sound is not None else 0,
            channels=sound.layout.nb_channels if sound is not None else 0,
            has_audio=sound is not None,
        )


def _corrupt(packet: av.Packet) -> str:
    where = f" at {float(packet.pts * packet.time_base):.3f} s" if packet.pts is not None else ""
    return f"truncated or corrupt {packet.stream.type} packet{where}"


def _video_encoder(width: int, height: int, fps: float) -> tuple[str, dict[str, str], int | None]:
    """(codec name, options, bit rate or None) of the best video encoder available."""
    # Bit rate for encoders without a constant-quality mode: ~1 bit per pixel, plenty for
    # near-lossless output at these sizes, with a floor so tiny frames are not starved.
    bit_rate = max(2_000_000, int(width * height * fps))
    for name, options, rate in (
        ("libx264", {"crf": "18", "preset": "medium"}, None),
        ("libopenh264", {}, bit_rate),
        ("mpeg4", {}, bit_rate),
    ):
        try:
            av.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name, options, rate
    raise RuntimeError("PyAV's FFmpeg has no H.264 or MPEG-4 encoder")


def _check_clip(frames: np.ndarray, fps: float, audio: np.ndarray | None, sample_rate: int) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError("frames must be a uint8 numpy array")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError("frame height and width must be even (4:2:0 chroma subsampling)")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    if audio is None:
        return
    if not isinstance(audio, np.ndarray) or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError("audio must be a floating-point numpy array")
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise ValueError(
            f"audio must have shape (channels, samples), 1 or 2 channels, got {audio.shape}"
        )
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinity")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling to write to; on success it is synced and renamed to `path`.

    The final name only ever holds a complete file; on failure the temporary file is removed
    and an earlier file under the final name is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        yield tmp
        # The data must be on disk before the rename makes it visible under the final name.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_clip(
    path: Path, frames: np.ndarray, fps: float, audio: np.ndarray | None, sample_rate: int
) -> None:
    """Write an MP4 (H.264 + AAC) atomically.

    ``frames`` is uint8 ``(T, H, W, 3)`` RGB; ``audio`` float ``(channels, samples)`` in
    ``[-1, 1]`` (values beyond are clipped) or ``None`` for a video-only file.
    """
    _check_clip(frames, fps, audio, sample_rate)
    # faststart moves the index to the front, so players and browsers (MLflow artifacts) can
    # start before the whole file has arrived. The container closes before the rename.
    options = {"movflags": "faststart"}
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4", options=options) as out:
        _encode(out, frames, fps, audio, sample_rate)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio (S,) in [-1, 1] as 16-bit PCM WAV, atomically."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).round().astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def _encode(
    container: av.container.OutputContainer,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int,
) -> None:
    _, height, width, _ = frames.shape
    codec, options, bit_rate = _video_encoder(width, height, fps)
    rate = Fraction(fps).limit_denominator(100_000)  # 29.97 -> 2997/100, not a 2**k fraction
    video = container.add_stream(codec, rate=rate, options=options)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    # One encoder thread: with frame threads, x264's bytes depended on timing (26 of 48
    # synthetic clips differed between two runs; about 1 write in 30 still does), and tiny
    # clips gain nothing from threads.
    video.codec_context.thread_count = 1
    video.codec_context.thread_type = "NONE"
    if bit_rate is not None:
        video.bit_rate = bit_rate
    sound = None
    if audio is not None:
        layout = "mono" if audio.shape[0] == 1 else "stereo"
        sound = container.add_stream("aac", rate=sample_rate, layout=layout)
        # AAC's ceiling is 6144 bits per channel per 1024-sample frame.
        sound.bit_rate = audio.shape[0] * min(128_000, 6 * sample_rate)
        audio = np.clip(audio, -1.0, 1.0).astype(np.float32)

    written = 0  # audio samples handed to the encoder so far
    for k, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = k
        frame.time_base = 1 / rate
        container.mux(video.encode(frame))
        if sound is not None:
            # Interleave: feed audio up to the end of this frame, keeping the muxer's queue short.
            until = audio.shape[1] if k == len(frames) - 1 else round((k + 1) / fps * sample_rate)
            for start in range(written, until, _AAC_FRAME):
                chunk = np.ascontiguousarray(audio[:, start : min(start + _AAC_FRAME, until)])
                piece = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=sound.layout)
                piece.sample_rate = sample_rate
                piece.pts = start
                piece.time_base = Fraction(1, sample_rate)
                container.mux(sound.encode(piece))
            written = until
    container.mux(video.encode(None))
    if sound is not None:
        container.mux(sound.encode(None))


class _FramePicker:
    """Keeps, for each target time, the last frame shown at or before it."""

    def __init__(self, targets: np.ndarray, width: int, height: int):
        self.targets = targets
        self.width, self.height = width, height
        self.picked: list[np.ndarray] = []
        self.origin: float | None = None  # time of the first frame: the clip's zero
        self._last: av.VideoFrame | None = None
        self._last_rgb: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return len(self.picked) == len(self.targets)

    def add(self, frame: av.VideoFrame) -> None:
        if self.origin is None:
            self.origin = frame.time
        # Target times before this frame are covered by the previous one. Target 0 is never
        # before the first frame, because the first frame defines time 0.
        while (
            not self.done and self.targets[len(self.picked)] + _TIME_EPS < frame.time - self.origin
        ):
            self.picked.append(self._last_as_rgb())
        self._last, self._last_rgb = frame, None

    def finish(self) -> np.ndarray:
        """The picked frames; a short file is padded by repeating its last frame."""
        while not self.done:
            self.picked.append(self._last_as_rgb())
        return np.stack(self.picked)

    def _last_as_rgb(self) -> np.ndarray:
        if self._last_rgb is None:
            # AREA averages when shrinking, where bilinear would alias.
            self._last_rgb = self._last.to_ndarray(
                width=self.width, height=self.height, format="rgb24", interpolation="AREA"
            )
        return self._last_rgb


class _AudioCollector:
    """Resamples and downmixes the decoded audio, remembering when it starts."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.start: float | None = None
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        # Keep the source layout and average the channels here: FFmpeg's own stereo -> mono
        # downmix is (L + R) / sqrt(2), which lifts correlated content by 3 dB, past 1.0.
        self._resampler = av.AudioResampler(format="fltp", rate=sample_rate)

    def add(self, frame: av.AudioFrame | None) -> None:
        """Add a decoded frame; ``None`` flushes the resampler."""
        if frame is not None and self.start is None:
            self.start = frame.time
        for out in self._resampler.resample(frame):
            self.chunks.append(out.to_ndarray().mean(axis=0))
            self.samples += out.samples

    def covers(self, until: float) -> bool:
        return self.start is not None and self.start + self.samples / self.sample_rate >= until

    def finish(self, origin: float, n_samples: int) -> np.ndarray:
        """Exactly ``n_samples`` samples from time ``origin`` on, silence where there is none.

        The decoded audio is taken as continuous from its first timestamp on.
        """
        self.add(None)
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        offset = round((self.start - origin) * self.sample_rate)
        if offset >= 0:
            samples = np.concatenate([np.zeros(offset, np.float32), samples])
        else:
            samples = samples[-offset:]
        out = np.zeros(n_samples, np.float32)
        out[: min(n_samples, len(samples))] = samples[:n_samples]
        return out


def read_clip(
    path: Path, fps: float, width: int, height: int, sample_rate: int, duration_s: float
) -> Clip:
    """Decode ``duration_s`` seconds from the start of a file at a fixed frame and sample rate.

    Frame ``k`` is the last decoded frame shown at or before ``k / fps`` (timestamps, not frame
    counts, so variable frame rates and dropped frames come out right), resized to
    ``width x height``. Audio is mono at ``sample_rate``, exactly ``round(duration_s *
    sample_rate)`` samples, aligned to the first video frame: audio that starts late is
    preceded by silence, audio that starts early is cut.
    """
    path = Path(path)
    if min(fps, duration_s, width, height, sample_rate) <= 0 or round(duration_s * fps) < 1:
        raise ValueError("need width, height, sample_rate > 0 and at least one frame")
    picker = _FramePicker(np.arange(round(duration_s * fps)) / fps, width, height)
    collector = _AudioCollector(sample_rate)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no_video", "no video stream")
        if not container.streams.audio:
            raise MediaError(path, "no_audio", "no audio stream")
        video, audio = container.streams.video[0], container.streams.audio[0]
        try:
            for packet in container.demux(video, audio):
                if packet.is_corrupt:
                    raise MediaError(path, "decode_error", _corrupt(packet))
                for frame in packet.decode():
                    if frame.time is None:
                        raise MediaError(
                            path, "decode_error", f"{packet.stream.type} frame without a timestamp"
                        )
                    if packet.stream is video:
                        picker.add(frame)
                    else:
                        collector.add(frame)
                if picker.done and collector.covers(picker.origin + duration_s):
                    break
        except av.FFmpegError as e:
            raise MediaError(path, "decode_error", f"cannot decode ({e})") from e
    if picker.origin is None:
        raise MediaError(path, "decode_error", "no decodable video frame")
    if collector.start is None:
        raise MediaError(path, "decode_error", "no decodable audio frame")
    return Clip(
        frames=picker.finish(),
        audio=collector.finish(picker.origin, round(duration_s * sample_rate)),
        fps=fps,
        sample_rate=sample_rate,
    )

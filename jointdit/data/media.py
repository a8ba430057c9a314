"""Reading, writing and probing audio-video files with PyAV.

Written clips are MP4 with H.264 video and AAC audio. The H.264 encoder is the first one
PyAV's FFmpeg offers of libx264 (CRF 18, the usual "visually lossless" setting), libopenh264,
then MPEG-4 Part 2 as a last resort (not H.264, but every FFmpeg build has it); the last two
have no CRF mode and get a bit rate high enough for near-lossless output instead.

Audio-video sync: time 0 of a clip is its first video frame, and audio is placed by its
stream's timestamps from there (an audio track that starts 0.5 s late gets 0.5 s of silence).
AAC encoders prepend priming samples; the MP4 muxer records them in the edit list and FFmpeg's
demuxer and decoder drop them, so decoded audio frames carry true presentation times.

What is a clip is decided by content, never by the file's name: FFmpeg must recognise the
container, and it must hold a moving picture (a still image, text, or a song's cover art is not
one). Probing demuxes the whole file and takes its length from the packets' timestamps:
container headers are not ground truth (an MPEG program stream may state 0.02 s for a 2 s clip,
an AVI from FFmpeg counts one frame more than it stores).

Reading (`read_windows`) cuts any number of fixed-length windows out of a file: windows close
together come out of one pass, holding only what the pending windows need, and a window far
from the previous one is reached by a seek, so what a file costs to decode depends on its
windows, not on its length.
"""

from __future__ import annotations

import math
import wave
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from jointdit.atomic import atomic_path
from jointdit.data.windows import ClipSpec

if TYPE_CHECKING:
    import torchaudio

_AAC_FRAME = 1024
# Slack when comparing frame times with target times: far below any frame interval, far above
# the rounding of container time bases.
_TIME_EPS = 1e-4
# A video whose packets end this much (or two frame intervals, if more) before its header says
# is truncated: headers round, count an empty packet or an edit list's trim, but a cut-off
# download loses far more.
_TRUNCATION_SLACK_S = 0.5
# Demuxers of one picture (image2, and the `*_pipe` ones: png_pipe, jpeg_pipe, ...) or of text.
_PICTURE_FORMATS = ("image2",)
_TEXT_FORMATS = ("tty",)
# Windows starting within this of the previous window's end are decoded in the same pass; a
# farther one is reached by a seek. About a key-frame interval: a seek decodes from the key
# frame before its target anyway, so reading on through a shorter gap costs no more.
_SEEK_GAP_S = 4.0
# A seek aims this far before its window: audio decoders need a few frames to settle (AAC's
# overlap, MP3's bit reservoir) and muxers interleave audio up to about half a second away
# from the video of the same time. Multiplied by 4 for each seek that still lands late.
_PREROLL_S = 1.0
_AUDIO_SETTLE_S = 0.25
# Containers read front to back, never by seeking: after a seek in an MPEG program stream
# (.mpg, .vob), FFmpeg's parser stamps frames one frame late.
_UNSEEKABLE_FORMATS = ("mpeg",)
# Audio codecs read front to back too: after a seek, FFmpeg's Opus decoder restarts without the
# stream's pre-skip, so its samples come out shifted against a pass from the start.
_UNSEEKABLE_AUDIO = ("opus",)
# How far torchaudio's default resampling kernel (lowpass_filter_width 6, rolloff 0.99) reaches
# from an output sample, in input samples when upsampling (times the ratio when downsampling):
# 6 / 0.99, rounded up with room to spare.
_RESAMPLE_REACH = 8


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


@dataclass
class DecodeCost:
    """What a `read_windows` call decoded, summed over its passes (pass one to see the cost)."""

    video_frames: int = 0
    audio_s: float = 0.0
    seeks: int = 0
    passes_from_s: list[float] = field(default_factory=list)  # where each pass aimed (clip time)


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The first video stream that moves: a song's cover art is a video stream too."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


@contextmanager
def _open(path: Path) -> Iterator[av.container.InputContainer]:
    """The file as a media container with an audio or a video stream; MediaError otherwise."""
    if path.stat().st_size == 0:
        raise MediaError(path, "empty_file", "file is empty")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(path, "unreadable", f"not a media file FFmpeg can read ({e})") from e
    with container:
        name = container.format.name
        if name in _PICTURE_FORMATS or name.endswith("_pipe"):
            raise MediaError(path, "still_image", f"a still picture ({name}), not a video")
        if name in _TEXT_FORMATS:
            raise MediaError(path, "unreadable", f"text ({name}), not a media file")
        # An MP4 whose index (moov) is missing or cut opens without error, with no streams or
        # only a codec-less "data" stream; a subtitle file has only a subtitle stream.
        if not (container.streams.video or container.streams.audio):
            found = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise MediaError(
                path,
                "unreadable",
                f"no audio or video stream (streams: {found}; a truncated index?)",
            )
        yield container


def check_video_file(path: Path) -> None:
    """MediaError unless FFmpeg reads the file as a container with a moving picture.

    Opens the file and lists its streams, decoding nothing: the cheap first look that tells
    clips from stray files (notes, thumbnails, songs, subtitles) whatever their names.
    """
    path = Path(path)
    with _open(path) as container:
        if _video_stream(container) is None:
            audio = " (audio only)" if container.streams.audio else ""
            raise MediaError(path, "no_video", f"no video stream{audio}")


def probe(path: Path) -> ClipInfo:
    """Describe a clip, after checking that its streams are complete and their start decodes.

    The whole file is demuxed (cheap: no decoding beyond the first frames) so that a truncated
    file fails here even when its index sits at the front and the first frames are intact. The
    duration is measured, from the first video packet's time to the last one's end; a header
    stating a longer video (its duration, or its frame count at the frame rate) by more than
    `_TRUNCATION_SLACK_S` or two frames means the file was cut. A missing audio stream is
    reported as ``has_audio=False``; whether that is acceptable is the caller's decision.
    """
    path = Path(path)
    with _open(path) as container:
        video = _video_stream(container)
        if video is None:
            raise MediaError(path, "no_video", "no video stream")
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = video.average_rate or video.guessed_rate
        if not rate:
            raise MediaError(path, "unreadable", "no frame rate")
        # A packet without a duration (FLV, ASF) lasts one frame interval.
        interval = max(1, round(1 / (rate * video.time_base)))
        first: dict[av.stream.Stream, av.frame.Frame] = {}
        start_pts, end_pts = None, None
        try:
            for packet in container.demux([s for s in (video, audio) if s is not None]):
                if packet.is_corrupt:
                    raise MediaError(path, "decode_error", _corrupt(packet))
                if packet.stream is video and packet.size and packet.pts is not None:
                    start_pts = packet.pts if start_pts is None else min(start_pts, packet.pts)
                    end = packet.pts + (packet.duration or interval)
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
        if start_pts is None:
            raise MediaError(path, "unreadable", "no video packet with a timestamp")
        _check_complete(path, video, start_pts, end_pts, float(rate))
        picture = first[video]
        sound = first.get(audio)
        return ClipInfo(
            duration_s=float((end_pts - start_pts) * video.time_base),
            fps=float(rate),
            width=picture.width,
            height=picture.height,
            sample_rate=sound.sample_rate if sound is not None else 0,
            channels=sound.layout.nb_channels if sound is not None else 0,
            has_audio=sound is not None,
        )


def _check_complete(
    path: Path, video: av.VideoStream, start_pts: int, end_pts: int, fps: float
) -> None:
    """MediaError when the header states a video longer than its packets reach.

    Two statements are checked: the stream's duration and its frame count (an AVI's header
    keeps the count when a cut file has lost its index and FFmpeg re-estimates the duration).
    Formats without either (MPEG-TS, Ogg) estimate them from the last timestamps, so a cut file
    of those is indistinguishable from a shorter one, and is accepted as one.
    """
    base = video.time_base
    origin = float((video.start_time if video.start_time is not None else start_pts) * base)
    stated = [origin + float(video.duration * base)] if video.duration else []
    if video.frames:
        stated.append(origin + video.frames / fps)
    reached = float(end_pts * base)
    slack = max(_TRUNCATION_SLACK_S, 2 / fps)
    if stated and max(stated) - reached > slack:
        raise MediaError(
            path,
            "decode_error",
            f"truncated: its video stops at {reached - origin:.2f} s, its header says "
            f"{max(stated) - origin:.2f} s",
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
        # mbtree=0: with x264's macroblock-tree rate control the same frames gave different
        # bytes from one write to the next (and, at this quality, different pixels), so
        # re-fetching the synthetic data changed the training data; without it, equal in,
        # equal out (tests/test_media.py)
        ("libx264", {"crf": "18", "preset": "medium", "x264-params": "mbtree=0"}, None),
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


# Clips for people are written at least this tall and wide. At the default 32x32, H.264's
# 4:2:0 chroma (one colour per 2x2 pixels, what browsers play) smears a drawn frame to 28 dB;
# each pixel as a 4x4 block keeps it, at 41 dB after averaging the blocks back.
DISPLAY_MIN_SIDE = 128


def display_scale(height: int, width: int) -> int:
    """The whole factor that brings a clip's shorter side to at least ``DISPLAY_MIN_SIDE``."""
    return max(1, -(-DISPLAY_MIN_SIDE // min(height, width)))


def write_clip(
    path: Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int,
    scale: int = 1,
) -> None:
    """Write an MP4 (H.264 + AAC) atomically.

    ``frames`` is uint8 ``(T, H, W, 3)`` RGB; ``audio`` float ``(channels, samples)`` in
    ``[-1, 1]`` (values beyond are clipped) or ``None`` for a video-only file. ``scale`` > 1
    writes each pixel as a ``scale x scale`` block (see ``display_scale``): data keeps 1.
    """
    _check_clip(frames, fps, audio, sample_rate)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
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
    # synthetic clips differed between two runs), and tiny clips gain nothing from threads.
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


def fit_frame(
    frame: av.VideoFrame,
    width: int,
    height: int,
    reformatter: VideoReformatter | None = None,
) -> np.ndarray:
    """The frame as it is meant to be shown, covering ``width x height``: uint8 (H, W, 3).

    The display rotation (a phone's portrait clip is stored landscape with a display matrix
    saying so) is applied, then the picture is scaled keeping its aspect ratio until it covers
    the target and centre-cropped: squashing would change the shapes and speeds the model
    learns. Only quarter turns exist in practice; other angles are rounded to one.

    Scaling and colour conversion are one libswscale call. Pass the same ``reformatter`` for
    every frame of a stream: it keeps its scaler between calls, where a fresh one rebuilds
    the area filter's coefficients for each frame (half the cost of a small output).
    """
    turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 counts them
    shown_w, shown_h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    scale = max(width / shown_w, height / shown_h)
    w, h = max(width, round(shown_w * scale)), max(height, round(shown_h * scale))
    # Scale before turning: the turn then moves the small picture. AREA averages when
    # shrinking, where bilinear would alias. One scaler thread: PyAV's default (one per core)
    # hands each small output to a thread pool, which cost more than the scaling (2.6x the time
    # of one thread for 640x360 -> 57x32, the same pixels) and competed with the decoder's
    # frame threads.
    scaled = (reformatter or VideoReformatter()).reformat(
        frame,
        width=h if turns % 2 else w,
        height=w if turns % 2 else h,
        format="rgb24",
        interpolation="AREA",
        threads=1,
    )
    rgb = scaled.to_ndarray()
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(np.rot90(rgb, turns)[top : top + height, left : left + width])


def threaded_decode(stream: av.VideoStream) -> None:
    """Let FFmpeg decode the stream on all cores, several frames at once (frame threads), while
    Python picks and scales: the output is bit-exact whatever the thread count. PyAV's default
    is slice threads, which do nothing for the usual one-slice-per-frame H.264."""
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = 0  # one per core


class _FramePicker:
    """For each frame of each window, the last decoded frame shown at or before its time.

    Only the latest decoded frame is held, and it is converted (scaled down) only when a
    target picks it, so a 4K 60 fps source costs one decoded picture of memory.
    """

    def __init__(
        self,
        starts: Sequence[float],
        n_frames: int,
        fps: float,
        width: int,
        height: int,
        origin: float | None = None,
    ):
        times = np.asarray(starts, dtype=np.float64)[:, None] + np.arange(n_frames) / fps
        self._order = np.argsort(times, axis=None, kind="stable")  # windows may overlap
        self._times = times.ravel()[self._order]
        self._n_frames, self._width, self._height = n_frames, width, height
        self.frames = np.empty((len(starts), n_frames, height, width, 3), np.uint8)
        self._next = 0
        # Time of the clip's first frame, its zero: the first frame decoded, unless known from
        # an earlier pass (a pass after a seek never sees the first frame).
        self.origin = origin
        self._last: av.VideoFrame | None = None
        self._last_rgb: np.ndarray | None = None
        self._reformatter = VideoReformatter()

    @property
    def done(self) -> bool:
        return self._next == len(self._times)

    @property
    def empty(self) -> bool:
        return self._last is None

    @property
    def first_target(self) -> float:
        return float(self._times[0])

    def add(self, frame: av.VideoFrame) -> None:
        if self.origin is None:
            self.origin = frame.time
        # Target times before this frame are covered by the previous one. Time 0 is never
        # before the first frame, because the first frame defines time 0 (and a pass after a
        # seek starts at or before its first target: `_decode_pass` checks).
        while not self.done and self._times[self._next] + _TIME_EPS < frame.time - self.origin:
            self._pick()
        self._last, self._last_rgb = frame, None

    def finish(self) -> np.ndarray:
        """(windows, T, H, W, 3); a short file is padded by repeating its last frame."""
        while not self.done:
            self._pick()
        return self.frames

    def _pick(self) -> None:
        if self._last_rgb is None:
            self._last_rgb = fit_frame(
                self._last, self._width, self._height, self._reformatter
            )
        window, k = divmod(int(self._order[self._next]), self._n_frames)
        self.frames[window, k] = self._last_rgb
        self._next += 1


class _AudioWindows:
    """Cuts each window's audio out of the decoded stream as soon as the stream has it.

    The stream is taken as mono (channels averaged: FFmpeg's downmix, (L + R) / sqrt(2), lifts
    correlated content by 3 dB, past 1.0), continuous from its first timestamp at its native
    rate, and silent outside what was decoded. Samples are numbered from the video's time 0, so
    a pass that starts after a seek numbers them as a pass from the file's start does. A
    window's slice is resampled with torchaudio with enough context on both sides, cut on the
    resampler's block grid (anchored at time 0), that it equals resampling the whole stream and
    slicing that. Only samples a pending window needs are kept: a frame that ends before them is
    counted, never converted, and the kept ones are averaged a window's slice at a time.
    """

    def __init__(self, starts: Sequence[float], n_samples: int, sample_rate: int):
        self._starts = list(starts)
        self._n, self._rate = n_samples, sample_rate
        self.windows: list[np.ndarray] = []
        self.start: float | None = None  # time of the first decoded sample
        self._native = 0
        # Each decoded frame's channels, as views of its float planes: copied once, into the
        # windows' slices, not once per frame.
        self._chunks: deque[list[np.ndarray]] = deque()
        self._first: int | None = None  # number of the first kept sample, once time 0 is known
        self._held = 0  # samples in _chunks
        # No pending window needs a sample numbered below _keep; the next one is cut once the
        # stream reaches _due (both known once time 0 is).
        self._keep = self._due = -math.inf
        # Converts the sample format only (to float planes); the rate and layout stay.
        self._format = av.AudioResampler(format="fltp")
        self._resampler: torchaudio.transforms.Resample | None = None

    @property
    def done(self) -> bool:
        return len(self.windows) == len(self._starts)

    def add(self, frame: av.AudioFrame, origin: float | None) -> None:
        """Add a decoded frame; ``origin`` is the video's time 0, None until it is known."""
        if self.start is None:
            self.start, self._native = frame.time, frame.sample_rate
        for out in self._format.resample(frame):
            # Before every pending window (a seek's pre-roll, a gap between windows): counted.
            unneeded = self._first is not None and self._first + out.samples <= self._keep
            if unneeded and not self._chunks:
                self._first += out.samples
                continue
            self._chunks.append([np.frombuffer(p, np.float32, out.samples) for p in out.planes])
            self._held += out.samples
        if origin is not None and (self._first is None or self._first + self._held >= self._due):
            self._cut(origin, final=False)

    def finish(self, origin: float) -> list[np.ndarray]:
        """Every window's samples; the ones the stream does not reach are padded with silence."""
        self._cut(origin, final=True)
        return self.windows

    def _span(self, start_s: float) -> tuple[int, int, int]:
        """(first, end, skip): a window needs samples [first, end), and its output starts
        ``skip`` samples into their resampled version."""
        g = math.gcd(self._native, self._rate)
        block_in, block_out = self._native // g, self._rate // g  # the resampler's phase cycle
        margin = math.ceil(_RESAMPLE_REACH * max(1, self._native / self._rate) / block_in) + 1
        head = round(start_s * self._rate)  # output sample number of the window's start
        first = (head // block_out - margin) * block_in
        end = (-(-(head + self._n) // block_out) + margin) * block_in
        return first, end, head - first // block_in * block_out

    def _cut(self, origin: float, final: bool) -> None:
        if self._first is None:
            self._first = round((self.start - origin) * self._native)
        while not self.done:
            first, end, skip = self._span(self._starts[len(self.windows)])
            if end > self._first + self._held and not final:
                self._due = end
                break
            self.windows.append(self._resample(self._slice(first, end))[skip : skip + self._n])
        if self.done:
            self._keep = self._due = math.inf
        else:
            self._keep = self._span(self._starts[len(self.windows)])[0]
        while self._chunks and self._first + len(self._chunks[0][0]) <= self._keep:
            dropped = len(self._chunks.popleft()[0])
            self._first += dropped
            self._held -= dropped

    def _slice(self, first: int, end: int) -> np.ndarray:
        """Samples [first, end) in mono; silence where the stream has none."""
        out = np.zeros(end - first, np.float32)
        at, pieces = self._first, []
        for chunk in self._chunks:
            lo, hi = max(first, at), min(end, at + len(chunk[0]))
            if lo < hi:
                pieces.append([channel[lo - at : hi - at] for channel in chunk])
            at += len(chunk[0])
        if pieces:
            # One average per run of frames with the same channels, not one per frame: the
            # same numbers (a sum over channels, then a division), one call per window.
            mono = np.concatenate([_mono(list(run)) for _, run in groupby(pieces, key=len)])
            lo = max(first, self._first) - first
            out[lo : lo + len(mono)] = mono
        return out

    def _resample(self, wave: np.ndarray) -> np.ndarray:
        # imported here: fetch and validate read media but never resample, and torch would
        # double their start-up
        import torch
        import torchaudio

        if self._resampler is None:
            # The kernel depends on the two rates only: built once, not once per window. In
            # float32, as torchaudio.functional.resample builds it for float32 sound (the
            # transform's default is float64, then rounded: other last bits).
            self._resampler = torchaudio.transforms.Resample(
                self._native, self._rate, dtype=torch.float32
            )
        return self._resampler(torch.from_numpy(wave)).numpy()


def _mono(frames: list[list[np.ndarray]]) -> np.ndarray:
    """Consecutive frames with the same channels as one array: the mean of their channels."""
    channels = [np.concatenate(c) for c in zip(*frames, strict=True)]
    return np.stack(channels).mean(axis=0, dtype=np.float32)


class _SeekMissed(Exception):
    """A seek landed after what its windows need (inexact seeking, audio muxed late), or the
    audio had ended before them: the pass is redone from farther back."""


def _runs(starts: Sequence[float], duration_s: float) -> list[list[float]]:
    """The window starts in groups decoded in one pass each: a window that starts more than
    `_SEEK_GAP_S` after the end of the one before it begins a new group."""
    runs: list[list[float]] = []
    for start in starts:
        if runs and start - (runs[-1][-1] + duration_s) <= _SEEK_GAP_S:
            runs[-1].append(start)
        else:
            runs.append([start])
    return runs


def _first_frame_time(path: Path, cost: DecodeCost) -> float:
    """The time of the first decoded video frame: the clip's time 0."""
    with _open(path) as container:
        video = _video_stream(container)
        if video is None:
            raise MediaError(path, "no_video", "no video stream")
        try:
            for frame in container.decode(video):
                cost.video_frames += 1
                if frame.time is not None:
                    return frame.time
        except av.FFmpegError as e:
            raise MediaError(path, "decode_error", f"cannot decode ({e})") from e
    raise MediaError(path, "decode_error", "no decodable video frame")


def _decode_pass(
    path: Path,
    starts: Sequence[float],
    fps: float,
    size: tuple[int, int],
    sample_rate: int,
    duration_s: float,
    origin: float | None,
    seek_s: float | None,
    cost: DecodeCost,
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """(frames, audio, origin) of the windows at ``starts``, in one pass over the file: from
    its start, or from a seek to ``seek_s`` seconds of clip time (the origin must be known)."""
    width, height = size
    pictures = _FramePicker(starts, round(duration_s * fps), fps, width, height, origin)
    sound = _AudioWindows(starts, round(duration_s * sample_rate), sample_rate)
    cost.passes_from_s.append(seek_s or 0.0)
    # After a seek, the first video frame must come at or before the first target, and the
    # audio must start early enough to have settled by the first window.
    video_due = audio_due = math.inf
    keyed = seek_s is None  # a pass from the start decodes every packet
    if seek_s is not None:
        video_due = origin + pictures.first_target + _TIME_EPS
        audio_due = origin + starts[0] - _AUDIO_SETTLE_S
    with _open(path) as container:
        video = _video_stream(container)
        if video is None:
            raise MediaError(path, "no_video", "no video stream")
        if not container.streams.audio:
            raise MediaError(path, "no_audio", "no audio stream")
        audio = container.streams.audio[0]
        threaded_decode(video)
        try:
            if seek_s is not None:
                cost.seeks += 1
                container.seek(round((origin + seek_s) / video.time_base), stream=video)
            for packet in container.demux(video, audio):
                if packet.is_corrupt:
                    raise MediaError(path, "decode_error", _corrupt(packet))
                if packet.stream is video and not keyed:
                    # MPEG program streams seek by timestamp, not to key frames: what
                    # precedes the first key frame decodes to garbage.
                    if not packet.is_keyframe:
                        continue
                    keyed = True
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    # A seek may land inside a frame split over packets (MPEG program
                    # streams): a stream's packets before its first frame are skipped.
                    fresh = pictures.empty if packet.stream is video else sound.start is None
                    if seek_s is not None and fresh:
                        continue
                    raise
                for frame in frames:
                    if frame.time is None:
                        raise MediaError(
                            path, "decode_error", f"{packet.stream.type} frame without a timestamp"
                        )
                    if packet.stream is video:
                        cost.video_frames += 1
                        if pictures.empty and frame.time > video_due:
                            raise _SeekMissed
                        pictures.add(frame)
                    else:
                        cost.audio_s += frame.samples / frame.sample_rate
                        if sound.start is None and frame.time > audio_due:
                            raise _SeekMissed
                        sound.add(frame, pictures.origin)
                if pictures.done and sound.done:
                    break
        except av.FFmpegError as e:
            if seek_s is not None:
                raise _SeekMissed from e  # a format that cannot seek is read from its start
            raise MediaError(path, "decode_error", f"cannot decode ({e})") from e
    if seek_s is not None and (pictures.empty or sound.start is None):
        raise _SeekMissed
    if pictures.origin is None:
        raise MediaError(path, "decode_error", "no decodable video frame")
    if sound.start is None:
        raise MediaError(path, "decode_error", "no decodable audio frame")
    return pictures.finish(), sound.finish(pictures.origin), pictures.origin


def read_windows(
    path: Path, starts: Sequence[float], spec: ClipSpec, cost: DecodeCost | None = None
) -> list[Clip]:
    """Decode the windows ``[s, s + duration_s)`` of a file, for each ``s`` in ``starts``, at
    the rate and size of ``spec`` (its window grid is the caller's: ``starts``).

    Windows less than `_SEEK_GAP_S` apart are decoded in one pass, which stops when its last
    window is complete; a window farther on is reached by a seek to `_PREROLL_S` before it
    (farther back, and finally from the file's start, when a seek lands late). So a file costs
    about ``(duration_s + preroll + key-frame interval)`` of decoding per far window, whatever
    its length (MPEG program streams excepted: they are read front to back, up to their last
    window); ``cost``, when given, adds up what was decoded. Memory holds the windows'
    output and what the pending ones still need, never the decoded file.

    Times count from the first video frame. Frame ``k`` of the window at ``s`` is the last
    frame shown at or before ``s + k / fps`` (timestamps, not frame counts, so variable frame
    rates and dropped frames come out right), upright and scaled and cropped to ``width x
    height`` (`fit_frame`). Audio is mono at ``sample_rate``, exactly ``round(duration_s *
    sample_rate)`` samples per window, placed by the stream's timestamps: audio that starts
    late is preceded by silence. A window past the end of the file is padded with its last
    frame and silence.
    """
    path = Path(path)
    fps, duration_s, sample_rate = spec.fps, spec.duration_s, spec.sample_rate
    width, height = spec.width, spec.height
    if min(fps, duration_s, width, height, sample_rate) <= 0 or spec.frames < 1:
        raise ValueError("need width, height, sample_rate > 0 and at least one frame")
    if any(s < 0 for s in starts) or list(starts) != sorted(starts):
        raise ValueError(f"window starts must be ascending and >= 0, got {list(starts)}")
    if not starts:
        return []
    cost = DecodeCost() if cost is None else cost
    with _open(path) as container:
        seekable = container.format.name not in _UNSEEKABLE_FORMATS and not any(
            a.codec_context.name in _UNSEEKABLE_AUDIO for a in container.streams.audio[:1]
        )
    origin: float | None = None
    clips: list[Clip] = []
    pending = _runs(starts, duration_s) if seekable else [list(starts)]
    while pending:
        run = pending.pop(0)
        if origin is None and seekable and run[0] > _SEEK_GAP_S:
            origin = _first_frame_time(path, cost)
        preroll = _PREROLL_S
        while True:
            seek_s = run[0] - preroll if seekable and origin is not None else None
            seek_s = seek_s if seek_s is not None and seek_s > 0 else None
            if seek_s is None and clips:
                # Seeks missed all the way back (a badly interleaved file): one pass from the
                # start reads this window and all after it.
                run += [start for later in pending for start in later]
                pending = []
            try:
                frames, audio, origin = _decode_pass(
                    path, run, fps, (width, height), sample_rate, duration_s, origin, seek_s, cost
                )
                break
            except _SeekMissed:
                preroll *= 4
        clips += [Clip(f, a, fps, sample_rate) for f, a in zip(frames, audio, strict=True)]
    return clips


def read_clip(
    path: Path, fps: float, width: int, height: int, sample_rate: int, duration_s: float
) -> Clip:
    """The window of ``duration_s`` seconds at the start of a file (see `read_windows`)."""
    spec = ClipSpec(duration_s, fps=fps, width=width, height=height, sample_rate=sample_rate)
    return read_windows(path, [0.0], spec)[0]

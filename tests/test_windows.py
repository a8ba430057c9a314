"""Training windows: planning, one-pass and seeking decoding, alignment, normalisation and
resumable caching."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from av.video.reformatter import VideoReformatter

from jointdit.conditioning import Conditioner, ConditioningConfig
from jointdit.config import from_dict
from jointdit.data.manifest import (
    ManifestError,
    ValidatedManifest,
    WindowManifest,
    write_manifest,
)
from jointdit.data.media import (
    DecodeCost,
    _AudioWindows,
    fit_frame,
    read_clip,
    read_windows,
    write_clip,
)
from jointdit.data.shards import build_shards, load_split, shard_clips, write_shard
from jointdit.data.windows import ClipSpec, plan_windows
from tasks import cache as cache_task
from tasks.encoding import codec_from
from tasks.params import clip_spec, load_params
from tests.media_files import clicks, grey_frames, write
from tests.raw_clips import SR, make_raw, validated_row

WINDOW_16 = ClipSpec(2.0, fps=8.0, width=16, height=16, sample_rate=SR)  # 2 s, 16x16, 8 fps
CLICKS_S = (0.3, 1.25, 2.6, 3.1, 4.45, 5.7, 6.2, 7.85, 8.9, 9.6)  # gaps unlike the 1 s hop


def peaks(audio: np.ndarray, count: int, sample_rate: int = SR) -> list[float]:
    """Times of the ``count`` loudest clicks, at least 0.1 s apart."""
    energy, found = np.abs(audio).copy(), []
    for _ in range(count):
        i = int(np.argmax(energy))
        found.append(i / sample_rate)
        energy[max(0, i - sample_rate // 10) : i + sample_rate // 10] = 0
    return sorted(found)


def write_av(
    path: Path,
    frames: np.ndarray,
    times: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    audio_delay_s: float = 0.0,
    rotation: int = 0,
) -> None:
    """Frames shown at ``times`` (ms time base: any frame rate, variable too), audio starting
    ``audio_delay_s`` after the first frame, an optional display rotation; format by suffix."""
    ms = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        video = out.add_stream(video_codec, rate=30)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.time_base = ms
        if rotation:
            video.set_display_rotation(rotation)
        layout = "mono" if audio.shape[0] == 1 else "stereo"
        sound = out.add_stream(audio_codec, rate=sample_rate, layout=layout)
        for rgb, t in zip(frames, times, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), ms
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        fmt = "fltp" if sound.codec_context.format.is_planar else "flt"
        for start in range(0, audio.shape[1], 1024):
            chunk = np.ascontiguousarray(audio[:, start : start + 1024])
            if fmt == "flt":
                chunk = np.ascontiguousarray(chunk.T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start + round(audio_delay_s * sample_rate)
            frame.time_base = Fraction(1, sample_rate)
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))


# -- planning ---------------------------------------------------------------------------------


def test_plan_windows_counts_hops_caps_and_rejects_short_clips():
    assert plan_windows(2.0, 2.0, 2.0, 8) == [0.0]
    assert plan_windows(1.9999, 2.0, 2.0, 8) == [0.0]  # metadata rounding is not "too short"
    assert plan_windows(10.0, 2.0, 1.0, 20) == [float(k) for k in range(9)]
    assert plan_windows(10.0, 2.0, 3.0, 8) == [0.0, 3.0, 6.0]  # whole windows only
    assert plan_windows(5.0, 2.0, 0.1, 100)[:4] == [0.0, 0.1, 0.2, 0.3]
    assert plan_windows(60.0, 2.0, 2.0, 8) == [0.0, 8.0, 16.0, 24.0, 34.0, 42.0, 50.0, 58.0]
    film = plan_windows(3 * 3600.0, 2.0, 2.0, 8)  # spread over the whole film, on the hop grid
    assert film[0] == 0.0 and film[-1] == 3 * 3600.0 - 2.0 and len(film) == 8
    assert all(s % 2.0 == 0 for s in film)
    assert np.ptp(np.diff(film)) <= 2.0  # evenly, to the hop
    assert plan_windows(600.0, 2.0, 2.0, 1) == [0.0]
    assert plan_windows(1.5, 2.0, 2.0, 8) == []
    with pytest.raises(ValueError):
        plan_windows(10.0, 2.0, 0.0, 8)


# -- one pass, many windows -------------------------------------------------------------------


@pytest.fixture(scope="module", params=[48000, 44100])
def long_clip(request, tmp_path_factory) -> Path:
    """10 s, 16 fps, frame k at grey level 3 k % 250; stereo clicks at CLICKS_S."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    frames = grey_frames(np.arange(160) * 3 % 250)
    rate = request.param
    write_clip(path, frames, 16.0, clicks(10.0, rate, CLICKS_S, channels=2), rate)
    return path


def test_windows_equal_slices_of_one_long_decode(long_clip):
    starts = plan_windows(10.0, 2.0, 1.0, 20)
    assert len(starts) == 9
    windows = read_windows(
        long_clip, starts, ClipSpec(2.0, fps=8.0, width=24, height=16, sample_rate=SR)
    )
    whole = read_clip(long_clip, 8.0, 24, 16, SR, 10.0)
    for s, w in zip(starts, windows, strict=True):
        first = round(s * 8)
        np.testing.assert_array_equal(w.frames, whole.frames[first : first + 16])
        # Resampled in windows, with context, equals resampled whole and sliced.
        lo = round(s * SR)
        np.testing.assert_allclose(w.audio, whole.audio[lo : lo + 2 * SR], atol=1e-5)
        inside = [t - s for t in CLICKS_S if s + 0.05 < t < s + 1.95]
        assert np.allclose(peaks(w.audio, len(inside)), inside, atol=0.002)


# -- far windows: a seek each, at bounded cost ---------------------------------------------------

FAR_CLICKS_S = tuple(np.round(np.arange(0.37, 240.0, 1.53), 2))


@pytest.fixture(scope="module", params=["mp4", "avi", "ts", "mkv", "mpg"])
def far_clips(request, tmp_path_factory) -> tuple[dict[float, Path], int]:
    """The same clip at 60 s and 240 s in one container, and its frame rate: clicks at
    FAR_CLICKS_S, a key frame every 2 s (what cameras and encoders write; x264's default is 10 s
    at 25 fps)."""
    root = tmp_path_factory.mktemp("far")
    codecs = {
        "mp4": {"video": "libx264", "audio": "aac", "rate": 44100, "fps": 8},
        "avi": {"video": "mpeg4", "audio": "libmp3lame", "rate": 44100, "fps": 8},
        "mpg": {"video": "mpeg1video", "audio": "mp2", "rate": 44100, "fps": 25},  # MPEG-1 rates
        "ts": {"video": "libx264", "audio": "aac", "rate": 48000, "fps": 8},
        "mkv": {"video": "libx264", "audio": "libopus", "rate": 48000, "fps": 8},
    }[request.param]
    paths = {}
    for seconds in (60.0, 240.0):
        sound = clicks(seconds, codecs["rate"], FAR_CLICKS_S)
        path = root / f"far{seconds:.0f}.{request.param}"
        paths[seconds] = write(path, seconds, gop=2 * codecs["fps"], sound=sound, **codecs)
    return paths, codecs["fps"]


def test_far_windows_are_read_by_seeking_as_a_full_pass_reads_them(far_clips):
    path = far_clips[0][60.0]
    dense = read_windows(path, plan_windows(60.0, 2.0, 2.0, 30), WINDOW_16)
    starts = plan_windows(60.0, 2.0, 2.0, 7)  # 0, 10, 20, ...: 8 s apart, a seek each
    cost = DecodeCost()
    far = read_windows(path, starts, WINDOW_16, cost)
    # An MPEG program stream is read front to back: after a seek, FFmpeg stamps its frames
    # one frame late; so is Opus sound (mkv here): after a seek its samples come out shifted.
    assert cost.seeks >= len(starts) - 1 if path.suffix not in (".mpg", ".mkv") else cost.seeks == 0
    offsets = []
    for s, w in zip(starts, far, strict=True):
        same = dense[round(s / 2)]
        np.testing.assert_array_equal(w.frames, same.frames)
        # The audio grid is anchored at the video's time 0 in both: the same samples.
        np.testing.assert_allclose(w.audio, same.audio, atol=1e-4)
        inside = [t - s for t in FAR_CLICKS_S if s + 0.05 < t < s + 1.95]
        offsets += list(np.subtract(peaks(w.audio, len(inside)), inside))
    # In sync, in every window alike. MP3 in AVI starts with the encoder's delay (1105 samples,
    # 25 ms): no AVI field says to drop it, so players and this reader keep it.
    assert np.ptp(offsets) <= 0.002
    assert abs(np.mean(offsets)) <= (0.026 if path.suffix == ".avi" else 0.002)


def test_the_decode_cost_grows_with_the_windows_not_with_the_clip(far_clips):
    paths, fps = far_clips
    costs = {}
    for seconds, path in paths.items():
        starts = plan_windows(seconds, 2.0, 2.0, 8)
        assert starts[-1] == seconds - 2.0  # the windows span the clip
        costs[seconds] = DecodeCost()
        read_windows(path, starts, WINDOW_16, costs[seconds])
    short, long = costs[60.0], costs[240.0]
    if fps == 25 or paths[60.0].suffix == ".mkv":  # MPEG-PS, Opus: front to back to the end
        assert long.video_frames == 240 * fps and long.seeks == 0
        return
    # Per window: 2 s, the 1 s pre-roll, up to a 2 s key-frame interval (and the frames decoded
    # while the audio, muxed up to 0.7 s behind, catches up).
    bound = 8 * (2.0 + 1.0 + 2.0 + 1.0) * fps
    assert short.video_frames <= bound and long.video_frames <= bound
    assert long.video_frames < 240 * fps / 4  # under a quarter of the frames of the clip
    assert long.audio_s <= 8 * 6.0
    assert abs(long.video_frames - short.video_frames) <= 3 * 2 * fps


def test_a_window_past_the_end_of_the_audio_is_silent(tmp_path):
    """Audio that stops at 10 s of a 40 s clip: the window at 30 s, however it is reached, is
    silent and keeps its moving frames."""
    path = write(tmp_path / "short_audio.mp4", 40.0, gop=16, audio_s=10.0, rate=SR)
    cost = DecodeCost()
    windows = read_windows(path, [0.0, 30.0], WINDOW_16, cost)
    assert np.abs(windows[0].audio).max() > 0.25  # the tone
    assert np.abs(windows[1].audio).max() == 0
    moving = windows[1].frames.astype(float).std(axis=0).max()
    assert moving > 10  # the square still moves: the frames are there


def test_late_audio_stays_in_sync(tmp_path):
    """Audio written with a 0.5 s pts offset: silence first, onsets at source time + 0.5 s."""
    path = tmp_path / "late.mp4"
    times = (0.2, 1.1, 2.7, 3.4)
    write_av(
        path,
        grey_frames(np.zeros(48)),
        np.arange(48) / 8,
        clicks(5.5, SR, times),
        SR,
        audio_delay_s=0.5,
    )
    starts = [0.0, 2.0, 4.0]
    windows = read_windows(path, starts, WINDOW_16)
    assert np.abs(windows[0].audio[: round(0.45 * SR)]).max() < 1e-3
    for s, w in zip(starts, windows, strict=True):
        inside = [t + 0.5 - s for t in times if s + 0.05 < t + 0.5 < s + 1.95]
        assert np.allclose(peaks(w.audio, len(inside)), inside, atol=1 / 1000)


# -- frames by timestamp ----------------------------------------------------------------------


def picked_levels(frames: np.ndarray, levels: np.ndarray) -> np.ndarray:
    return np.abs(frames.mean(axis=(1, 2, 3))[:, None] - levels[None]).argmin(axis=1)


def expected_picks(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the last frame shown at or before each target (times as stored, in ms)."""
    stored = np.round(times * 1000) / 1000
    return np.searchsorted(stored - stored[0], targets + 1e-4, side="right") - 1


@pytest.mark.parametrize(
    "times",
    [
        np.arange(45) / 30,  # 30 fps
        np.cumsum(np.random.default_rng(0).choice([0.01, 0.03, 0.05, 0.12], 40)),  # variable
    ],
    ids=["30fps", "vfr"],
)
def test_frames_are_picked_by_timestamp(tmp_path, times):
    path = tmp_path / "rate.mp4"
    levels = np.arange(len(times)) * 5
    duration = times[-1] - times[0]
    write_av(path, grey_frames(levels), times, clicks(duration + 0.5, SR, ()), SR)
    starts = [0.0, 0.5]
    spec = ClipSpec(1.0, fps=8.0, width=48, height=32, sample_rate=SR)
    windows = read_windows(path, starts, spec)  # no resize: exact levels
    for s, w in zip(starts, windows, strict=True):
        targets = s + np.arange(8) / 8
        np.testing.assert_array_equal(
            picked_levels(w.frames, levels), expected_picks(times, targets)
        )


# -- pictures: aspect, crop, rotation -----------------------------------------------------------


def bands(height: int, width: int) -> np.ndarray:
    """Red left quarter, green centre half, blue right quarter."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 4, 0] = 255
    rgb[:, width // 4 : 3 * width // 4, 1] = 255
    rgb[:, 3 * width // 4 :, 2] = 255
    return rgb


def test_fit_frame_keeps_aspect_and_crops_the_centre():
    frame = av.VideoFrame.from_ndarray(bands(32, 64), format="rgb24")
    out = fit_frame(frame, 16, 16)  # 64x32 -> 32x16 -> centre 16: all green, no squash
    assert out.shape == (16, 16, 3)
    assert out[..., 1].min() > 200 and out[..., [0, 2]].max() < 60
    wide = fit_frame(frame, 32, 8)  # 64x32 -> 32x16 -> centre 8 rows: all three bands
    np.testing.assert_array_equal(wide.argmax(axis=-1)[4], [0] * 8 + [1] * 16 + [2] * 8)


def test_fit_frame_with_a_reused_scaler_equals_a_fresh_one():
    # read_windows keeps one scaler per stream; a frame of another size or target must not
    # come out through the previous frame's scaler
    reformatter = VideoReformatter()
    rng = np.random.default_rng(0)
    for (h, w), (th, tw) in (((32, 64), (16, 16)), ((48, 40), (16, 16)), ((48, 40), (8, 24))):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), np.uint8), "rgb24")
        shared = fit_frame(frame, tw, th, reformatter)
        assert shared.shape == (th, tw, 3)
        np.testing.assert_array_equal(shared, fit_frame(frame, tw, th))


def test_centre_crop_through_a_file(tmp_path):
    path = tmp_path / "wide.mp4"
    frames = np.stack([bands(32, 64)] * 8)
    write_clip(path, frames, 8.0, clicks(1.0, SR, ()), SR)
    out = read_clip(path, 8.0, 16, 16, SR, 1.0).frames
    assert out[..., 1].min() > 180 and out[..., [0, 2]].max() < 80


def test_phone_rotation_comes_out_upright(tmp_path):
    """A portrait clip stored landscape with a display matrix, as phones write them."""
    upright = np.zeros((64, 32, 3), np.uint8)
    upright[:32, :, 0] = 255  # red on top
    upright[32:, :, 2] = 255  # blue below
    stored = np.rot90(upright, 1)  # 32 x 64 landscape; shown turned 90 degrees clockwise
    path = tmp_path / "phone.mp4"
    write_av(path, np.stack([stored] * 8), np.arange(8) / 8, clicks(1.0, SR, ()), SR, rotation=-90)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == -90
    out = read_clip(path, 8.0, 16, 32, SR, 1.0).frames[0]
    assert out.shape == (32, 16, 3)
    assert out[:12, :, 0].min() > 200 and out[:12, :, 2].max() < 60
    assert out[20:, :, 2].min() > 200 and out[20:, :, 0].max() < 60


# -- sound: downmix, rates, codecs ------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 48000])
def test_stereo_is_averaged_and_resampled_keeping_pitch(tmp_path, rate):
    t = np.arange(2 * rate) / rate
    tone = np.sin(2 * np.pi * 1000 * t)
    audio = np.stack([0.4 * tone, 0.2 * tone]).astype(np.float32)  # mean: 0.3
    path = tmp_path / "tone.mp4"
    write_clip(path, grey_frames(np.zeros(16)), 8.0, audio, rate)
    wave = read_clip(path, 8.0, 16, 16, SR, 2.0).audio[SR // 4 : -SR // 4]
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    assert np.fft.rfftfreq(len(wave), 1 / SR)[spectrum.argmax()] == pytest.approx(1000, abs=3)
    assert np.sqrt(2 * np.mean(wave**2)) == pytest.approx(0.3, rel=0.05)


def test_sound_that_changes_channels_is_averaged_frame_by_frame():
    # Broadcast streams switch layouts (a 5.1 film after stereo adverts); frames are kept as
    # decoded and averaged a window at a time, each over its own channels.
    sound = _AudioWindows([0.0], 4096, SR)  # at the stream's rate: no resampling
    stereo = np.stack([np.full(2048, 0.2), np.full(2048, 0.6)]).astype(np.float32)
    mono = np.full((1, 2048), -0.5, np.float32)
    for k, (samples, layout) in enumerate([(stereo, "stereo"), (mono, "mono")]):
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = SR, k * 2048, Fraction(1, SR)
        sound.add(frame, origin=0.0)
    (wave,) = sound.finish(origin=0.0)
    np.testing.assert_allclose(wave, np.r_[np.full(2048, 0.4), np.full(2048, -0.5)], atol=1e-7)


@pytest.mark.parametrize(
    ("suffix", "video_codec", "audio_codec", "rate"),
    [("webm", "libvpx-vp9", "libopus", 48000), ("mkv", "libx265", "libmp3lame", 44100)],
)
def test_other_codecs_decode_in_sync(tmp_path, suffix, video_codec, audio_codec, rate):
    path = tmp_path / f"clip.{suffix}"
    levels = np.arange(32) * 7
    times = (0.4, 1.3, 2.2, 3.1)
    audio = clicks(4.0, rate, times)
    frames = grey_frames(levels, 64, 64)  # x265 aborts on smaller pictures
    write_av(path, frames, np.arange(32) / 8, audio, rate, video_codec, audio_codec)
    windows = read_windows(path, [0.0, 2.0], WINDOW_16)
    for s, w in zip([0.0, 2.0], windows, strict=True):
        np.testing.assert_array_equal(picked_levels(w.frames, levels), s * 8 + np.arange(16))
        inside = [t - s for t in times if s < t < s + 2]
        assert np.allclose(peaks(w.audio, len(inside)), inside, atol=0.003)


# -- memory -----------------------------------------------------------------------------------


def write_hd(path: Path) -> int:
    """10 s of 1920x1080 at 60 fps (a bar moving over black) and mono audio; fast x264."""
    height, width, fps = 1080, 1920, 60
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=SR, layout="mono")
        yuv = np.zeros((height * 3 // 2, width), np.uint8)
        yuv[height:] = 128
        for k in range(10 * fps):
            yuv[:height] = 16
            yuv[:height, (k * 3) % width : (k * 3) % width + 64] = 235
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = k
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = clicks(10.0, SR, CLICKS_S)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = SR, start
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return 10 * fps * height * width * 3


def memory(key: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_a_large_file_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "hd.mp4"
    decoded_bytes = write_hd(path)  # 3.7 GB as RGB
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak to what is resident now
    before = memory("VmRSS")
    windows = read_windows(
        path,
        plan_windows(10.0, 2.0, 1.0, 8),
        ClipSpec(2.0, fps=8.0, width=32, height=32, sample_rate=SR),
    )
    growth = memory("VmHWM") - before
    assert len(windows) == 8 and windows[-1].frames.shape == (16, 32, 32, 3)
    assert growth < decoded_bytes / 40, f"peak RSS grew {growth / 1e6:.0f} MB"


# -- the cache stage --------------------------------------------------------------------------


def test_plan_shifts_events_and_keeps_the_clip_split():
    row = {"path": "a.mp4", "duration_s": 5.0, "events": "[0.5, 2.5, 4.5]", "split": "val"}
    short = {"path": "b.mp4", "duration_s": 1.0, "events": "", "split": "train"}
    spec = ClipSpec(2.0, hop_s=1.5, max_windows_per_clip=8)
    windows, rejected = cache_task.plan([row, short], spec)
    assert [(w["window"], w["start_s"]) for w in windows] == [(0, 0.0), (1, 1.5), (2, 3.0)]
    assert [json.loads(w["events"]) for w in windows] == [[0.5], [1.0], [1.5]]
    assert {w["split"] for w in windows} == {"val"}
    assert rejected == [{"path": "b.mp4", "code": "too_short", "reason": rejected[0]["reason"]}]


def test_window_schema_rejects_split_clips_and_repeated_windows(tmp_path):
    base = validated_row("a.mp4", 0, 4.0)
    table = pd.DataFrame(
        [
            {**base, "window": 0, "start_s": 0.0},
            {**base, "window": 1, "start_s": 2.0, "split": "val"},
        ]
    )
    with pytest.raises(ManifestError, match="one_split_per_clip"):
        write_manifest(table, tmp_path / "w.csv", WindowManifest)
    table["split"] = "train"
    write_manifest(table, tmp_path / "w.csv", WindowManifest)
    with pytest.raises(ManifestError, match="not unique"):
        write_manifest(
            pd.concat([table, table[1:]], ignore_index=True), tmp_path / "w.csv", WindowManifest
        )


def test_cache_resumes_with_windows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params["clip"].update(duration_s=2.0, hop_s=1.0, max_windows_per_clip=8, width=16, height=16)
    spec = clip_spec(params)
    windows, _ = cache_task.plan(make_raw(tmp_path, [4.0, 4.0]), spec)
    assert len(windows) == 6  # 3 per clip; shards of 4 split clip 1's windows
    codec = codec_from(params)
    conditioner = Conditioner(ConditioningConfig(), 4, 50)
    out = tmp_path / "cache"
    encoded: list[tuple[str, int]] = []

    def encode(rows, fail_after=None):
        if fail_after is not None and len(encoded) >= fail_after:
            raise KeyboardInterrupt  # killed
        encoded.extend((r["path"], r["window"]) for r in rows)
        yield from cache_task.encode_windows(rows, spec, codec, conditioner)

    with pytest.raises(KeyboardInterrupt):
        build_shards(out, "train", windows, lambda rows: encode(rows, fail_after=4), 4)
    assert shard_clips(out / "train-0000.safetensors") == windows[:4]
    assert sorted(p.name for p in out.iterdir()) == ["train-0000.safetensors"]

    encoded.clear()
    build_shards(out, "train", windows, encode, 4)
    assert encoded == [("clips/c1.mp4", 1), ("clips/c1.mp4", 2)]  # only the second shard

    first = out / "train-0000.safetensors"
    first.write_bytes(first.read_bytes()[:-100])  # cut by a crash outside our atomic write
    encoded.clear()
    build_shards(out, "train", windows, encode, 4)
    assert len(encoded) == 4 and shard_clips(first) == windows[:4]


def test_cache_stage_writes_windows_and_rejects_short_clips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params["clip"].update(duration_s=2.0, hop_s=1.0, max_windows_per_clip=2, width=16, height=16)
    rows = make_raw(tmp_path, [4.0, 3.0, 1.0])
    rows[1]["split"] = "val"
    write_manifest(pd.DataFrame(rows), tmp_path / "data/validated/manifest.csv", ValidatedManifest)
    index = cache_task.cache(params)
    assert (index["clips"], index["windows"]) == (2, 4)  # capped at 2 per clip
    table = pd.read_csv(tmp_path / "data/cache/windows.csv")
    assert table[["path", "window", "split"]].values.tolist() == [
        ["clips/c0.mp4", 0, "train"],
        ["clips/c0.mp4", 1, "train"],
        ["clips/c1.mp4", 0, "val"],
        ["clips/c1.mp4", 1, "val"],
    ]
    rejected = pd.read_csv(tmp_path / "data/cache/rejected.csv")
    assert rejected[["path", "code"]].values.tolist() == [["clips/c2.mp4", "too_short"]]
    val = load_split(tmp_path / "data/cache", "val")
    assert [c["start_s"] for c in val.clips] == [0.0, 1.0]
    # the image condition is the window's first frame
    torch.testing.assert_close(val.batch.image, val.batch.video[:, 0])


def cache_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data/cache").iterdir())}


def test_cache_on_a_dask_cluster_equals_one_process_bit_for_bit(tmp_path, monkeypatch):
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params["clip"].update(duration_s=2.0, hop_s=1.0, max_windows_per_clip=3, width=16, height=16)
    params["codec"]["shard_size"] = 2
    rows = make_raw(tmp_path, [4.0, 3.0, 4.0, 2.0])
    rows[3]["split"] = "val"
    write_manifest(pd.DataFrame(rows), tmp_path / "data/validated/manifest.csv", ValidatedManifest)
    monkeypatch.chdir(tmp_path)
    single = cache_task.cache({**params, "cache": {"workers": 0}})
    expected = cache_files(tmp_path)
    assert len(single["shards"]) == 5  # 8 train windows in 4 shards, 1 val window

    for shard in (tmp_path / "data/cache").glob("*.safetensors"):
        shard.unlink()
    distributed = cache_task.cache({**params, "cache": {"workers": 2}})
    assert distributed == single
    assert cache_files(tmp_path) == expected

    # a killed run resumes: only the missing shard is encoded again, on the cluster
    (tmp_path / "data/cache/train-0002.safetensors").unlink()
    kept = tmp_path / "data/cache/train-0001.safetensors"
    written = kept.stat().st_mtime_ns
    cache_task.cache({**params, "cache": {"workers": 2}})
    assert cache_files(tmp_path) == expected
    assert kept.stat().st_mtime_ns == written


@pytest.mark.parametrize(
    ("run", "problem"),
    [({"workers": -1}, "negative"), ({"workers": 2, "scheduler": "tcp://x:1"}, "not both"),
     ({"threads": 2}, "unknown keys")],
)  # fmt: skip
def test_cache_run_settings_are_checked(run, problem):
    with pytest.raises(ValueError, match=problem):
        from_dict(cache_task.CacheRun, run, "cache")


def test_a_shard_killed_while_written_leaves_nothing(tmp_path, monkeypatch):
    def killed(tensors, filename, metadata):
        Path(filename).write_bytes(b"half a shard")
        raise KeyboardInterrupt

    monkeypatch.setattr("jointdit.data.shards.save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        write_shard(tmp_path / "train-0000.safetensors", {"x": torch.zeros(2)}, [{"path": "a"}])
    assert list(tmp_path.iterdir()) == []

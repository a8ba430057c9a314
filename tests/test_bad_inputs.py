"""fetch_folder + validate on a folder of inputs nobody here made, bad ones among them.

Every file must end up accepted or rejected with its code and a message naming it, and no bad
file may stop the run. The files are written here with PyAV directly rather than with
`media.write_clip`: it only writes H.264 + AAC in a fast-start MP4, and these need other codecs
and containers, a video-only or audio-only file and an index at the end.
"""

from __future__ import annotations

import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from jointdit.data.manifest import ValidationConfig
from jointdit.data.media import probe
from jointdit.data.sources import fetch_folder
from jointdit.data.validation import audio_loudness, validate

# The training window (clip.duration_s): anything shorter is too_short.
CFG = ValidationConfig(min_duration_s=2.0)

EXPECTED = {
    "clips/corrupt.mp4": "unreadable",
    "clips/truncated.mp4": "unreadable",
    "clips/empty.mp4": "empty_file",
    "clips/audio_only.mp4": "no_video",
    "clips/video_only.mp4": "no_audio",
    "clips/short.mp4": "too_short",
    "clips/silent.mp4": "silent",
    "clips/renamed.pdf.mp4": "unreadable",
    "clips/dogs/bark_copy.mp4": "duplicate",
    "../../etc/passwd": "path_escape",
}
ACCEPTED = [
    "clips/big_1080p60.mp4",
    "clips/dogs/bark.mp4",
    "clips/long.mp4",
    "clips/rain/hevc.mkv",
    "clips/rain/vp9_opus.webm",
    "clips/stereo_44k.mp4",
]


def _picture(k: int, width: int, height: int) -> np.ndarray:
    """A yuv420p frame: grey with a bright square moving right (cheap to encode at any size)."""
    frame = np.full((height * 3 // 2, width), 128, np.uint8)
    side = max(height // 4, 2)
    x = (k * 2) % max(width - side, 1)
    frame[height // 4 : height // 4 + side, x : x + side] = 235
    return frame


def _sound(seconds: float, rate: int, channels: int, loud_from_s: float) -> np.ndarray:
    """A 440 Hz tone (0.3 peak: -13.5 dBFS RMS) from loud_from_s on, digital silence before."""
    t = np.arange(round(seconds * rate)) / rate
    tone = np.where(t >= loud_from_s, 0.3 * np.sin(2 * np.pi * 440 * t), 0.0)
    return np.repeat(tone[None].astype(np.float32), channels, axis=0)


# Fast settings: the encoders' defaults would make this test slow, not more telling.
VIDEO_OPTIONS = {
    "libx264": {"preset": "ultrafast"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
}


def write(
    path: Path,
    seconds: float = 2.0,
    *,
    video: str | None = "libx264",
    size: tuple[int, int] = (32, 32),
    fps: int = 8,
    audio: str | None = "aac",
    rate: int = 16000,
    channels: int = 1,
    loud_from_s: float = 0.0,
) -> Path:
    """Write a test clip; the MP4 muxer's default leaves the index (moov) at the end."""
    width, height = size
    with av.open(str(path), "w") as out:
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=fps, options=VIDEO_OPTIONS[video])
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = None
        if audio:
            layout = "mono" if channels == 1 else "stereo"
            astream = out.add_stream(audio, rate=rate, layout=layout)
        if vstream is not None:
            for k in range(round(seconds * fps)):
                frame = av.VideoFrame.from_ndarray(_picture(k, width, height), format="yuv420p")
                frame.pts, frame.time_base = k, Fraction(1, fps)
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if astream is not None:
            samples = _sound(seconds, rate, channels, loud_from_s)
            step = astream.codec_context.frame_size or 1024
            for start in range(0, samples.shape[1], step):
                chunk = np.ascontiguousarray(samples[:, start : start + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=astream.layout)
                frame.sample_rate, frame.pts = rate, start
                frame.time_base = Fraction(1, rate)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    return path


def make_folder(src: Path) -> None:
    (src / "dogs").mkdir(parents=True)
    (src / "rain").mkdir()
    write(src / "dogs" / "bark.mp4")
    shutil.copy(src / "dogs" / "bark.mp4", src / "dogs" / "bark_copy.mp4")
    write(src / "rain" / "hevc.mkv", video="libx265", size=(64, 64))
    write(
        src / "rain" / "vp9_opus.webm",
        video="libvpx-vp9",
        size=(64, 64),
        audio="libopus",
        rate=48000,
    )
    write(src / "stereo_44k.mp4", rate=44100, channels=2)
    # The stand-in for a 3-hour clip: validation cost must not grow with length, and 60 s is
    # already 15 times what the loudness excerpts (4 x 1 s) cover. Quiet for 45 s, so measuring
    # only its start would call it silent.
    write(src / "long.mp4", 60.0, fps=4, loud_from_s=45.0)
    write(src / "big_1080p60.mp4", size=(1920, 1080), fps=60)
    write(src / "short.mp4", 0.2, fps=10)
    write(src / "silent.mp4", loud_from_s=1e9)
    write(src / "video_only.mp4", audio=None)
    write(src / "audio_only.mp4", video=None)
    good = write(src / "whole.mp4").read_bytes()
    (src / "whole.mp4").unlink()
    # Cut before the index at the end: the frames are there, the moov that describes them not.
    (src / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    (src / "empty.mp4").write_bytes(b"")
    (src / "renamed.pdf.mp4").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    (src / "captions.csv").write_text(
        "path,caption\n"
        "dogs/bark.mp4,a dog barks twice\n"
        "../../etc/passwd,root:x:0:0\n"
        "stereo_44k.mp4,a tone in stereo\n"
    )


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    make_folder(root / "src")
    fetched = fetch_folder(root / "src", root / "raw")
    result = validate(fetched.manifest, root / "raw", CFG, fetched.rejected)
    return root, fetched, result


def test_every_input_gets_its_code_and_a_message_naming_it(checked):
    _, fetched, result = checked
    codes = dict(zip(result.rejected["path"], result.rejected["code"], strict=True))
    assert codes == EXPECTED
    for row in result.rejected.itertuples():
        assert row.path in row.reason, row
    assert list(result.accepted["path"]) == ACCEPTED
    inputs = len(fetched.manifest) + len(fetched.rejected)
    assert inputs == len(EXPECTED) + len(ACCEPTED) == result.report["n_inputs"]
    assert len(result.accepted) + len(result.rejected) == inputs
    assert result.report["n_rejected_at_fetch"] == 1


def test_the_escaping_caption_row_is_refused_at_fetch_and_never_read(checked):
    root, fetched, _ = checked
    assert list(fetched.rejected["code"]) == ["path_escape"]
    assert "captions.csv row 2" in fetched.rejected["reason"].iloc[0]
    copied = {p.relative_to(root / "raw").as_posix() for p in (root / "raw").rglob("*")}
    assert not any("passwd" in p for p in copied)


def test_captions_and_labels_reach_the_accepted_table(checked):
    _, _, result = checked
    accepted = result.accepted.set_index("path")
    assert accepted.at["clips/dogs/bark.mp4", "caption"] == "a dog barks twice"
    assert accepted.at["clips/stereo_44k.mp4", "caption"] == "a tone in stereo"
    assert accepted.at["clips/rain/hevc.mkv", "caption"] == "a video of rain"
    assert accepted.at["clips/long.mp4", "caption"] == ""
    assert dict(accepted["label"]) == {
        "clips/big_1080p60.mp4": "",
        "clips/dogs/bark.mp4": "dogs",
        "clips/long.mp4": "",
        "clips/rain/hevc.mkv": "rain",
        "clips/rain/vp9_opus.webm": "rain",
        "clips/stereo_44k.mp4": "",
    }
    assert accepted.at["clips/stereo_44k.mp4", "sample_rate"] == 44100
    assert accepted.at["clips/stereo_44k.mp4", "channels"] == 2
    assert accepted.at["clips/rain/vp9_opus.webm", "sample_rate"] == 48000
    assert (
        accepted.at["clips/big_1080p60.mp4", "width"],
        accepted.at["clips/big_1080p60.mp4", "fps"],
    ) == (1920, 60.0)


def test_the_report_profiles_what_came_in(checked):
    _, _, result = checked
    report = result.report
    assert report["rejected_by_code"]["unreadable"] == 3
    profile = report["gx"]["profile"]
    assert profile["duration_s"]["max"] == pytest.approx(60.0, abs=0.5)
    assert profile["duration_s"]["min"] == pytest.approx(0.2, abs=0.05)
    assert {"16000", "44100", "48000"} <= set(profile["sample_rate"])
    assert profile["loudness_dbfs"]["min"] == -120.0  # the silent clip, measured and rejected
    assert profile["labels"] == {"dogs": 1, "rain": 2}  # the duplicate was never probed
    failing = {e["column"] for e in report["gx"]["expectations"] if not e["success"]}
    assert {"has_audio", "duration_s", "loudness_dbfs"} <= failing


def test_a_long_clip_is_measured_on_bounded_excerpts(checked):
    root, _, _ = checked
    long_clip = root / "raw" / "clips" / "long.mp4"
    loudness = audio_loudness(long_clip, 60.0, CFG.loudness_excerpts, CFG.loudness_excerpt_s)
    # Four 1 s excerpts, give or take the AAC frames straddling their edges: not 60 s.
    assert loudness.seconds <= CFG.loudness_excerpts * (CFG.loudness_excerpt_s + 0.2)
    assert loudness.dbfs == pytest.approx(-13.5, abs=1.0)  # the last excerpt: 0.3 sine


def test_a_large_frame_clip_is_not_decoded_whole(checked):
    root, _, _ = checked
    big = root / "raw" / "clips" / "big_1080p60.mp4"
    started = time.perf_counter()
    probe(big)
    loudness = audio_loudness(big, 2.0, CFG.loudness_excerpts, CFG.loudness_excerpt_s)
    checked_s = time.perf_counter() - started
    started = time.perf_counter()
    with av.open(str(big)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    decode_s = time.perf_counter() - started
    assert frames == 120
    assert loudness.seconds <= 2.2
    # probe decodes one frame of 120, the loudness check none: far below a full decode.
    assert checked_s < decode_s / 3, (checked_s, decode_s)

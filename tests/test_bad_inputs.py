"""fetch_folder + validate on a folder of inputs nobody here made, bad ones among them.

A user's folder, as found: clips in a dozen containers (an AVI as FFmpeg writes it, DVD and
camcorder streams, Flash, Windows Media, a phone's 3GP, Ogg, RealMedia, one without a file
extension), broken ones (cut, corrupt, empty, renamed), ones that are not clips (songs, a
picture, subtitles, notes, a Finder file). Every file must end up accepted, or rejected with
its code and a message naming it, decided by content and not by name; no bad file may stop
the run; no valid clip may be refused. The files are written here with PyAV (tests/media_files).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest

from jointdit.data.manifest import ValidationConfig
from jointdit.data.media import probe
from jointdit.data.sources import fetch_folder
from jointdit.data.validation import audio_loudness, validate
from tests.media_files import write, write_picture, write_song_with_cover

# The training window (clip.duration_s): anything shorter is too_short.
CFG = ValidationConfig(min_duration_s=2.0)

# Refused at fetch, by content, before anything is copied (paths as in the source folder).
REFUSED_AT_FETCH = {
    "corrupt.mp4": "unreadable",
    "truncated.mp4": "unreadable",  # cut before its index
    "empty.mp4": "empty_file",
    "renamed.pdf.mp4": "unreadable",
    "audio_only.mp4": "no_video",
    "music/song.mp3": "no_video",  # its cover art is a video stream, but not a moving one
    "music/take.wav": "no_video",
    "notes.txt": "unreadable",  # no clip called notes.*: not a caption sidecar
    "README.md": "unreadable",
    "thumbnail.jpg": "still_image",
    "cover.png": "still_image",
    "movie.srt": "unreadable",  # subtitles only
    ".DS_Store": "unreadable",
    "../../etc/passwd": "path_escape",  # a captions.csv row
}
# Video files, judged by validate (paths as in data/raw).
REJECTED_AT_VALIDATE = {
    "clips/video_only.mp4": "no_audio",
    "clips/animated.gif": "no_audio",
    "clips/short.mp4": "too_short",
    "clips/silent.mp4": "silent",
    "clips/dogs/bark_copy.mp4": "duplicate",
    "clips/cut_index_first.mp4": "decode_error",  # index at the front, data cut
    "clips/cut.avi": "decode_error",  # an AVI's header counts the frames a cut file lost
}
ACCEPTED = [
    "clips/asf.asf",
    "clips/big_1080p60.mp4",
    "clips/camcorder.mts",
    "clips/dogs/bark.mp4",
    "clips/dvb.ts",
    "clips/dvd.vob",
    "clips/ffmpeg.avi",
    "clips/flash.f4v",
    "clips/flash.flv",
    "clips/flash.swf",
    "clips/long.mp4",
    "clips/lossless.nut",
    "clips/no_extension",
    "clips/phone.3gp",
    "clips/quicktime.mov",
    "clips/rain/hevc.mkv",
    "clips/rain/vp9_opus.webm",
    "clips/real.rm",
    "clips/stereo_44k.mp4",
    "clips/stereo_44k_prores.mov",
    "clips/theora_free.ogv",
    "clips/vcd.mpg",
    "clips/windows.wmv",
]
CONTAINERS = {  # FFmpeg's name for each accepted clip's container
    "asf",
    "avi",
    "flv",
    "matroska,webm",
    "mov,mp4,m4a,3gp,3g2,mj2",
    "mpeg",
    "mpegts",
    "nut",
    "ogg",
    "rm",
    "swf",
}


def make_folder(src: Path) -> None:
    for folder in ("dogs", "rain", "music"):
        (src / folder).mkdir(parents=True)
    write(src / "dogs" / "bark.mp4")
    shutil.copy(src / "dogs" / "bark.mp4", src / "dogs" / "bark_copy.mp4")
    write(src / "rain" / "hevc.mkv", video="libx265", size=(64, 64))
    write(src / "rain" / "vp9_opus.webm", video="libvpx-vp9", audio="libopus", rate=48000)
    write(src / "stereo_44k.mp4", rate=44100, channels=2)
    (src / "stereo_44k.txt").write_text("a tone in stereo, from its sidecar\n")
    write(src / "stereo_44k_prores.mov", video="prores", audio="pcm_s16le", rate=48000, channels=2)
    # The stand-in for a 3-hour clip: validation cost must not grow with length, and 60 s is
    # already 15 times what the loudness excerpts (4 x 1 s) cover. Quiet for 45 s, so measuring
    # only its start would call it silent.
    write(src / "long.mp4", 60.0, fps=4, loud_from_s=45.0)
    write(src / "big_1080p60.mp4", size=(1920, 1080), fps=60)
    # As `ffmpeg -i x ffmpeg.avi` writes it: MPEG-4 Part 2 and MP3. Its header counts one
    # frame more than it stores, which is no reason to refuse it.
    write(src / "ffmpeg.avi", video="mpeg4", audio="libmp3lame", rate=44100, fps=25)
    write(src / "vcd.mpg", video="mpeg1video", audio="mp2", rate=44100, fps=25)
    write(src / "dvd.vob", fmt="vob", video="mpeg2video", audio="ac3", rate=48000, fps=25)
    write(src / "dvb.ts", video="mpeg2video", audio="mp2", rate=48000)
    write(src / "camcorder.mts", fmt="mpegts", options={"mpegts_m2ts_mode": "1"}, rate=48000)
    write(src / "flash.flv", video="flv", audio="libmp3lame", rate=44100)
    write(src / "flash.swf", video="flv", audio="libmp3lame", rate=44100)
    write(src / "flash.f4v", fmt="f4v")
    write(src / "windows.wmv", fmt="asf", video="wmv2", audio="wmav2", rate=44100)
    write(src / "asf.asf", video="msmpeg4v3", audio="wmav2", rate=22050)
    write(src / "phone.3gp", video="h263", audio="libopencore_amrnb", rate=8000, size=(176, 144))
    write(src / "theora_free.ogv", fmt="ogg", video="libvpx", audio="libopus", rate=48000)
    write(src / "real.rm", video="rv10", audio="ac3", rate=44100)
    write(src / "lossless.nut", video="ffv1", audio="flac")
    write(src / "quicktime.mov")
    write(src / "no_extension", 3.0, fmt="mp4")
    write(src / "animated.gif", video="gif", audio=None)
    write(src / "short.mp4", 0.2, fps=10)
    write(src / "silent.mp4", loud_from_s=1e9)
    write(src / "video_only.mp4", audio=None)
    write(src / "audio_only.mp4", video=None)
    write_song_with_cover(src / "music" / "song.mp3")
    write(src / "music" / "take.wav", video=None, audio="pcm_s16le")
    good = write(src / "whole.mp4").read_bytes()
    (src / "whole.mp4").unlink()
    # Cut before the index at the end: the frames are there, the moov that describes them not.
    (src / "truncated.mp4").write_bytes(good[: len(good) // 2])
    front = write(src / "front.mp4", 10.0, options={"movflags": "faststart"}).read_bytes()
    (src / "front.mp4").unlink()
    (src / "cut_index_first.mp4").write_bytes(front[: len(front) // 2])
    whole_avi = write(src / "whole.avi", 10.0, video="mpeg4", audio="libmp3lame", rate=44100)
    (src / "cut.avi").write_bytes(whole_avi.read_bytes()[: whole_avi.stat().st_size * 6 // 10])
    whole_avi.unlink()
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    (src / "empty.mp4").write_bytes(b"")
    (src / "renamed.pdf.mp4").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    write_picture(src / "thumbnail.jpg")
    write_picture(src / "cover.png", codec="png")
    (src / "notes.txt").write_text("shot list:\n1. dog\n2. rain\n")
    (src / "README.md").write_text("# Clips\nRecorded in May.\n")
    (src / "movie.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n\n")
    (src / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (src / "captions.csv").write_text(
        "path,caption\n"
        "dogs/bark.mp4,a dog barks twice\n"
        "../../etc/passwd,root:x:0:0\n"
        "stereo_44k.mp4,the sidecar wins\n"
        "notes.txt,a caption for a file that is no clip\n"
    )


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    make_folder(root / "src")
    fetched = fetch_folder(root / "src", root / "raw")
    result = validate(fetched.manifest, root / "raw", CFG, fetched.rejected)
    return root, fetched, result


def test_every_input_gets_its_code_and_a_message_naming_it(checked):
    root, fetched, result = checked
    refused = dict(zip(fetched.rejected["path"], fetched.rejected["code"], strict=True))
    assert refused == REFUSED_AT_FETCH
    codes = dict(zip(result.rejected["path"], result.rejected["code"], strict=True))
    assert codes == {**REFUSED_AT_FETCH, **REJECTED_AT_VALIDATE}
    for row in result.rejected.itertuples():
        assert row.path.removeprefix("clips/") in row.reason, row
    assert list(result.accepted["path"]) == ACCEPTED
    # Every file of the folder is an input, but the captions (captions.csv, the sidecar).
    files = {p.relative_to(root / "src").as_posix() for p in (root / "src").rglob("*")}
    files -= {"captions.csv", "stereo_44k.txt", "dogs", "rain", "music"}
    named = {p.removeprefix("clips/") for p in [*codes, *ACCEPTED]} - {"../../etc/passwd"}
    assert named == files
    inputs = len(fetched.manifest) + len(fetched.rejected)
    assert inputs == len(codes) + len(ACCEPTED) == result.report["n_inputs"] >= 25 + 1
    assert len(result.accepted) + len(result.rejected) == inputs
    assert result.report["n_rejected_at_fetch"] == len(REFUSED_AT_FETCH)


def test_valid_clips_in_a_dozen_containers_are_accepted_with_their_real_length(checked):
    root, _, result = checked
    accepted = result.accepted.set_index("path")
    formats = set()
    for path in ACCEPTED:
        with av.open(str(root / "raw" / path)) as container:
            formats.add(container.format.name)
    assert formats == CONTAINERS
    lengths = accepted["duration_s"].drop(["clips/long.mp4", "clips/no_extension"])
    # Measured from timestamps: the MPEG program streams' headers state 0.02 s and 1.8 s.
    np.testing.assert_allclose(lengths, 2.0, atol=0.05)
    assert accepted.at["clips/ffmpeg.avi", "fps"] == 25.0
    assert accepted.at["clips/phone.3gp", "sample_rate"] == 8000
    assert (accepted.at["clips/stereo_44k_prores.mov", "channels"]) == 2


def test_truncated_files_are_still_caught(checked):
    _, _, result = checked
    reasons = dict(zip(result.rejected["path"], result.rejected["reason"], strict=True))
    # The AVI lost 40% of its data (and its index): the header's frame count tells.
    assert "truncated: its video stops at" in reasons["clips/cut.avi"]
    assert "its header says 10.12 s" in reasons["clips/cut.avi"]  # 80 frames, counted 81
    # The fast-start MP4 keeps its index; its data stops mid-packet.
    assert "truncated or corrupt" in reasons["clips/cut_index_first.mp4"]


def test_the_escaping_caption_row_is_refused_at_fetch_and_never_read(checked):
    root, fetched, _ = checked
    reasons = dict(zip(fetched.rejected["path"], fetched.rejected["reason"], strict=True))
    assert "captions.csv row 2" in reasons["../../etc/passwd"]
    copied = {p.relative_to(root / "raw").as_posix() for p in (root / "raw").rglob("*")}
    assert not any("passwd" in p for p in copied)
    # Only video files are copied: the refused ones stay out of data/raw.
    clips = {p.removeprefix("clips/") for p in copied if (root / "raw" / p).is_file()}
    assert clips == {p.removeprefix("clips/") for p in [*ACCEPTED, *REJECTED_AT_VALIDATE]}


def test_captions_and_labels_reach_the_accepted_table(checked):
    _, _, result = checked
    accepted = result.accepted.set_index("path")
    assert accepted.at["clips/dogs/bark.mp4", "caption"] == "a dog barks twice"
    assert accepted.at["clips/stereo_44k.mp4", "caption"] == "a tone in stereo, from its sidecar"
    assert accepted.at["clips/rain/hevc.mkv", "caption"] == "a video of rain"
    assert accepted.at["clips/long.mp4", "caption"] == ""
    labels = {path: label for path, label in accepted["label"].items() if label}
    assert labels == {
        "clips/dogs/bark.mp4": "dogs",
        "clips/rain/hevc.mkv": "rain",
        "clips/rain/vp9_opus.webm": "rain",
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
    assert report["rejected_by_code"] == {
        "decode_error": 2,
        "duplicate": 1,
        "empty_file": 1,
        "no_audio": 2,
        "no_video": 3,
        "path_escape": 1,
        "silent": 1,
        "still_image": 2,
        "too_short": 1,
        "unreadable": 7,
    }
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

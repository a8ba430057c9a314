from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from jointdit.data.media import MediaError, display_scale, probe, read_clip, write_clip

FPS = 8.0
T, H, W = 16, 32, 48  # not square, so a swapped width/height shows
SR = 16000
CLICK_S = 0.5
SINE_HZ, SINE_AMP = 440.0, 0.3


def smooth_frames() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    k = np.arange(T, dtype=np.float32)[:, None, None]
    rgb = [40 + 3 * x + 4 * k, 30 + 5 * y + 0 * k, 200 - 2 * x - 2 * y + 3 * k]
    return np.stack(rgb, axis=-1).clip(0, 255).astype(np.uint8)


def test_audio(sample_rate: int, channels: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    audio = np.where(t < 0.4, SINE_AMP * np.sin(2 * np.pi * SINE_HZ * t), 0.0)
    audio[round(CLICK_S * sample_rate)] = 0.9
    return np.tile(audio, (channels, 1)).astype(np.float32)


test_audio.__test__ = False  # a helper, not a test


def peak_time(audio: np.ndarray, around_s: float, sample_rate: int = SR) -> float:
    lo = round((around_s - 0.05) * sample_rate)
    return (lo + int(np.argmax(np.abs(audio[lo : lo + round(0.1 * sample_rate)])))) / sample_rate


@pytest.fixture(scope="module", params=[(SR, 1), (44100, 2)], ids=["16k-mono", "44k-stereo"])
def written(request, tmp_path_factory) -> tuple[Path, np.ndarray]:
    rate, channels = request.param
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames = smooth_frames()
    write_clip(path, frames, FPS, test_audio(rate, channels), rate)
    return path, frames


def test_round_trip_video(written):
    path, frames = written
    clip = read_clip(path, FPS, W, H, SR, T / FPS)
    assert clip.frames.shape == (T, H, W, 3)
    assert clip.frames.dtype == np.uint8
    assert np.abs(clip.frames.astype(np.int16) - frames).mean() < 6


def test_round_trip_audio_is_in_sync_and_keeps_level(written):
    path, _ = written
    clip = read_clip(path, FPS, W, H, SR, T / FPS)
    assert clip.audio.shape == (round(T / FPS * SR),)
    assert clip.audio.dtype == np.float32
    assert abs(peak_time(clip.audio, CLICK_S) - CLICK_S) <= 0.002
    # Stereo input is averaged, so identical channels keep the mono level.
    sine = clip.audio[round(0.1 * SR) : round(0.3 * SR)]
    assert np.sqrt(2 * np.mean(sine**2)) == pytest.approx(SINE_AMP, rel=0.1)


def test_probe_written_clip(written):
    path, _ = written
    info = probe(path)
    assert (info.fps, info.width, info.height) == (FPS, W, H)
    assert info.duration_s == pytest.approx(T / FPS, abs=1e-3)
    assert info.has_audio
    assert (info.sample_rate, info.channels) in [(SR, 1), (44100, 2)]


def test_read_clip_picks_frames_by_timestamp_and_pads(tmp_path):
    path = tmp_path / "steps.mp4"
    levels = np.arange(T) * 15  # frame k is flat grey at 15 k, easy to identify after coding
    frames = np.broadcast_to(levels[:, None, None, None], (T, H, W, 3)).astype(np.uint8)
    write_clip(path, frames, FPS, test_audio(SR, 1), SR)

    clip = read_clip(path, 3.0, 24, 16, SR, 3.0)  # 3 s of a 2 s file, at another rate and size

    assert clip.frames.shape == (9, 16, 24, 3)
    picked = np.abs(clip.frames.mean(axis=(1, 2, 3))[:, None] - levels[None]).argmin(axis=1)
    # Target k / 3 s shows frame floor(8 k / 3); past the end the last frame repeats.
    np.testing.assert_array_equal(picked, [0, 2, 5, 8, 10, 13, 15, 15, 15])
    assert clip.audio.shape == (3 * SR,)
    assert np.abs(clip.audio[round(2.1 * SR) :]).max() == 0


def write_with_late_audio(path: Path, delay_s: float) -> None:
    """A clip whose audio track starts ``delay_s`` after its video track."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=int(FPS))
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream("aac", rate=SR, layout="mono")
        for k in range(T):
            frame = av.VideoFrame.from_ndarray(np.zeros((H, W, 3), np.uint8), format="rgb24")
            frame.pts = k
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = test_audio(SR, 1, seconds=1.0)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono"
            )
            frame.sample_rate = SR
            frame.pts = start + round(delay_s * SR)
            frame.time_base = Fraction(1, SR)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))


def test_late_audio_is_preceded_by_silence(tmp_path):
    path = tmp_path / "late.mp4"
    write_with_late_audio(path, delay_s=0.5)
    clip = read_clip(path, FPS, W, H, SR, 2.0)
    assert np.abs(clip.audio[: round(0.4 * SR)]).max() == 0  # until AAC pre-echo of the 0.5 s onset
    assert abs(peak_time(clip.audio, CLICK_S + 0.5) - (CLICK_S + 0.5)) <= 0.002


def test_video_only_clip(tmp_path):
    path = tmp_path / "silent.mp4"
    write_clip(path, smooth_frames(), FPS, None, 0)
    info = probe(path)
    assert not info.has_audio
    assert (info.sample_rate, info.channels) == (0, 0)
    assert (info.width, info.height) == (W, H)
    with pytest.raises(MediaError) as err:
        read_clip(path, FPS, W, H, SR, 1.0)
    assert err.value.code == "no_audio"


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.mp4"
    write_clip(path, smooth_frames(), FPS, test_audio(SR, 1), SR)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda good: b"", "empty_file"),
        (lambda good: np.random.default_rng(0).bytes(5000), "unreadable"),
        (lambda good: good[: len(good) // 2], "decode_error"),  # index intact, data cut
        (lambda good: good[:200], "unreadable"),  # index cut
    ],
    ids=["empty", "random", "first-half", "cut-index"],
)
@pytest.mark.parametrize("reader", [probe, lambda p: read_clip(p, FPS, W, H, SR, 1.0)])
def test_bad_files_raise_media_error(tmp_path, good_bytes, make, code, reader):
    path = tmp_path / "bad.mp4"
    path.write_bytes(make(good_bytes))
    with pytest.raises(MediaError) as err:
        reader(path)
    assert err.value.code == code
    assert err.value.path == path
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("frames", "audio"),
    [
        (smooth_frames().astype(np.float32), None),  # wrong dtype
        (smooth_frames()[..., 0], None),  # no channel axis
        (smooth_frames()[:, :31], None),  # odd height
        (smooth_frames(), np.zeros(SR, np.float32)),  # audio without a channel axis
    ],
)
def test_write_clip_rejects_bad_input_without_creating_files(tmp_path, frames, audio):
    with pytest.raises(ValueError):
        write_clip(tmp_path / "out.mp4", frames, FPS, audio, SR)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.mp4"
    write_clip(path, smooth_frames(), FPS, test_audio(SR, 1), SR)
    before = path.read_bytes()
    assert list(tmp_path.iterdir()) == [path]
    # AAC has no 1234 Hz mode: the encoder fails after the temp file was opened.
    with pytest.raises(av.FFmpegError):
        write_clip(path, smooth_frames(), FPS, test_audio(1234, 1), 1234)
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == before


# -- real footage (tests/data/SOURCE.md) --------------------------------------------------------

DATA = Path(__file__).parent / "data"


def transcode_to_ffmpeg_avi(source: Path, target: Path) -> None:
    """The clip as `ffmpeg -i source target.avi` writes it: MPEG-4 Part 2 video, MP3 audio."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        v_in, a_in = inp.streams.video[0], inp.streams.audio[0]
        video = out.add_stream("mpeg4", rate=v_in.average_rate)
        video.width, video.height, video.pix_fmt = v_in.width, v_in.height, "yuv420p"
        sound = out.add_stream("libmp3lame", rate=a_in.rate, layout=a_in.layout.name)
        to_mp3 = av.AudioResampler(
            format=sound.codec_context.format,
            layout=sound.layout,
            frame_size=sound.codec_context.frame_size,
        )
        pictures = 0
        for packet in inp.demux(v_in, a_in):
            for frame in packet.decode():
                if packet.stream is v_in:
                    frame.pts, frame.time_base = pictures, 1 / v_in.average_rate
                    pictures += 1
                    out.mux(video.encode(frame))
                else:
                    for piece in to_mp3.resample(frame):
                        out.mux(sound.encode(piece))
        for piece in to_mp3.resample(None):
            out.mux(sound.encode(piece))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))


def test_real_footage_probes_and_reads(tmp_path):
    film, surround = probe(DATA / "bbb_film_excerpt.mp4"), probe(DATA / "bbb_51_excerpt.mp4")
    assert (film.fps, film.width, film.height, film.sample_rate, film.channels) == (
        24.0,
        96,
        54,
        44100,
        2,
    )
    assert (surround.fps, surround.sample_rate, surround.channels) == (25.0, 48000, 6)
    assert film.duration_s == pytest.approx(3.0, abs=0.05)
    for name, seconds in (("bbb_film_excerpt.mp4", 3.0), ("bbb_51_excerpt.mp4", 2.0)):
        clip = read_clip(DATA / name, 8.0, 48, 32, 22050, seconds)
        assert clip.frames.shape == (round(8 * seconds), 32, 48, 3)
        assert clip.frames.std(axis=0).mean() > 2  # the picture moves
        assert np.sqrt(np.mean(clip.audio**2)) > 1e-3  # the soundtrack is there


def test_a_real_clip_as_ffmpeg_writes_an_avi_is_accepted_and_its_truncation_caught(tmp_path):
    avi = tmp_path / "bbb.avi"
    transcode_to_ffmpeg_avi(DATA / "bbb_film_excerpt.mp4", avi)
    with av.open(str(avi)) as container:
        stored = sum(1 for p in container.demux(video=0) if p.size)
        assert container.streams.video[0].frames > stored  # the header counts one more
    info = probe(avi)
    assert info.duration_s == pytest.approx(3.0, abs=0.1) and info.channels == 2
    cut = tmp_path / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size * 6 // 10])
    with pytest.raises(MediaError, match="truncated: its video stops at") as err:
        probe(cut)
    assert err.value.code == "decode_error"


@pytest.mark.parametrize(
    "height, width, scale", [(32, 32, 4), (16, 16, 8), (32, 48, 4), (100, 300, 2), (320, 576, 1)]
)
def test_clips_for_people_are_enlarged_by_whole_pixels(tmp_path, height, width, scale):
    assert display_scale(height, width) == scale
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "big.mp4"
    write_clip(path, frames, FPS, None, 0, scale=3)
    info = probe(path)
    assert (info.width, info.height, info.has_audio) == (48, 48, False)


def test_equal_frames_give_equal_bytes(tmp_path):
    # fetch re-renders the synthetic data on every rerun: a different file is a different
    # sha256 and (x264 being lossy) different pixels, so everything downstream would retrain
    from jointdit.data.synthetic import SyntheticConfig, make_clip

    cfg = SyntheticConfig()
    for i in range(12):
        clip = make_clip(cfg, i)
        written = set()
        for k in range(3):
            path = tmp_path / f"{i}_{k}.mp4"
            write_clip(path, clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
            written.add(path.read_bytes())
        assert len(written) == 1, f"clip {i}: {len(written)} different files from equal input"

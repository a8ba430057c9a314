from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jointdit.metrics.desync import (
    MEL_MEAN,
    MEL_STD,
    WINDOW_S,
    DeSyncScorer,
    audio_input,
    frames_at,
    log_mel,
    offset_grid,
    segment_count,
    video_input,
)
from tests.tiny_synchformer import TINY, random_synchformer


@pytest.fixture(scope="module")
def model():
    return random_synchformer()


@pytest.fixture(scope="module")
def weight_files(model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's weights as av-benchmark ships them (a .pth state dict) and as
    safetensors."""
    directory = tmp_path_factory.mktemp("synchformer")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / "synchformer_state_dict.pth")
    save_file(state, str(directory / "synchformer.safetensors"))
    return {
        "pth": directory / "synchformer_state_dict.pth",
        "safetensors": directory / "synchformer.safetensors",
    }


def _clip(seconds: float, fps: float = 8.0, sr: int = 16000, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (round(seconds * fps), 32, 32, 3), np.uint8)
    return frames, rng.normal(0, 0.1, round(seconds * sr)).astype(np.float32)


# ---------------------------------------------------------------- preprocessing


def _ffmpeg_fps(n: int, fps: float, rate: int = 25) -> list[int]:
    """Which input frame ffmpeg's fps filter shows in each output frame (frame k is all k)."""
    graph = av.filter.Graph()
    time_base = 1 / Fraction(fps).limit_denominator(1001)
    source = graph.add_buffer(width=8, height=8, format="rgb24", time_base=time_base)
    fps_filter = graph.add("fps", f"fps={rate}")
    sink = graph.add("buffersink")
    source.link_to(fps_filter)
    fps_filter.link_to(sink)
    graph.configure()
    picked: list[int] = []

    def drain() -> None:
        while True:
            try:
                picked.append(int(graph.pull().to_ndarray()[0, 0, 0]))
            except (av.BlockingIOError, av.EOFError):
                return

    for k in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((8, 8, 3), k, np.uint8), format="rgb24")
        frame.pts, frame.time_base, frame.duration = k, time_base, 1  # as a decoder gives them
        graph.push(frame)
        drain()
    graph.push(None)
    drain()
    return picked


@pytest.mark.parametrize(
    ("n", "fps"),
    [(16, 8.0), (20, 10.0), (145, 30.0), (50, 24.0), (33, 7.0), (40, 25.0), (97, 60.0)],
)
def test_frames_at_25_fps_are_the_ones_ffmpeg_picks(n, fps):
    assert frames_at(np.arange(n), fps).tolist() == _ffmpeg_fps(n, fps)


def test_video_input_scale_crop_and_rate():
    frames = np.zeros((16, 32, 64, 3), np.uint8)  # 2 s at 8 fps, twice as wide as high
    frames[:, :, 32:, 0] = 255  # right half red
    frames[:, :, :, 2] = 51  # 51 / 255 = 0.2 -> -0.6
    x = video_input(frames, 8.0)
    assert x.shape == (50, 3, 224, 224) and x.dtype == torch.float32
    # 32x64 -> 224x448, centre crop columns 112..335: the step at column 224 of the resized
    # frame is at 112 of the crop; bicubic mixes only 2 input pixels = 14 output columns around it.
    torch.testing.assert_close(x[:, 0, :, :96], torch.full_like(x[:, 0, :, :96], -1.0))
    torch.testing.assert_close(x[:, 0, :, 128:], torch.full_like(x[:, 0, :, 128:], 1.0))
    torch.testing.assert_close(x[:, 2], torch.full_like(x[:, 2], -0.6), rtol=0, atol=1e-6)
    tall = video_input(frames.transpose(0, 2, 1, 3).copy(), 8.0)  # 64 high, 32 wide
    torch.testing.assert_close(tall[:, 0, :96, :], torch.full_like(tall[:, 0, :96, :], -1.0))
    with pytest.raises(ValueError, match="uint8"):
        video_input(frames.astype(np.float32), 8.0)


def test_audio_input_mono_and_16_khz():
    stereo = np.stack([np.ones(44100, np.float32), -np.ones(44100, np.float32) / 2])
    wave = audio_input(stereo, 44100)
    assert wave.shape == (16000,)
    torch.testing.assert_close(wave[2000:14000], torch.full((12000,), 0.25), rtol=0, atol=1e-3)
    same = np.random.default_rng(0).normal(size=16000).astype(np.float32)
    assert torch.equal(audio_input(same, 16000), torch.from_numpy(same))


def test_log_mel_normalisation_padding_and_band():
    t = np.arange(10240) / 16000
    tone = torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    mel = log_mel(torch.stack([torch.zeros(10240), tone]))
    assert mel.shape == (2, 128, 66)
    # 10240 samples / hop 160 + 1 = 65 frames; the 66th is a zero of the log spectrogram.
    torch.testing.assert_close(mel[:, :, 65], torch.full((2, 128), -MEL_MEAN / (2 * MEL_STD)))
    # Silence is log(1e-6), normalised.
    silence = (np.log(1e-6) - MEL_MEAN) / (2 * MEL_STD)
    torch.testing.assert_close(mel[0, :, :65], torch.full((128, 65), silence), rtol=0, atol=1e-5)
    # HTK mel, 0-8 kHz in 128 bands: band b peaks at (b + 1) * 2840.0 / 129 mel; 1 kHz is
    # 1000 mel, between band 44 (990.7) and band 45 (1012.7), nearer 44.
    assert int(mel[1, :, 10:55].mean(dim=1).argmax()) == 44


def test_segments_and_offset_classes():
    # 0.64-s segments every 0.32 s: 4.8 s holds 14, 8 s holds 24 (av-benchmark's 8-s clips).
    assert segment_count(120, 76800) == 14
    assert segment_count(200, 128000) == 24
    assert segment_count(119, 76800) == segment_count(120, 76799) == 13
    assert segment_count(50, 32000) == 5  # the default 2-s clip
    assert abs(WINDOW_S - 4.8) < 1e-12
    grid = offset_grid()
    assert grid.dtype == np.float32 and len(grid) == 21
    np.testing.assert_allclose(grid, np.round(np.arange(-2.0, 2.01, 0.2), 1), atol=1e-6)


# ---------------------------------------------------------------- the scorer


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_scorer_loads_weights_and_reproduces_the_module(model, weight_files, kind):
    scorer = DeSyncScorer(weight_files[kind], cfg=TINY)
    assert not scorer.model.training
    segments = torch.rand(2, 16, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(scorer.model.video_features(segments), model.video_features(segments))


def test_scorer_refuses_weights_that_do_not_fit(model, tmp_path):
    state = model.state_dict()
    state["transformer.off_head.weight"] = torch.zeros(11, 32)  # another offset grid
    torch.save(state, tmp_path / "grid11.pth")
    with pytest.raises(ValueError, match=r"grid11\.pth.*off_head\.weight"):
        DeSyncScorer(tmp_path / "grid11.pth", cfg=TINY)
    del state["afeat_extractor.freq_attn_agg.cls_token"]
    torch.save(state, tmp_path / "truncated.pth")
    with pytest.raises(ValueError, match=r"truncated\.pth.*freq_attn_agg\.cls_token"):
        DeSyncScorer(tmp_path / "truncated.pth", cfg=TINY)
    with pytest.raises(ValueError, match=r"grid11\.pth.*do not fit Synchformer"):
        DeSyncScorer(tmp_path / "grid11.pth")  # the published size does not fit tiny weights


@pytest.mark.parametrize(("seconds", "fps"), [(2.0, 8.0), (4.7, 10.0)])
def test_clips_shorter_than_a_window_are_refused(weight_files, seconds, fps):
    scorer = DeSyncScorer(weight_files["pth"], cfg=TINY)
    frames, audio = _clip(seconds, fps)
    with pytest.raises(ValueError, match=r"at least 4\.8 s.*has .* s of video"):
        scorer.desync(frames, fps, audio, 16000)


@pytest.mark.parametrize(("cls", "expected"), [(10, 0.0), (15, 1.0), (3, 1.4)])
def test_desync_is_the_absolute_offset_of_the_predicted_class(weight_files, cls, expected):
    scorer = DeSyncScorer(weight_files["pth"], cfg=TINY)
    with torch.no_grad():  # a head that always predicts class `cls`
        scorer.model.transformer.off_head.weight.zero_()
        scorer.model.transformer.off_head.bias.copy_(
            torch.nn.functional.one_hot(torch.tensor(cls), 21)
        )
    frames, audio = _clip(5.0)
    offsets = scorer.offsets(frames, 8.0, audio, 16000)
    np.testing.assert_allclose(offsets, [offset_grid()[cls]] * 2)
    assert scorer.desync(frames, 8.0, audio, 16000) == pytest.approx(expected, abs=1e-6)


def test_the_two_windows_are_the_first_and_the_last_14_segments(weight_files, monkeypatch):
    scorer = DeSyncScorer(weight_files["pth"], cfg=TINY, batch_size=3)
    frames, audio = _clip(6.0)  # 150 frames at 25 fps and 96,000 samples: 17 segments
    seen = {}
    monkeypatch.setattr(
        scorer.model,
        "offset_logits",
        lambda v, a: seen.update(video=v, audio=a) or torch.zeros(len(v), 21),
    )
    scorer.offsets(frames, 8.0, audio, 16000)
    assert seen["video"].shape == (2, 14, 8, 32) and seen["audio"].shape == (2, 14, 6, 32)
    video, wave = video_input(frames, 8.0, 32), audio_input(audio, 16000)
    with torch.no_grad():
        for window, start in enumerate([0, 3]):
            for i in (0, 13):  # the window's first and last segment
                s = start + i
                v = scorer.model.video_features(video[None, 8 * s : 8 * s + 16])[0]
                a = scorer.model.audio_features(
                    log_mel(wave[None, 5120 * s : 5120 * s + 10240], 32)
                )[0]
                torch.testing.assert_close(seen["video"][window, i], v)
                torch.testing.assert_close(seen["audio"][window, i], a)


def test_evaluate_refuses_synchformer_weights_for_clips_shorter_than_a_window():
    # The check the evaluate stage makes before loading any weights.
    from jointdit.evaluation import EmbedderPaths, load_embedders

    two_s_clip = {"frames": 16, "duration_s": 2.0}  # 8 fps
    with pytest.raises(ValueError, match=r"synchformer: DeSync is defined on 4\.8-s windows.*2-s"):
        load_embedders(EmbedderPaths(synchformer="weights.pth"), **two_s_clip)
    assert load_embedders(EmbedderPaths(), **two_s_clip).synchformer is None

import numpy as np
import pytest
import torch

from jointdit.codecs import CodecConfig, build_codec
from jointdit.codecs.patch import PatchCodec, PatchCodecConfig

CFG = PatchCodecConfig(griffin_lim_iters=16)


def test_video_round_trip_is_exact():
    codec = PatchCodec(CFG)
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    latents = codec.encode_video(frames)
    assert latents.shape == (3, 3 * 16, 4, 6)
    assert latents.min() >= -1 and latents.max() <= 1
    np.testing.assert_array_equal(codec.decode_video(latents), frames)


def test_space_to_depth_keeps_a_pixel_in_its_block():
    codec = PatchCodec(CFG)
    frames = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    frames[0, 5, 2] = 255  # block (1, 0)
    lat = codec.encode_video(frames)
    changed = (lat > -1).nonzero()
    assert {(int(h), int(w)) for _, _, h, w in changed} == {(1, 0)}


def test_video_size_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        PatchCodec(CFG).encode_video(np.zeros((1, 10, 8, 3), dtype=np.uint8))


def _click(sr: int, at: float, seconds: float) -> np.ndarray:
    wave = np.zeros(int(sr * seconds), dtype=np.float32)
    t = np.arange(int(0.05 * sr)) / sr
    start = int(at * sr)
    wave[start : start + len(t)] = 0.8 * np.sin(2 * np.pi * 660 * t) * np.exp(-t / 0.01)
    return wave


def test_audio_latent_shape_and_frame_rate():
    codec = PatchCodec(CFG)
    wave = _click(16000, 0.5, 2.0)
    lat = codec.encode_audio(wave)
    assert lat.shape == (1, CFG.n_mels, 32000 // CFG.hop)
    assert codec.audio_frame_rate == 64.0
    # the loudest frame is at the click, in latent frames of 1 / 64 s
    peak = lat[0].mean(0).argmax().item() / codec.audio_frame_rate
    assert abs(peak - 0.5) < 0.03


def test_audio_decode_keeps_timing_and_spectrum():
    codec = PatchCodec(CFG)
    wave = _click(16000, 0.5, 1.0)
    lat = codec.encode_audio(wave)
    back = codec.decode_audio(lat)
    assert back.shape == (len(wave),) and back.dtype == np.float32
    energy = np.convolve(back**2, np.ones(160), mode="same")
    assert abs(energy.argmax() / 16000 - 0.5) < 0.03
    relat = codec.encode_audio(back)
    # Griffin-Lim estimates phase: the mel magnitudes come back close, not exact
    assert torch.mean(torch.abs(relat - lat)).item() < 0.25


def test_audio_decode_does_not_depend_on_the_global_random_state():
    codec = PatchCodec(CFG)
    lat = codec.encode_audio(_click(16000, 0.5, 1.0))
    torch.manual_seed(1)
    first = codec.decode_audio(lat)
    torch.manual_seed(2)
    torch.rand(100)
    np.testing.assert_array_equal(codec.decode_audio(lat), first)
    # and decoding leaves the caller's random stream where it was
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    codec.decode_audio(lat)
    torch.testing.assert_close(torch.rand(3), expected)


def test_default_codec_is_the_patch_codec_for_both_modalities():
    codec = build_codec(CodecConfig(patch=CFG), 16000)
    assert codec.name == "patch" and codec.audio_decoder == "griffin-lim"
    assert codec.video is codec.audio  # one PatchCodec serves both
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    wave = _click(16000, 0.5, 1.0)
    torch.testing.assert_close(codec.encode_video(frames), PatchCodec(CFG).encode_video(frames))
    torch.testing.assert_close(codec.encode_audio(wave), PatchCodec(CFG).encode_audio(wave))


def test_the_clip_sample_rate_reaches_the_patch_codec():
    codec = build_codec(CodecConfig(patch=CFG), 8000)
    assert codec.audio_frame_rate == 8000 / CFG.hop


@pytest.mark.parametrize(("video", "audio"), [("svd-but-misspelt", "patch"), ("patch", "mp3")])
def test_build_codec_rejects_unknown_names(video, audio):
    with pytest.raises(ValueError, match=r"unknown (video|audio) codec"):
        build_codec(CodecConfig(video=video, audio=audio), 16000)

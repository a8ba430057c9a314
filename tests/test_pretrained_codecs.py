"""The `svd` and `audioldm2` codecs, on tiny random models of the real classes.

Each model is saved with `save_pretrained` in the Hugging Face snapshot layout (vae/, vocoder/)
and loaded back through the project's builder (`tasks.encoding.codec_from`), then compared with
calling the diffusers / transformers model directly. The mel front end is compared with a
reference computed by hand from the Slaney mel definitions.
"""

import json
import math
import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from jointdit.codecs import CodecConfig, build_codec
from jointdit.codecs.audioldm2 import MEL, AudioLDM2AudioCodec, AudioLDM2CodecConfig
from jointdit.codecs.logmel import LogMel
from jointdit.codecs.svd import SVDCodecConfig, SVDVideoCodec
from tasks.encoding import codec_from
from tasks.params import load_params
from tests.pretrained_fixtures import SR, audio_vae, save_svd_vae, save_vocoder

LOG_MEL = LogMel(MEL)  # AudioLDM's front end
SVD_SCALE = 0.25  # not the default 0.18215: a missed or doubled scaling shows
AUDIO_SCALE = 0.5


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Tiny random SVD and AudioLDM2 snapshots: {name: directory}."""
    root = tmp_path_factory.mktemp("snapshots")
    save_svd_vae(root / "svd" / "vae", SVD_SCALE)
    vae = audio_vae(AUDIO_SCALE)
    vae.save_pretrained(root / "audioldm2" / "vae")
    vae.save_pretrained(root / "bare_vae")  # a VAE directory on its own: no vocoder
    save_vocoder(root / "audioldm2" / "vocoder")
    (root / "audioldm2" / "model_index.json").write_text('{"_class_name": "AudioLDM2Pipeline"}')
    return {
        "svd": root / "svd",
        "audioldm2": root / "audioldm2",
        "bare_vae": root / "bare_vae",
        "root": root,
    }


def svd(snapshots, **kw) -> SVDVideoCodec:
    return SVDVideoCodec(SVDCodecConfig(path=str(snapshots["svd"]), **kw))


def audioldm2(snapshots, where="audioldm2", **kw) -> AudioLDM2AudioCodec:
    return AudioLDM2AudioCodec(AudioLDM2CodecConfig(path=str(snapshots[where]), **kw), SR)


def frames(t=5, h=16, w=24, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


# -- svd -----------------------------------------------------------------------------------------


def direct_svd(snapshots) -> AutoencoderKLTemporalDecoder:
    return AutoencoderKLTemporalDecoder.from_pretrained(snapshots["svd"] / "vae").eval()


@pytest.mark.parametrize("encode_chunk", [1, 2, 8])
def test_svd_latents_are_the_scaled_posterior_mode(snapshots, encode_chunk):
    codec = svd(snapshots, encode_chunk=encode_chunk)
    assert codec.video_channels == 4 and codec.downsample == 2 and codec.scaling_factor == SVD_SCALE
    x = frames()
    latents = codec.encode_video(x)
    assert latents.shape == (5, 4, 8, 12) and latents.dtype == torch.float32
    pixels = torch.from_numpy(x).float().permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        expected = direct_svd(snapshots).encode(pixels).latent_dist.mode() * SVD_SCALE
    # frames encode independently: any chunking gives the one-call latents
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decode_chunk", [1, 2, 5, 8])
def test_svd_decodes_in_chunks_of_decode_chunk_frames(snapshots, decode_chunk):
    codec = svd(snapshots, decode_chunk=decode_chunk)
    latents = codec.encode_video(frames())
    video = codec.decode_video(latents)
    assert video.shape == (5, 16, 24, 3) and video.dtype == np.uint8
    model = direct_svd(snapshots)
    with torch.no_grad():  # the temporal decoder called on each chunk of frames, unscaled
        chunks = [
            model.decode(z, num_frames=len(z)).sample
            for z in (latents / SVD_SCALE).split(decode_chunk)
        ]
    expected = ((torch.cat(chunks).clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1)
    diff = np.abs(video.astype(int) - expected.numpy().astype(int))
    assert diff.max() <= 1  # a float rounding at a .5 boundary at most


def test_svd_temporal_decoder_mixes_the_frames_of_a_chunk(snapshots):
    """What chunking costs: a chunk is decoded as one clip, so chunk size changes the output
    (the reason decode_chunk equal to the clip's frame count is the exact setting)."""
    latents = svd(snapshots).encode_video(frames())
    whole = svd(snapshots, decode_chunk=5).decode_video(latents)
    single = svd(snapshots, decode_chunk=1).decode_video(latents)
    assert np.abs(whole.astype(int) - single.astype(int)).max() > 1


def test_svd_rejects_frames_not_divisible_by_its_downsampling(snapshots):
    with pytest.raises(ValueError, match="not divisible by the SVD VAE's 2x"):
        svd(snapshots).encode_video(frames(h=15))


# -- audioldm2: mel front end --------------------------------------------------------------------


def slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    linear = f * 3 / 200  # 200/3 Hz per mel below 1 kHz
    log = 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4)
    return np.where(f < 1000, linear, log)


def slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def reference_filterbank() -> np.ndarray:
    """(513, 64) triangles between Slaney-spaced edges over 0-8 kHz, each scaled to unit area
    (2 / bandwidth): the definition librosa.filters.mel implements by default."""
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(0), slaney_hz_to_mel(8000), 66))
    freqs = np.linspace(0, SR / 2, 513)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return (tri * 2 / (hi - lo)).T


def test_mel_filterbank_is_the_slaney_one():
    np.testing.assert_allclose(LOG_MEL.filterbank.numpy(), reference_filterbank(), atol=1e-6)


def test_log_mel_of_a_1khz_tone_matches_the_hand_computed_spectrum():
    """1 kHz sits exactly on FFT bin 64 (16000 / 1024 = 15.625 Hz): the periodic-Hann magnitude
    spectrum of an amplitude-A tone is A N / 4 there and A N / 8 on its two neighbours, zero
    elsewhere, so each mel band is a weighted sum of three numbers."""
    amp, n = 0.5, 1024
    mel = LOG_MEL(torch.from_numpy(tone(1000, 1.0, amp)))
    assert mel.shape == (100, 64)  # 16000 samples / hop 160
    fb = reference_filterbank()
    expected = fb[64] * amp * n / 4 + (fb[63] + fb[65]) * amp * n / 8
    np.testing.assert_allclose(mel[50].numpy(), np.log(np.maximum(expected, 1e-5)), atol=1e-3)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_log_mel_peaks_in_the_band_centred_on_the_tone(freq):
    mel = LOG_MEL(torch.from_numpy(tone(freq, 0.5)))
    centres = slaney_mel_to_hz(np.linspace(0, slaney_hz_to_mel(8000), 66))[1:-1]
    band = int(mel[25].argmax())
    assert abs(band - int(np.abs(centres - freq).argmin())) <= 1
    assert abs(centres[band] - freq) < (centres[band + 1] - centres[band - 1])


def test_log_mel_frame_t_is_centred_on_sample_160t_plus_80():
    wave = np.zeros(SR, dtype=np.float32)
    wave[160 * 40 + 80] = 1.0  # an impulse at the centre of frame 40
    mel = LOG_MEL(torch.from_numpy(wave))
    energy = mel.exp().sum(1)
    assert int(energy.argmax()) == 40
    torch.testing.assert_close(energy[39], energy[41])  # the Hann window is symmetric about it


def test_log_mel_floor_is_log_1e_minus_5():
    mel = LOG_MEL(torch.zeros(SR))
    torch.testing.assert_close(mel, torch.full((100, 64), math.log(1e-5)))


# -- audioldm2: VAE and vocoder ------------------------------------------------------------------


def direct_vae(snapshots) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(snapshots["audioldm2"] / "vae").eval()


def test_audio_latents_are_the_scaled_posterior_mode_as_channels_bins_frames(snapshots):
    codec = audioldm2(snapshots)
    assert (codec.audio_channels, codec.audio_bins, codec.audio_frame_rate) == (8, 16, 25.0)
    wave = tone(440, 1.28)  # 128 mel frames
    latents = codec.encode_audio(wave)
    assert latents.shape == (8, 16, 32) and latents.dtype == torch.float32
    mel = LOG_MEL(torch.from_numpy(wave))[None, None]  # (1, 1, time, mel)
    with torch.no_grad():
        z = direct_vae(snapshots).encode(mel).latent_dist.mode() * AUDIO_SCALE  # (1, 8, 32, 16)
    torch.testing.assert_close(latents, z[0].transpose(1, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("where", "vocoder", "decoder"),
    [
        ("audioldm2", True, "hifigan"),
        ("audioldm2", False, "griffin-lim"),
        ("bare_vae", True, "griffin-lim"),  # a VAE directory alone has no vocoder
    ],
)
def test_audio_decode_length_range_and_which_decoder(snapshots, where, vocoder, decoder):
    codec = audioldm2(snapshots, where, vocoder=vocoder, griffin_lim_iters=4)
    assert codec.audio_decoder == decoder
    wave = tone(440, 1.28) + np.float32(0)
    wave = np.concatenate([wave, np.zeros(100, np.float32)])  # a tail short of a latent frame
    latents = codec.encode_audio(wave)
    back = codec.decode_audio(latents)
    assert back.dtype == np.float32 and back.shape == (32 * 4 * 160,)
    assert abs(len(back) - len(wave)) < 4 * 160  # within one latent frame of the input
    assert np.abs(back).max() <= 1.0 and np.isfinite(back).all()
    if decoder == "hifigan":  # the snapshot's vocoder on the VAE's mel, cut to 160 per frame
        vocoder_model = SpeechT5HifiGan.from_pretrained(snapshots["audioldm2"] / "vocoder").eval()
        with torch.no_grad():
            mel = direct_vae(snapshots).decode(latents.transpose(1, 2)[None] / AUDIO_SCALE).sample
            expected = vocoder_model(mel[:, 0])[0][: len(back)].clamp(-1, 1)
        np.testing.assert_allclose(back, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_griffin_lim_inverts_the_mel_keeping_timing(snapshots):
    """The fallback alone, on a real log-mel (a random VAE's mel says nothing about inversion).
    Without the half-hop shift between GriffinLim's centred frames and AudioLDM's framing the
    sound comes back ~80 samples early and its mel ~0.5 (log units) off."""
    torch.manual_seed(0)  # Griffin-Lim starts from random phases
    codec = audioldm2(snapshots, vocoder=False, griffin_lim_iters=32)
    wave = np.zeros(SR, dtype=np.float32)
    t = np.arange(800) / SR
    wave[8000:8800] = 0.8 * np.sin(2 * np.pi * 660 * t) * np.exp(-t / 0.01)  # a click at 0.5 s
    mel = codec.mel(torch.from_numpy(wave))
    back = codec.mel.invert(mel).numpy()
    assert back.shape == wave.shape
    envelope = [np.convolve(w**2, np.ones(64), mode="same") for w in (wave, back)]
    lags = np.arange(-200, 201)
    lag = lags[np.argmax([np.dot(envelope[0], np.roll(envelope[1], -k)) for k in lags])]
    assert abs(lag) <= 20
    remel = codec.mel(torch.from_numpy(back))
    loud = mel > math.log(1e-3)  # phase is estimated: compare where there is sound
    assert (remel[loud] - mel[loud]).abs().mean() < 0.3


def test_audio_shorter_than_a_latent_frame_is_a_clear_error(snapshots):
    with pytest.raises(ValueError, match="shorter than one latent frame"):
        audioldm2(snapshots).encode_audio(np.zeros(639, np.float32))


def test_audioldm2_needs_16khz_clips(snapshots):
    cfg = AudioLDM2CodecConfig(path=str(snapshots["audioldm2"]))
    with pytest.raises(ValueError, match=r"22050 Hz.*16000 Hz"):
        AudioLDM2AudioCodec(cfg, 22050)


# -- dtype ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_take_and_give_float32(snapshots, dtype):
    video, audio = svd(snapshots, dtype=dtype), audioldm2(snapshots, dtype=dtype)
    weights = getattr(torch, dtype)
    assert next(video.vae.parameters()).dtype == weights
    assert next(audio.vae.parameters()).dtype == weights
    assert next(audio.vocoder.parameters()).dtype == weights
    x, wave = frames(t=2), tone(440, 0.64)
    lat_v, lat_a = video.encode_video(x), audio.encode_audio(wave)
    assert lat_v.dtype == lat_a.dtype == torch.float32
    # the same weights as the float32 codec, rounded: latents close to its latents
    ref_v, ref_a = svd(snapshots).encode_video(x), audioldm2(snapshots).encode_audio(wave)
    tol = 0.05 * max(ref_v.abs().max(), ref_a.abs().max()).item()
    torch.testing.assert_close(lat_v, ref_v, atol=tol, rtol=0.05)
    torch.testing.assert_close(lat_a, ref_a, atol=tol, rtol=0.05)
    assert video.decode_video(lat_v).dtype == np.uint8
    back = audio.decode_audio(lat_a)
    assert back.dtype == np.float32 and back.shape == (len(wave),)


# -- loading: the builder, and what it refuses ---------------------------------------------------


def params_with(snapshots, **codec) -> dict:
    params = load_params()
    params["codec"].update(codec)
    return params


def test_params_build_the_svd_audioldm2_pair(snapshots):
    params = params_with(
        snapshots,
        video="svd",
        audio="audioldm2",
        svd={"path": str(snapshots["svd"]), "decode_chunk": 2},
        audioldm2={"path": str(snapshots["audioldm2"] / "vae")},  # the vae/ folder itself
    )
    codec = codec_from(params)
    assert codec.name == "svd+audioldm2" and codec.audio_decoder == "hifigan"
    assert (codec.video_channels, codec.audio_channels, codec.audio_bins) == (4, 8, 16)
    assert codec.audio_frame_rate == 25.0
    assert codec.encode_video(frames(t=3)).shape == (3, 4, 8, 12)
    assert codec.encode_audio(tone(440, 2.0)).shape == (8, 16, 50)  # 2 s: 200 mel frames / 4


def test_mixed_pairs_keep_the_patch_codec_for_the_other_modality(snapshots):
    params = params_with(
        snapshots, video="patch", audio="audioldm2", audioldm2={"path": str(snapshots["audioldm2"])}
    )
    codec = codec_from(params)
    assert codec.name == "patch+audioldm2" and codec.video.name == "patch"
    assert codec.video_channels == 3 * params["codec"]["patch"]["video_factor"] ** 2


def test_the_old_codec_name_form_is_a_clear_error():
    params = load_params()
    params["codec"]["name"] = "patch"
    with pytest.raises(
        ValueError, match=r"codec\.name was replaced by codec\.video and codec\.audio"
    ):
        codec_from(params)


def test_unknown_codec_keys_are_named():
    params = load_params()
    params["codec"]["svd"]["paht"] = "/x"
    with pytest.raises(ValueError, match=r"codec.svd: unknown keys \['paht'\]"):
        codec_from(params)


def build_one(kind: str, path) -> object:
    """The builder with `kind` (svd | audioldm2) at `path`, the patch codec for the other side."""
    if kind == "svd":
        return build_codec(CodecConfig(video="svd", svd=SVDCodecConfig(path=str(path))), SR)
    cfg = CodecConfig(audio="audioldm2", audioldm2=AudioLDM2CodecConfig(path=str(path)))
    return build_codec(cfg, SR)


@pytest.mark.parametrize(("kind", "other"), [("svd", "audioldm2"), ("audioldm2", "svd")])
def test_loading_errors_name_the_path_and_what_was_expected(snapshots, tmp_path, kind, other):
    expected = {"svd": "AutoencoderKLTemporalDecoder", "audioldm2": "AutoencoderKL"}[kind]
    with pytest.raises(ValueError, match=rf"codec\.{kind}\.path is empty.*{expected}"):
        build_one(kind, "")
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} is not a directory")):
        build_one(kind, missing)
    with pytest.raises(FileNotFoundError, match=r"not a directory.*never downloaded"):
        build_one(kind, "stabilityai/stable-video-diffusion-img2vid")  # a repo id: no download
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{empty}/vae/config.json exists")):
        build_one(kind, empty)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    message = f"{unet}/config.json describes a UNet2DConditionModel, not the {expected} "
    with pytest.raises(ValueError, match=re.escape(message)):
        build_one(kind, unet)
    with pytest.raises(ValueError, match=rf"describes a \w+, not the {expected} expected"):
        build_one(kind, snapshots[other])  # the other codec's snapshot


def test_a_wrong_vocoder_is_refused(snapshots, tmp_path):
    root = tmp_path / "snap"
    AutoencoderKL.from_pretrained(snapshots["audioldm2"] / "vae").save_pretrained(root / "vae")
    SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=80,
            upsample_initial_channel=16,
            upsample_rates=[4, 4],
            upsample_kernel_sizes=[8, 8],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]],
        )
    ).save_pretrained(root / "vocoder")
    with pytest.raises(
        ValueError, match=re.escape(f"{root}/vocoder: a vocoder of 64 mel bins") + ".*got 80"
    ):
        AudioLDM2AudioCodec(AudioLDM2CodecConfig(path=str(root)), SR)
    (root / "vocoder" / "config.json").write_text(json.dumps({"architectures": ["UNetModel"]}))
    with pytest.raises(ValueError, match="describes a UNetModel, not the SpeechT5HifiGan"):
        AudioLDM2AudioCodec(AudioLDM2CodecConfig(path=str(root)), SR)
    (root / "vocoder" / "config.json").unlink()  # a vocoder/ folder half copied
    with pytest.raises(FileNotFoundError, match=re.escape(f"{root}/vocoder has no config.json")):
        AudioLDM2AudioCodec(AudioLDM2CodecConfig(path=str(root)), SR)
    # vocoder: false never looks at it
    codec = AudioLDM2AudioCodec(AudioLDM2CodecConfig(path=str(root), vocoder=False), SR)
    assert codec.audio_decoder == "griffin-lim"


def test_a_bad_dtype_is_named(snapshots):
    with pytest.raises(ValueError, match=r"codec\.svd\.dtype 'fp8'"):
        svd(snapshots, dtype="fp8")


def test_the_served_model_builds_the_training_codec_and_says_which_decoder(snapshots, tmp_path):
    """register logs params.codec as is; the pyfunc builds it with the same builder."""
    import pandas as pd
    from PIL import Image

    from jointdit.checkpoint import save_checkpoint
    from jointdit.model.jointdit import JointDiT
    from tasks.model_config import model_config
    from tasks.pyfunc_model import JointDiTPyfunc

    params = params_with(
        snapshots,
        video="svd",
        audio="audioldm2",
        svd={"path": str(snapshots["svd"])},
        audioldm2={"path": str(snapshots["audioldm2"])},
    )
    params["clip"].update(duration_s=1.28, fps=4.0)
    small = {"dim": 32, "depth": 1, "heads": 2, "audio_patch_f": 4, "audio_patch_t": 2}
    params["model"].update(small)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", JointDiT(model_config(params, codec_from(params))))
    serving = {"clip": params["clip"], "codec": params["codec"], "sample": params["sample"]}
    (tmp_path / "serving.json").write_text(json.dumps(serving))
    image = tmp_path / "image.png"
    Image.fromarray(frames(t=1, h=32, w=32)[0]).save(image)

    served = JointDiTPyfunc()
    artifacts = {"checkpoint": str(tmp_path / "ckpt"), "serving": str(tmp_path / "serving.json")}
    served.load_context(type("Context", (), {"artifacts": artifacts})())
    assert served.codec.name == "svd+audioldm2"
    request = pd.DataFrame([{"image": str(image), "steps": 1}])
    out = served.predict(None, request, {"output": "arrays"})[0]
    assert out["audio_decoder"] == "hifigan"
    assert out["frames"].shape == (5, 32, 32, 3) and out["frames"].dtype == np.uint8
    assert out["audio"].shape == (32 * 640,) and out["audio"].dtype == np.float32

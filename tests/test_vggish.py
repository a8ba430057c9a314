import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from jointdit.metrics.vggish import (
    VGGish,
    VGGishEmbedder,
    hertz_to_mel,
    log_mel_spectrogram,
    stft_magnitude,
    vggish_examples,
)

PORT_KEYS = {
    f"{block}.{i}.{p}"
    for block, indices in (("features", (0, 3, 6, 8, 11, 13)), ("embeddings", (0, 2, 4)))
    for i in indices
    for p in ("weight", "bias")
}


@pytest.fixture(scope="module")
def model() -> VGGish:
    torch.manual_seed(0)
    return VGGish().eval()


@pytest.fixture(scope="module")
def weight_files(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vggish")
    torch.save(model.state_dict(), directory / "v.pth")
    save_file(model.state_dict(), str(directory / "v.safetensors"))
    return directory


def tone(amplitude: float, seconds: float = 2.0, sample_rate: int = 16_000) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return amplitude * np.sin(2 * np.pi * 1000.0 * t)


def test_parameter_count_and_names_match_the_port(model):
    assert sum(p.numel() for p in model.parameters()) == 72_141_184
    state = model.state_dict()
    assert set(state) == PORT_KEYS
    assert state["features.0.weight"].shape == (64, 1, 3, 3)
    assert state["embeddings.0.weight"].shape == (4096, 512 * 6 * 4)
    assert state["embeddings.4.weight"].shape == (128, 4096)


def test_forward_shape_and_determinism(model):
    x = torch.randn(2, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (2, 128)
    assert torch.equal(first, second)
    # No trailing ReLU: the pre-activation embedding has negative entries.
    assert (first < 0).any()


def test_features_are_flattened_in_tensorflow_order():
    model = VGGish()
    # Channel c at (h, w) of the (6, 4, 512) NHWC map is input h*4*512 + w*512 + c of the first
    # fully connected layer; encode that index as the feature value.
    h, w, c = torch.meshgrid(torch.arange(6), torch.arange(4), torch.arange(512), indexing="ij")
    nhwc = (h * 4 * 512 + w * 512 + c).float()

    class Fixed(nn.Module):
        def forward(self, x):
            return nhwc.permute(2, 0, 1).expand(len(x), -1, -1, -1)

    model.features, model.embeddings = Fixed(), nn.Identity()
    out = model(torch.zeros(2, 96, 64))
    assert torch.equal(out, torch.arange(512 * 6 * 4).float().expand(2, -1))


def test_embedder_loads_pth_and_safetensors(model, weight_files):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 32_000)
    with torch.no_grad():
        expected = model(torch.from_numpy(vggish_examples(audio, 16_000))).double().numpy()
    from_pth = VGGishEmbedder(weight_files / "v.pth").embed(audio, 16_000)
    assert from_pth.dtype == np.float64
    assert from_pth.shape == (2, 128)
    np.testing.assert_array_equal(from_pth, expected)
    # One example per batch: the same numbers up to float32 rounding of a different batch.
    embedder = VGGishEmbedder(weight_files / "v.safetensors", batch_size=1)
    np.testing.assert_allclose(embedder.embed(audio, 16_000), expected, rtol=1e-5, atol=1e-6)
    assert embedder.embed(np.zeros(15_599), 16_000).shape == (0, 128)


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_embedder_refuses_weights_that_do_not_fit(model, tmp_path, damage):
    state = dict(model.state_dict())
    if damage == "missing":
        del state["embeddings.4.bias"]
    else:
        state["embeddings.4.bias"] = torch.zeros(127)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"bad\.pth"):
        VGGishEmbedder(path)


def test_silence_gives_the_log_offset_everywhere():
    examples = vggish_examples(np.zeros(32_000), 16_000)
    assert examples.shape == (2, 96, 64)
    assert examples.dtype == np.float32
    assert np.all(examples == np.float32(math.log(0.01)))
    # (C, S) is averaged over channels: opposite channels cancel to silence.
    noise = np.random.default_rng(0).normal(size=16_000)
    assert np.all(vggish_examples(np.stack([noise, -noise]), 16_000) == np.float32(math.log(0.01)))


@pytest.mark.parametrize(("samples", "count"), [(32_000, 2), (15_599, 0), (15_600, 1), (300, 0)])
def test_example_count(samples, count):
    # 15,600 samples = 1 + (15,600 - 400) // 160 = 96 frames, exactly one example.
    assert vggish_examples(np.zeros(samples), 16_000).shape == (count, 96, 64)


def test_hertz_to_mel_is_htk():
    assert hertz_to_mel(700.0) == pytest.approx(1127.0 * math.log(2.0), rel=1e-12)
    assert hertz_to_mel(0.0) == 0.0


def test_tone_magnitude_and_band():
    amplitude = 0.1
    # Bin 32 of a 512-point FFT at 16 kHz is exactly 1 kHz. The tone's mirror image at -1 kHz
    # leaks nothing into it (400 samples hold whole periods of both the window and the tone's
    # doubled frequency), so every frame reads A * sum(window) / 2 = A * 200 / 2.
    magnitude = stft_magnitude(tone(amplitude))
    np.testing.assert_allclose(magnitude[:, 32], 100 * amplitude, rtol=1e-9)
    # Band edges run from mel(125) = 185.17 to mel(7500) = 2773.33 in 65 steps of 39.818 mel;
    # band i is centred on edge i + 1. mel(1000) = 999.99 lies between the centres of band 19
    # (981.53) and band 20 (1021.35), nearer band 19, which also gets more of the main lobe.
    log_mel = log_mel_spectrogram(tone(amplitude), 16_000)
    assert np.all(log_mel.argmax(axis=1) == 19)
    # Magnitudes scale with the amplitude, so doubling it adds ln 2 where the 0.01 offset is
    # negligible (the three loudest bands, above 1).
    loud = log_mel.mean(axis=0) > 0
    assert loud.sum() == 3
    louder = log_mel_spectrogram(tone(2 * amplitude), 16_000)
    np.testing.assert_allclose(louder[:, loud] - log_mel[:, loud], math.log(2.0), atol=0.01)


def test_other_rates_are_resampled_to_16khz():
    at_16k = log_mel_spectrogram(tone(0.1), 16_000)
    at_44k = log_mel_spectrogram(tone(0.1, sample_rate=44_100), 44_100)
    assert at_44k.shape == at_16k.shape == (198, 64)
    np.testing.assert_allclose(at_44k, at_16k, atol=0.01)

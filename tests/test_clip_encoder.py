"""The CLIP encoder loads tiny open_clip models from local files exactly as it would ViT-B-16."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from jointdit.encoders.clip import CLIPConfig, CLIPEncoder
from tests.conftest import TINY_CLIP_NAME as NAME


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]


@pytest.mark.parametrize("source", ["weights.safetensors", "weights.pth", "snapshot"])
def test_encoder_reproduces_the_saved_model(tiny_clip, source):
    model, root = tiny_clip
    encoder = CLIPEncoder(CLIPConfig(model=NAME, pretrained=str(root / source), batch_size=2))
    images, texts = _images(), ["a red ball", "a blue ball bouncing", "noise"]

    got_images = encoder.encode_images(images)
    got_texts = encoder.encode_texts(texts)

    _, _, preprocess = open_clip.create_model_and_transforms(NAME)
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.fromarray(i)) for i in images])
        want_images = model.encode_image(pixels, normalize=True).double().numpy()
        tokens = open_clip.get_tokenizer(NAME)(texts)
        want_texts = model.encode_text(tokens, normalize=True).double().numpy()
    assert got_images.shape == (3, 16) and got_texts.shape == (3, 16)
    np.testing.assert_allclose(got_images, want_images, atol=1e-6)
    np.testing.assert_allclose(got_texts, want_texts, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got_images, axis=1), 1.0, atol=1e-6)
    # Different images give different embeddings: the weights are not a constant map.
    assert np.abs(got_images[0] - got_images[1]).max() > 1e-3


def test_missing_checkpoint_is_refused_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint not found"):
        CLIPEncoder(CLIPConfig(model=NAME, pretrained=str(tmp_path / "nope.bin")))
    with pytest.raises(FileNotFoundError, match=r"open_clip_config\.json"):
        CLIPEncoder(CLIPConfig(model=NAME, pretrained=str(tmp_path)))


def test_weights_of_another_model_are_refused(tiny_clip, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(ValueError, match=r"wrong\.safetensors"):
        CLIPEncoder(CLIPConfig(model=NAME, pretrained=str(wrong)))

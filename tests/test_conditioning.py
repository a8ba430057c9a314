"""CLIP conditioning: token features, the Conditioner, the cache stage and the served model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from jointdit.checkpoint import save_checkpoint
from jointdit.conditioning import Conditioner, ConditioningConfig, conditioning_dims
from jointdit.data.media import write_clip
from jointdit.data.shards import build_shards, load_split, shard_metadata, write_index
from jointdit.data.synthetic import SyntheticConfig, make_clip
from jointdit.encoders.clip import CLIPConfig, CLIPEncoder
from jointdit.flow import Batch, FlowConfig, drop_conditions
from jointdit.model.jointdit import JointDiT
from jointdit.text import tokenize
from tests.conftest import TINY, TINY_CLIP_NAME, randomize, tiny_inputs

REPO = Path(__file__).resolve().parent.parent
CLIP_TEXT_WIDTH, CLIP_EMBED = 32, 16  # tests/conftest.py TINY_CLIP


def _clip_cfg(root: Path, source: str = "weights.safetensors") -> ConditioningConfig:
    return ConditioningConfig(
        encoder="clip", clip_model=TINY_CLIP_NAME, clip_pretrained=str(root / source)
    )


def test_token_features_are_the_text_towers_tokens(tiny_clip):
    model, root = tiny_clip
    encoder = CLIPEncoder(CLIPConfig(model=TINY_CLIP_NAME, pretrained=str(root / "snapshot")))
    texts = ["a red ball bounces", "", "noise"]
    features = encoder.encode_token_features(texts, length=10)

    assert features.shape == (3, 10, CLIP_TEXT_WIDTH) and features.dtype == np.float32
    tokens = open_clip.get_tokenizer(TINY_CLIP_NAME)(texts)
    end = tokens.argmax(-1)
    # CLIP's pooled text embedding is the end-of-text token's feature, projected: the
    # features are the tower's own, at the right positions.
    with torch.no_grad():
        pooled = model.encode_text(tokens).numpy()
    for i in (0, 2):
        np.testing.assert_allclose(
            features[i, end[i]] @ model.text_projection.detach().numpy(), pooled[i], atol=1e-5
        )
        assert np.abs(features[i, : end[i] + 1]).min(axis=1).max() > 0  # real tokens kept
        assert not features[i, end[i] + 1 :].any()  # padding after end-of-text is zero
    assert not features[1].any()  # an empty caption is the null text
    # longer than the tokenizer's context: zero-padded
    assert encoder.encode_token_features(["a"], length=20)[:, 16:].sum() == 0


def test_conditioning_dims_come_from_the_architecture_without_weights(tiny_clip, tmp_path):
    _, root = tiny_clip
    assert conditioning_dims(ConditioningConfig()) == (0, 0)
    for source in ("weights.safetensors", "snapshot"):
        assert conditioning_dims(_clip_cfg(root, source)) == (CLIP_TEXT_WIDTH, CLIP_EMBED)
    # ViT-B-16 by name: 512-wide text tower and embedding (never loaded here)
    big = ConditioningConfig(encoder="clip", clip_pretrained=str(tmp_path / "absent.bin"))
    assert conditioning_dims(big) == (512, 512)
    with pytest.raises(ValueError, match="dashes"):
        conditioning_dims(dataclasses.replace(big, clip_model="ViT_B_16"))
    with pytest.raises(ValueError, match="clip_pretrained is empty"):
        ConditioningConfig(encoder="clip")
    with pytest.raises(ValueError, match="choose from"):
        ConditioningConfig(encoder="t5")


def test_conditioner_hashed_and_clip(tiny_clip):
    _, root = tiny_clip
    captions = ["a red ball", ""]
    frames = [np.full((16, 16, 3), v, np.uint8) for v in (30, 200)]

    hashed = Conditioner(ConditioningConfig(), text_len=4, text_vocab=50).encode(captions, frames)
    assert set(hashed) == {"text"}
    assert torch.equal(hashed["text"], tokenize(captions, 50, 4))

    clip = Conditioner(_clip_cfg(root), text_len=6, text_vocab=50)
    out = clip.encode(captions, frames)
    assert out["text"].shape == (2, 6, CLIP_TEXT_WIDTH) and out["text"].dtype == torch.float32
    assert out["image_embedding"].shape == (2, CLIP_EMBED)
    np.testing.assert_allclose(
        out["image_embedding"].numpy(), clip.clip.encode_images(frames), atol=1e-6
    )
    assert not out["text"][1].any()


def _clip_model_cfg():
    return dataclasses.replace(TINY, text_embed_dim=CLIP_TEXT_WIDTH, image_embed_dim=CLIP_EMBED)


def test_model_attends_to_clip_text_and_image_context():
    torch.manual_seed(0)
    model = randomize(JointDiT(_clip_model_cfg())).eval()
    x = tiny_inputs()
    g = torch.Generator().manual_seed(1)
    x["text"] = torch.randn(2, TINY.text_len, CLIP_TEXT_WIDTH, generator=g)
    emb = torch.randn(2, CLIP_EMBED, generator=g)
    with torch.no_grad():
        v, a = model(**x, image_embedding=emb)
        v_text, _ = model(**{**x, "text": x["text"] * 0}, image_embedding=emb)
        v_img, _ = model(**x, image_embedding=emb * 0)
    assert v.shape == x["video"].shape and a.shape == x["audio"].shape
    assert (v - v_text).abs().max() > 1e-3  # the text features reach the output
    assert (v - v_img).abs().max() > 1e-3  # so does the image embedding


def test_condition_dropout_zeroes_whole_feature_rows():
    g = torch.Generator().manual_seed(0)
    n = 64
    batch = Batch(
        torch.ones(n, 2, 3, 4, 4),
        torch.ones(n, 1, 8, 6),
        torch.ones(n, 3, 4, 4),
        torch.ones(n, 5, CLIP_TEXT_WIDTH),
        torch.ones(n, CLIP_EMBED),
    )
    out = drop_conditions(batch, FlowConfig(p_drop_image=0.3, p_drop_text=0.3), g)
    text_kept = out.text.flatten(1).amax(1)
    image_kept = out.image.flatten(1).amax(1)
    # each sample keeps or drops its whole text; the embedding goes with the image latent
    assert torch.equal(out.text.flatten(1).amin(1), text_kept)
    assert torch.equal(out.image_embedding.amax(1), image_kept)
    assert 0 < text_kept.sum() < n and 0 < image_kept.sum() < n


def _workspace(root: Path, conditioning: dict) -> dict:
    """A cache-stage workspace: two synthetic clips and a validated manifest row each."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["clip"] = {
        "duration_s": 1.0,
        "hop_s": 1.0,
        "max_windows_per_clip": 1,
        "fps": 4.0,
        "width": 16,
        "height": 16,
        "sample_rate": 16000,
    }
    params["model"].update(text_len=6)
    params["conditioning"] = conditioning
    cfg = SyntheticConfig(duration_s=1.0, fps=4.0, width=16, height=16)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    rows = []
    for i in range(2):
        clip = make_clip(cfg, i)
        write_clip(raw / f"c{i}.mp4", clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
        rows.append({"path": f"c{i}.mp4", "start_s": 0.0, "caption": clip.caption})
    return params, rows


def test_cache_encodes_clip_context_per_window(tiny_clip, tmp_path, monkeypatch):
    from jointdit.data.media import read_windows
    from tasks.cache import encode_windows
    from tasks.encoding import codec_from, conditioning_from
    from tasks.params import clip_spec

    _, root = tiny_clip
    monkeypatch.chdir(tmp_path)
    clip_section = dataclasses.asdict(_clip_cfg(root))
    params, rows = _workspace(tmp_path, clip_section)
    conditioner = Conditioner(conditioning_from(params), 6, params["model"]["text_vocab"])
    spec = clip_spec(params)
    items = list(encode_windows(rows, spec, codec_from(params), conditioner))

    assert len(items) == 2
    for row, item in zip(rows, items, strict=True):
        assert item["text"].shape == (6, CLIP_TEXT_WIDTH)
        assert item["image_embedding"].shape == (CLIP_EMBED,)
        first = read_windows(Path("data/raw") / row["path"], [0.0], spec)[0].frames[0]
        want = conditioner.encode([row["caption"]], [first])
        assert torch.equal(item["text"], want["text"][0])
        assert torch.equal(item["image_embedding"], want["image_embedding"][0])
    assert not torch.equal(items[0]["image_embedding"], items[1]["image_embedding"])


def _encode(row: dict, value: float) -> dict:
    return {
        "video": torch.full((1, 3, 2, 2), value),
        "image": torch.zeros(3, 2, 2),
        "audio": torch.zeros(1, 4, 2),
        "text": torch.tensor([row["i"]]),
    }


def test_shards_encoded_another_way_are_rebuilt(tmp_path):
    rows = [{"i": i, "path": f"c{i}.mp4"} for i in range(3)]
    calls = []

    def encoder(value):
        def encode(rs):
            calls.extend(r["i"] for r in rs)
            return (_encode(r, value) for r in rs)

        return encode

    build_shards(tmp_path, "train", rows, encoder(1.0), 2, encoding="hashed")
    assert shard_metadata(tmp_path / "train-0000.safetensors")["encoding"] == "hashed"
    calls.clear()
    build_shards(tmp_path, "train", rows, encoder(1.0), 2, encoding="hashed")
    assert calls == []  # same rows, same encoding: reused
    entries = build_shards(tmp_path, "train", rows, encoder(2.0), 2, encoding="clip")
    assert calls == [0, 1, 2]  # same rows, another encoding: stale, rebuilt
    write_index(tmp_path, {"shards": entries})
    assert torch.equal(load_split(tmp_path, "train").batch.video, torch.full((3, 1, 3, 2, 2), 2.0))


def test_served_model_encodes_the_users_image_and_prompt_with_clip(tiny_clip, tmp_path):
    """The sample flow's model: CLIP from the registered artifact, not the training path."""
    from tasks.pyfunc_model import JointDiTPyfunc

    _, root = tiny_clip
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["clip"].update(duration_s=1.0, fps=4.0, width=16, height=16)
    params["sample"]["steps"] = 2
    params["codec"]["patch"]["griffin_lim_iters"] = 2
    cfg = dataclasses.replace(
        _clip_model_cfg(), video_channels=48, audio_bins=32, audio_frame_rate=64.0, text_len=6
    )
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", randomize(JointDiT(cfg)))
    serving = {
        "clip": params["clip"],
        "codec": params["codec"],
        "sample": params["sample"],
        "conditioning": {**dataclasses.asdict(_clip_cfg(root)), "clip_pretrained": "/moved"},
    }
    (tmp_path / "serving.json").write_text(json.dumps(serving))
    artifacts = {
        "checkpoint": str(tmp_path / "ckpt"),
        "serving": str(tmp_path / "serving.json"),
        "clip": str(root / "snapshot"),
    }
    served = JointDiTPyfunc()
    served.load_context(SimpleNamespace(artifacts=artifacts))
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(tmp_path / "in.png")

    def run(prompt: str) -> dict:
        request = {"image": str(tmp_path / "in.png"), "prompt": prompt, "seed": 0}
        return served.predict(None, pd.DataFrame([request]), {"output": "arrays"})[0]

    out, other = run("a ball bounces"), run("a drum")
    assert out["frames"].shape == (4, 16, 16, 3) and out["audio"].shape == (16000,)
    # the prompt goes through CLIP into the model: another prompt, another clip
    assert np.abs(out["frames"].astype(int) - other["frames"].astype(int)).max() > 0

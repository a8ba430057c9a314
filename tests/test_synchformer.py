import math

import pytest
import torch

from jointdit.metrics.synchformer import (
    WINDOW_SEGMENTS,
    Synchformer,
    _DividedAttention,
)
from tests.tiny_synchformer import random_synchformer

# Hand count of the published model (D = 768), part by part. A pre-norm transformer layer
# (attention 4 D^2 + 4 D, MLP 8 D^2 + 5 D, two LayerNorms 4 D) has 12 D^2 + 13 D parameters.
D = 768
LAYER = 12 * D * D + 13 * D  # 7_087_872
POOL = LAYER + D  # the pooling layers add their CLS token
PARAMETERS = {
    # 2D patch embedding (unused, in the checkpoint) 768 D + D; 3D tubelets 1536 D + D; CLS,
    # positions (1 + 196) D, time positions 8 D; 12 divided blocks (two attentions and an MLP,
    # three LayerNorms: 16 D^2 + 19 D); the last LayerNorm; the spatial pooling layer.
    "vfeat_extractor": 769 * D
    + 1537 * D
    + D
    + 197 * D
    + 8 * D
    + 12 * (16 * D * D + 19 * D)
    + 2 * D
    + POOL,
    # CLS, distillation, (2 + 12 x 6) positions, 16x16 patches of one channel 256 D + D; 12
    # layers; the last LayerNorm; the frequency pooling layer.
    "afeat_extractor": 2 * D + 74 * D + 257 * D + 12 * LAYER + 2 * D + POOL,
    "vproj": D * D + D,
    "aproj": D * D + D,
    # two input LayerNorms, OFF and MOD tokens, 198 positions, 3 layers, the last LayerNorm,
    # the 21-class head.
    "transformer": 4 * D + 2 * D + 198 * D + 3 * LAYER + 2 * D + 21 * D + 21,
}
TOTAL = 237_460_245  # also the count of the av-benchmark module that loads the public file
KEYS = {"vfeat_extractor": 238, "afeat_extractor": 212, "vproj": 2, "aproj": 2, "transformer": 59}


@pytest.fixture(scope="module")
def model() -> Synchformer:
    return random_synchformer()


def test_published_size_parameter_counts_and_checkpoint_keys():
    with torch.device("meta"):
        full = Synchformer()
    assert sum(PARAMETERS.values()) == TOTAL
    for name, child in full.named_children():
        assert sum(p.numel() for p in child.parameters()) == PARAMETERS[name], name
    state = full.state_dict()
    assert len(state) == sum(KEYS.values()) == 513
    for prefix, count in KEYS.items():
        assert sum(k.startswith(prefix + ".") for k in state) == count, prefix
    shapes = {
        "vfeat_extractor.patch_embed.proj.weight": (768, 3, 16, 16),
        "vfeat_extractor.patch_embed_3d.proj.weight": (768, 3, 2, 16, 16),
        "vfeat_extractor.pos_embed": (1, 197, 768),
        "vfeat_extractor.temp_embed": (1, 8, 768),
        "vfeat_extractor.blocks.11.timeattn.qkv.weight": (2304, 768),
        "vfeat_extractor.blocks.11.norm3.bias": (768,),
        "vfeat_extractor.spatial_attn_agg.cls_token": (1, 1, 768),
        "vfeat_extractor.spatial_attn_agg.self_attn.in_proj_weight": (2304, 768),
        "afeat_extractor.ast.embeddings.position_embeddings": (1, 74, 768),
        "afeat_extractor.ast.embeddings.patch_embeddings.projection.weight": (768, 1, 16, 16),
        "afeat_extractor.ast.encoder.layer.11.attention.attention.query.weight": (768, 768),
        "afeat_extractor.ast.encoder.layer.0.attention.output.dense.bias": (768,),
        "afeat_extractor.ast.encoder.layer.0.intermediate.dense.weight": (3072, 768),
        "afeat_extractor.freq_attn_agg.linear1.weight": (3072, 768),
        "transformer.OFF_tok": (1, 1, 768),
        "transformer.pos_emb_cfg.pos_emb": (1, 198, 768),
        "transformer.blocks.2.mlp.2.weight": (768, 3072),
        "transformer.off_head.weight": (21, 768),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".head." in k or "pre_logits" in k or "temp_attn_agg" in k for k in state)


def test_feature_and_logit_shapes(model):
    g = torch.Generator().manual_seed(0)
    video = model.video_features(torch.rand(3, 16, 3, 32, 32, generator=g) * 2 - 1)
    audio = model.audio_features(torch.randn(3, 32, 66, generator=g))
    assert video.shape == (3, 8, 32) and audio.shape == (3, 6, 32)
    window_v = torch.randn(2, WINDOW_SEGMENTS, 8, 32, generator=g)
    window_a = torch.randn(2, WINDOW_SEGMENTS, 6, 32, generator=g)
    assert model.offset_logits(window_v, window_a).shape == (2, 21)
    with pytest.raises(ValueError, match="14 segments"):
        model.offset_logits(window_v[:, :13], window_a[:, :13])


@torch.no_grad()
def test_segments_are_independent_and_eval_is_deterministic(model):
    g = torch.Generator().manual_seed(1)
    video = torch.rand(3, 16, 3, 32, 32, generator=g) * 2 - 1
    mel = torch.randn(3, 32, 66, generator=g)
    torch.testing.assert_close(model.video_features(video)[1:], model.video_features(video[1:]))
    torch.testing.assert_close(model.audio_features(mel)[:1], model.audio_features(mel[:1]))
    assert torch.equal(model.video_features(video), model.video_features(video))
    # ... and each output depends on its own input: a different segment, other features.
    other = model.video_features(torch.rand(1, 16, 3, 32, 32, generator=g) * 2 - 1)
    assert (other[0] - model.video_features(video[:1])[0]).abs().max() > 1e-3


def _dense_divided(attn: _DividedAttention, x: torch.Tensor, frames: int, over: str):
    """Divided attention as one dense attention with a mask: a separate statement of the rule.

    Token 0 (CLS) sees every token; token 1 + f * P + p (frame f, patch p) sees CLS and the
    tokens of its frame ("space") or of its patch position ("time").
    """
    n = x.shape[1]
    patches = (n - 1) // frames
    frame = torch.tensor([-1] + [i // patches for i in range(n - 1)])
    position = torch.tensor([-1] + [i % patches for i in range(n - 1)])
    group = frame if over == "space" else position
    allowed = (group[:, None] == group[None, :]) | (torch.arange(n)[None, :] == 0)
    allowed[0] = True
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads, d = attn.heads, x.shape[-1] // attn.heads
    q, k, v = (t.view(1, n, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(1, n, -1))


@torch.no_grad()
@pytest.mark.parametrize("over", ["space", "time"])
def test_divided_attention_is_the_masked_dense_attention(over):
    torch.manual_seed(3)
    attn = _DividedAttention(16, 2)
    x = torch.randn(1, 1 + 3 * 4, 16)  # CLS + 3 frames of 4 patches
    torch.testing.assert_close(attn(x, 3, over), _dense_divided(attn, x, 3, over))

"""A tiny Synchformer with random weights, for the tests of the model and of DeSync."""

from __future__ import annotations

import torch

from jointdit.metrics.synchformer import Synchformer, SynchformerConfig

TINY = SynchformerConfig(
    dim=32,
    video_depth=1,
    video_heads=2,
    audio_depth=1,
    audio_heads=2,
    sync_depth=1,
    sync_heads=2,
    image_size=32,
    num_mel_bins=32,
)


def random_synchformer(cfg: SynchformerConfig = TINY, seed: int = 0) -> Synchformer:
    """A model whose every parameter is random, LayerNorms included, in eval mode."""
    torch.manual_seed(seed)
    model = Synchformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
    return model.eval()

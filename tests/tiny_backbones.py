"""The tiny joint model on pretrained backbones: its config, sized to the tiny UNets of
tests/pretrained_fixtures.py (SVD_TINY, AUDIOLDM_TINY), and random inputs of its shapes.

Shared by the backbone tests (test_backbones.py) and the LoRA fine-tuning tests
(test_finetune.py)."""

from __future__ import annotations

import torch

from jointdit.backbones.unet import AudioLDMConfig, SVDConfig
from jointdit.model.joint import BackboneModelConfig

CONTEXT = 20
MODEL_CFG = BackboneModelConfig(
    svd=SVDConfig(video_fps=4.0),
    audioldm=AudioLDMConfig(audio_frame_rate=8.0),
    joint_head_dim=16,
    context_dim=CONTEXT,
    text_vocab=50,
    text_len=4,
    image_embed_dim=6,
    audio_channels=8,
    audio_bins=4,
)


def video_batch(b=2, frames=3, h=4, w=6, seed=0):
    """SVD latents (b, frames, 4, h, w) and first-frame latents (b, 4, h, w)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, frames, 4, h, w, generator=g), torch.randn(b, 4, h, w, generator=g)


def audio_batch(b=2, f=4, length=6, seed=1):
    """AudioLDM latents (b, 8, f, length)."""
    return torch.randn(b, 8, f, length, generator=torch.Generator().manual_seed(seed))


def joint_inputs(b=2, seed=0):
    """The keyword arguments of a MODEL_CFG model's forward, random."""
    g = torch.Generator().manual_seed(seed)
    video, image = video_batch(b, seed=seed)
    return dict(
        video=video,
        audio=audio_batch(b, seed=seed + 1),
        t_video=torch.rand(b, generator=g),
        t_audio=torch.rand(b, generator=g),
        image=image,
        text=torch.randint(1, 50, (b, 4), generator=g),
        image_embedding=torch.randn(b, 6, generator=g),
    )

"""Tiny random models of the real pretrained classes, saved in the Hugging Face snapshot layout.

Shared by the unit tests of the codecs (test_pretrained_codecs.py) and the backbones
(test_backbones.py) and by the end-to-end run on the pretrained path (test_pretrained_e2e.py),
so all three load the same kind of directory the `gpu` profile documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from tests.conftest import randomize

SR = 16000

SVD_TINY = dict(
    sample_size=None,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64),
    addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=12,
    layers_per_block=1,
    cross_attention_dim=16,
    num_attention_heads=(2, 4),
    num_frames=3,
)
# AudioLDM-like: CLAP embedding through a simple_projection class embedding concatenated to
# the time embedding, cross-attention dims per block (its pipeline passes no hidden states)
AUDIOLDM_TINY = dict(
    sample_size=None,
    in_channels=8,
    out_channels=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=(32, 64),
    attention_head_dim=8,
    norm_num_groups=8,
    class_embed_type="simple_projection",
    projection_class_embeddings_input_dim=12,
    class_embeddings_concat=True,
)
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def snapshot(root: Path, cls: type, config: dict, seed: int = 0, scheduler: dict | None = None):
    """A random model of `cls` saved in the Hugging Face snapshot layout (unet/...)."""
    torch.manual_seed(seed)
    model = cls(**config)
    randomize(model, seed)  # zero-initialised diffusers layers would hide mistakes
    model.save_pretrained(root / "unet")
    if scheduler:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


def save_svd_vae(directory: Path, scaling_factor: float) -> None:
    """SVD's video VAE, 4 latent channels, downsampling by 2."""
    torch.manual_seed(0)
    # GroupNorm in the temporal decoder has 32 groups: 32 channels is the smallest width
    AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        latent_channels=4,
        scaling_factor=scaling_factor,
    ).save_pretrained(directory)


def audio_vae(scaling_factor: float) -> AutoencoderKL:
    """AudioLDM2's mel VAE, 8 latent channels, downsampling by 4 (64 mels -> 16 bins)."""
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=8,
        block_out_channels=(32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=scaling_factor,
    )


def save_vocoder(directory: Path) -> None:
    """AudioLDM2's HiFi-GAN vocoder, 64 mels at 16 kHz."""
    # AudioLDM2's upsampling (5, 4, 2, 2, 2) = the 160-sample hop; its kernels overshoot by one
    # sample per frame-ish, as the real one's (16, 16, 8, 4, 4) do
    vocoder = SpeechT5HifiGanConfig(
        model_in_dim=64,
        sampling_rate=SR,
        upsample_initial_channel=64,
        upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[10, 8, 4, 4, 4],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1]],
        normalize_before=False,
        # the default 0.01 gives ~1e-8 of output: silence, which float16 rounds to zeros and
        # which no comparison of waveforms can tell apart; 0.12 gives ~0.2 peaks, unclipped
        initializer_range=0.12,
    )
    torch.manual_seed(0)
    SpeechT5HifiGan(vocoder).save_pretrained(directory)

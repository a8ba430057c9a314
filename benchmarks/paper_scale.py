"""Parameter counts and memory of the paper-scale pretrained-backbone model, computed (not
measured): both UNets and the joint layers are built on the meta device (shapes, no memory).

Video: SVD's UNet (stabilityai/stable-video-diffusion-img2vid unet/config.json), 576x320,
14 frames at 7 fps -> latents (14, 4, 40, 72). Audio: AudioLDM-S (cvssp/audioldm-s-full-v2,
the diffusers conversion of its UNetModel: model_channels 128, channel_mult 1,2,3,5, 2 res
blocks, attention at 2,4,8, 32-channel heads, 512-d FiLM class embedding concatenated) on
2 s of 16 kHz audio -> latents (8, 16 mel/4, 50 frames).

    python benchmarks/paper_scale.py
"""

from __future__ import annotations

import torch

from jointdit.backbones.timemaps import DDPMSchedule
from jointdit.backbones.unet import AudioLDMConfig, SVDConfig
from jointdit.model.joint import BackboneModelConfig, build_from_unets

SVD_UNET = dict(
    sample_size=96,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 20, 20),
    num_frames=14,
)
AUDIOLDM_S_UNET = dict(
    sample_size=16,
    in_channels=8,
    out_channels=8,
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
    block_out_channels=(128, 256, 384, 640),
    layers_per_block=2,
    cross_attention_dim=(128, 256, 384, 640),
    attention_head_dim=(4, 8, 12, 20),
    class_embed_type="simple_projection",
    projection_class_embeddings_input_dim=512,
    class_embeddings_concat=True,
)
CFG = BackboneModelConfig(
    svd=SVDConfig(video_fps=7.0),
    audioldm=AudioLDMConfig(audio_frame_rate=25.0),
    context_dim=512,  # CLIP ViT-B-16 embeddings
    text_vocab=0,
    image_embed_dim=512,
    joint_head_dim=64,
    audio_channels=8,
    audio_bins=16,
)
VIDEO_LATENT = (14, 40, 72)  # frames, height, width
AUDIO_LATENT = (50, 16)  # time, frequency (AudioLDM's layout)
GIB = 2**30


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def level_sizes() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Spatial size of each expert's output: every down block but the last halves it (ceil,
    padded convolution), every up block but the last doubles it back to its skip's size."""

    def sizes(hw: tuple[int, int], n: int) -> list[tuple[int, int]]:
        level = [hw]
        for _ in range(n - 1):
            level.append(tuple(-(-d // 2) for d in level[-1]))
        down = [*level[1:], level[-1]]
        up = [*level[-2::-1], level[0]]
        return [*down, level[-1], *up]  # down blocks, mid, up blocks

    return sizes(VIDEO_LATENT[1:], 4), sizes(AUDIO_LATENT, 4)


def main() -> None:
    from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        video = UNetSpatioTemporalConditionModel(**SVD_UNET)
        audio = UNet2DConditionModel(**AUDIOLDM_S_UNET)
        model = build_from_unets(CFG, video, audio, DDPMSchedule())
    rows = {
        "SVD UNet (video backbone)": count(model.video.unet),
        "AudioLDM-S UNet (audio backbone)": count(model.audio.unet),
        "context -> SVD encoder_hidden_states": count(model.video.context_proj),
        "context -> AudioLDM class_labels": count(model.audio.class_proj),
        "context embedder (CLIP image 512 -> 512)": count(model.context),
        "joint layers (9)": count(model.joint),
    }
    total = count(model)
    trainable = total - rows["SVD UNet (video backbone)"] - rows["AudioLDM-S UNet (audio backbone)"]
    print(f"{'part':44s} {'params':>14s} {'bf16 GiB':>9s}")
    for name, n in rows.items():
        print(f"{name:44s} {n:14,d} {2 * n / GIB:9.3f}")
    print(f"{'total':44s} {total:14,d} {2 * total / GIB:9.3f}")

    vs, as_ = level_sizes()
    print("\njoint layers: pair, widths (video, audio -> attention), tokens (video + audio), "
          "params")
    for k, ((iv, ia), layer) in enumerate(zip(model.pairs, model.joint, strict=True)):
        nv = VIDEO_LATENT[0] * vs[iv][0] * vs[iv][1]
        na = as_[ia][0] * as_[ia][1]
        print(f"  {k}: ({iv},{ia}) {layer.video_qkv.in_features:5d}, "
              f"{layer.audio_qkv.in_features:4d} -> {layer.video_qkv.out_features // 3:5d}  "
              f"{nv:6d} + {na:4d} tokens  {count(layer):12,d}")

    frozen = total - trainable
    # Stage A: backbones frozen in bf16; joint layers, projections and context embedder train
    # in fp32 with AdamW: weight 4 + grad 4 + two moments 8 = 16 bytes per parameter.
    stage_a = 2 * frozen + 16 * trainable
    # Stage B (every weight trained, fp32 master + AdamW): 16 bytes per parameter.
    stage_b = 16 * total
    print(f"\ntrainable in stage A: {trainable:,d} parameters")
    print(f"stage A weights + optimizer: frozen bf16 {2 * frozen / GIB:.2f} GiB + trainable fp32 "
          f"w/grad/AdamW {16 * trainable / GIB:.2f} GiB = {stage_a / GIB:.2f} GiB")
    print(f"stage B all trained (fp32 w/grad/AdamW): {stage_b / GIB:.2f} GiB")
    print("(activations not included: they scale with batch and are cut by checkpointing)")


if __name__ == "__main__":
    main()

"""Adapters splitting diffusers UNets into Input / Experts / Output (jointdit/backbones/base.py).

Experts are the UNet's stages in order: every down block, the mid block, every up block; the
down blocks' residual samples ride in the state to the up blocks that consume them. Each step
replicates what the diffusers model's own `forward` does (diffusers 0.42), so with nothing
between the experts the composition equals `unet(...)` (tests/test_backbones.py).

- `SVDBackbone`: `UNetSpatioTemporalConditionModel` (Stable Video Diffusion), EDM time and
  v-prediction. The noisy latents (B, T, C, H, W) are concatenated on channels with the
  first-frame latent, as SVD does; `added_time_ids` are SVD's (fps - 1, motion bucket,
  noise augmentation strength), fixed by config.
- `AudioLDMBackbone`: `UNet2DConditionModel` (AudioLDM), discrete DDPM time, epsilon or v.
  Audio latents are (B, C, F, L); AudioLDM's UNet was trained on (time, frequency) maps, so
  `time_first` transposes them.

Context: the model's shared context tokens (B, N, D) (text tokens, CLIP image embedding)
reach a UNet through learned projections, zero-initialised so that a fresh adapter feeds the
pretrained UNet its unconditional input (SVD's null image embedding is all zeros):
`encoder_hidden_states` = Linear(D -> cross_attention_dim)(tokens), one zero token when there
is no context; AudioLDM's `class_labels` (its pooled CLAP embedding, "simple_projection") =
Linear(D -> projection_class_embeddings_input_dim)(mean of the tokens).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from jointdit.backbones import timemaps
from jointdit.backbones.base import (
    Backbone,
    BackboneCond,
    audio_positions,
    video_map_to_tokens,
    video_positions,
    video_tokens_to_map,
)

if TYPE_CHECKING:  # diffusers takes seconds to import; the default (dit) path never needs it
    from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel


@dataclass(frozen=True)
class SVDConfig:
    path: str = ""  # local snapshot directory with unet/ (stabilityai/stable-video-diffusion-*)
    fps: int = 7  # SVD's added time ids: fps - 1, motion bucket id, noise augmentation
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    # SVD was trained on unscaled VAE latents of the image (its pipeline skips the scaling
    # factor); a codec that scales its latents needs 1 / scaling_factor here.
    image_scale: float = 1.0
    sigma_min: float = 0.002  # c_noise clamp: the sigma range of SVD's training
    sigma_max: float = 700.0
    video_fps: float = 7.0  # latent frames per second (token time positions)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AudioLDMConfig:
    path: str = ""  # local snapshot directory with unet/ (+ scheduler/)
    time_first: bool = True  # the UNet's maps are (time, frequency), ours (frequency, time)
    # feed the context tokens as encoder_hidden_states (AudioLDM's pipeline passes None: its
    # cross_attention_dim is a per-block list and attn2 then attends to the block itself)
    cross_attention: bool = False
    audio_frame_rate: float = 25.0  # latent time bins per second (token time positions)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UNetState:
    h: Tensor  # the feature map: (B*T, C, H, W) for video, (B, C, A0, A1) for audio
    emb: Tensor  # (B, E) the backbone's time embedding, per sample
    block_emb: Tensor  # emb as the blocks take it (repeated per frame for video)
    skips: tuple[Tensor, ...]  # residual samples of the down blocks, consumed by the up blocks
    ehs: Tensor | None  # encoder_hidden_states as the blocks take them
    indicator: Tensor | None  # SVD's image_only_indicator (B, T)
    batch: int
    latent_size: tuple[int, int]  # spatial size of the input latent map
    forward_upsample_size: bool  # the input size is not a multiple of the UNet's total stride


class _UNetBackbone(Backbone):
    """The stage walk shared by both UNet classes."""

    unet: Any

    def _init_stages(self) -> None:
        u = self.unet
        self.stages = [("down", i) for i in range(len(u.down_blocks))]
        if u.mid_block is not None:
            self.stages.append(("mid", 0))
        self.stages += [("up", i) for i in range(len(u.up_blocks))]
        channels = list(u.config.block_out_channels)
        rev = channels[::-1]
        self._dims = [channels[i] if k == "down" else rev[i] if k == "up" else channels[-1]
                      for k, i in self.stages]

    @property
    def num_experts(self) -> int:
        return len(self.stages)

    def expert_dim(self, i: int) -> int:
        return self._dims[i]

    def time_embedding(self, state: UNetState) -> Tensor:
        return state.emb

    @abstractmethod
    def _kwargs(self, block: nn.Module, s: UNetState, mid: bool) -> dict[str, Any]:
        """The keyword arguments a block takes beside its input and time embedding."""

    def expert(self, i: int, s: UNetState) -> UNetState:
        kind, j = self.stages[i]
        u = self.unet
        if kind == "down":
            block = u.down_blocks[j]
            h, res = block(hidden_states=s.h, temb=s.block_emb, **self._kwargs(block, s, False))
            return replace(s, h=h, skips=s.skips + tuple(res))
        if kind == "mid":
            block = u.mid_block
            return replace(s, h=block(s.h, s.block_emb, **self._kwargs(block, s, True)))
        block = u.up_blocks[j]
        n = len(block.resnets)
        res, skips = s.skips[-n:], s.skips[:-n]
        final = j == len(u.up_blocks) - 1
        # as diffusers: an odd-sized input makes each upsampler target its skip's size
        size = skips[-1].shape[2:] if (not final and s.forward_upsample_size) else None
        h = block(
            hidden_states=s.h,
            temb=s.block_emb,
            res_hidden_states_tuple=res,
            upsample_size=size,
            **self._kwargs(block, s, False),
        )
        return replace(s, h=h, skips=skips)

    def _start(self, sample: Tensor, emb: Tensor, block_emb: Tensor, ehs: Tensor | None,
               indicator: Tensor | None, batch: int) -> UNetState:
        stride = 2**self.unet.num_upsamplers
        h = self.unet.conv_in(sample)
        return UNetState(
            h=h,
            emb=emb,
            block_emb=block_emb,
            skips=(h,),
            ehs=ehs,
            indicator=indicator,
            batch=batch,
            latent_size=tuple(sample.shape[-2:]),
            forward_upsample_size=any(d % stride for d in sample.shape[-2:]),
        )

    def _conv_out(self, h: Tensor) -> Tensor:
        u = self.unet
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    linear = nn.Linear(d_in, d_out)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class SVDBackbone(_UNetBackbone):
    def __init__(self, unet: UNetSpatioTemporalConditionModel, cfg: SVDConfig, context_dim: int):
        from diffusers import UNetSpatioTemporalConditionModel

        super().__init__()
        if not isinstance(unet, UNetSpatioTemporalConditionModel):
            raise TypeError(
                f"SVDBackbone needs a UNetSpatioTemporalConditionModel, got {type(unet).__name__}"
            )
        self.unet = unet
        self.cfg = cfg
        c = unet.config
        ids = 3 * c.addition_time_embed_dim
        if ids != c.projection_class_embeddings_input_dim:
            raise ValueError(
                f"SVD UNet: 3 added time ids x {c.addition_time_embed_dim} != "
                f"projection_class_embeddings_input_dim {c.projection_class_embeddings_input_dim}"
            )
        self.context_proj = _zero_linear(context_dim, c.cross_attention_dim)
        self._init_stages()

    @property
    def cond_dim(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    def model_input(self, x: Tensor, t: Tensor, cond: BackboneCond) -> tuple[Tensor, Tensor]:
        """(sample, timestep) as SVD's pipeline hands them to the UNet: c_in x_sigma ++ image
        latent on channels, and c_noise."""
        if cond.image is None:
            raise ValueError("the SVD backbone needs the first-frame latent (cond.image)")
        b, frames = x.shape[:2]
        image = (cond.image * self.cfg.image_scale)[:, None]
        image = image.expand(b, frames, *cond.image.shape[1:])
        sample = torch.cat((timemaps.vp_input(x, t), image), dim=2)
        return sample, timemaps.edm_c_noise(t, self.cfg.sigma_min, self.cfg.sigma_max)

    def conditioning(self, cond: BackboneCond, batch: int) -> dict[str, Tensor]:
        """encoder_hidden_states and added_time_ids, as `unet.forward` takes them."""
        if cond.context is None:
            ehs = self.context_proj.bias.new_zeros(batch, 1, self.context_proj.out_features)
        else:
            ehs = self.context_proj(cond.context)
        ids = (self.cfg.fps - 1, self.cfg.motion_bucket_id, self.cfg.noise_aug_strength)
        added = torch.tensor([ids], dtype=ehs.dtype, device=ehs.device).expand(batch, 3)
        return {"encoder_hidden_states": ehs, "added_time_ids": added}

    def embed(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor,
              added_time_ids: Tensor) -> UNetState:
        """The Input block: UNet.forward up to and including conv_in."""
        u = self.unet
        sample = sample.to(u.dtype)
        b, frames = sample.shape[:2]
        emb = u.time_embedding(u.time_proj(timestep.expand(b)).to(sample.dtype))
        time_embeds = u.add_time_proj(added_time_ids.flatten()).reshape(b, -1).to(emb.dtype)
        emb = emb + u.add_embedding(time_embeds)
        ehs = encoder_hidden_states.to(u.dtype).repeat_interleave(frames, dim=0)
        indicator = torch.zeros(b, frames, dtype=sample.dtype, device=sample.device)
        return self._start(
            sample.flatten(0, 1), emb, emb.repeat_interleave(frames, dim=0), ehs, indicator, b
        )

    def input(self, x: Tensor, t: Tensor, cond: BackboneCond) -> UNetState:
        sample, timestep = self.model_input(x, t, cond)
        return self.embed(sample, timestep, **self.conditioning(cond, x.shape[0]))

    def _kwargs(self, block: nn.Module, s: UNetState, mid: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"image_only_indicator": s.indicator}
        if mid or getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = s.ehs
        return kwargs

    def output(self, s: UNetState) -> Tensor:
        out = self._conv_out(s.h)
        return out.reshape(s.batch, -1, *out.shape[1:])

    def velocity(self, raw: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return timemaps.velocity_from_v(raw.to(x.dtype), x, t)

    def to_tokens(self, s: UNetState) -> tuple[Tensor, Tensor]:
        frames = s.h.shape[0] // s.batch
        pos = video_positions(frames, *s.h.shape[2:], self.cfg.video_fps, s.h.device)
        return video_map_to_tokens(s.h, s.batch), pos

    def from_tokens(self, s: UNetState, tokens: Tensor) -> UNetState:
        return replace(s, h=video_tokens_to_map(tokens, s.h))


def _needs_hidden_states(unet: UNet2DConditionModel) -> bool:
    """Whether a cross-attention block cannot fall back to attending to itself, as AudioLDM's
    do when given no encoder_hidden_states (cross_attention_dim = its block widths)."""
    c = unet.config
    widths = list(c.block_out_channels)
    dims = c.cross_attention_dim
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims] * len(widths)
    blocks = [
        *zip(unet.down_blocks, dims, widths, strict=True),
        *zip(unet.up_blocks, dims[::-1], widths[::-1], strict=True),
    ]
    if unet.mid_block is not None:
        blocks.append((unet.mid_block, dims[-1], widths[-1]))
    return any(getattr(b, "has_cross_attention", False) and d != w for b, d, w in blocks)


class AudioLDMBackbone(_UNetBackbone):
    def __init__(
        self,
        unet: UNet2DConditionModel,
        cfg: AudioLDMConfig,
        context_dim: int,
        schedule: timemaps.DDPMSchedule,
    ):
        from diffusers import UNet2DConditionModel

        super().__init__()
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(
                f"AudioLDMBackbone needs a UNet2DConditionModel, got {type(unet).__name__}"
            )
        c = unet.config
        if c.addition_embed_type is not None:
            raise ValueError(f"UNet2DConditionModel: addition_embed_type {c.addition_embed_type!r}"
                             " is not supported (AudioLDM has none)")
        if c.class_embed_type not in (None, "simple_projection", "projection"):
            raise ValueError(f"UNet2DConditionModel: class_embed_type {c.class_embed_type!r} is "
                             "not supported (AudioLDM uses simple_projection)")
        self.unet = unet
        self.cfg = cfg
        self.schedule = schedule
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod().float(), persistent=False)
        self.class_proj = (
            _zero_linear(context_dim, c.projection_class_embeddings_input_dim)
            if c.class_embed_type is not None else None
        )
        if cfg.cross_attention and not isinstance(c.cross_attention_dim, int):
            raise ValueError(
                f"AudioLDM UNet: cross_attention needs one cross_attention_dim, "
                f"got {c.cross_attention_dim}"
            )
        if not cfg.cross_attention and _needs_hidden_states(unet):
            raise ValueError(
                f"UNet2DConditionModel: cross_attention_dim {c.cross_attention_dim} differs from "
                f"its block widths {c.block_out_channels}, so it needs encoder_hidden_states "
                "(set cross_attention)"
            )
        self.context_proj = (
            _zero_linear(context_dim, c.cross_attention_dim) if cfg.cross_attention else None
        )
        self._init_stages()

    @property
    def cond_dim(self) -> int:
        width = self.unet.time_embedding.linear_2.out_features
        concat = self.unet.config.class_embeddings_concat and self.class_proj is not None
        return 2 * width if concat else width

    def _layout(self, x: Tensor) -> Tensor:
        return x.transpose(-1, -2) if self.cfg.time_first else x

    def model_input(self, x: Tensor, t: Tensor, cond: BackboneCond) -> tuple[Tensor, Tensor]:
        """(sample, timestep): z = x_t / sqrt((1-t)^2 + t^2) in the UNet's layout, and the
        DDPM step of the same SNR."""
        return self._layout(timemaps.vp_input(x, t)), timemaps.ddpm_index(t, self.alphas_cumprod)

    def conditioning(self, cond: BackboneCond, batch: int) -> dict[str, Tensor | None]:
        """encoder_hidden_states and class_labels, as `unet.forward` takes them."""
        kwargs: dict[str, Tensor | None] = {"encoder_hidden_states": None}
        if self.context_proj is not None:
            kwargs["encoder_hidden_states"] = (
                self.context_proj.bias.new_zeros(batch, 1, self.context_proj.out_features)
                if cond.context is None else self.context_proj(cond.context)
            )
        if self.class_proj is not None:
            kwargs["class_labels"] = (
                self.class_proj.bias.new_zeros(batch, self.class_proj.out_features)
                if cond.context is None else self.class_proj(cond.context.mean(dim=1))
            )
        return kwargs

    def embed(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor | None,
              class_labels: Tensor | None = None) -> UNetState:
        """The Input block: UNet.forward up to and including conv_in."""
        u = self.unet
        sample = sample.to(u.dtype)
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
        if class_labels is not None:
            class_labels = class_labels.to(u.dtype)
        class_emb = u.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if u.config.class_embeddings_concat else (
                emb + class_emb
            )
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        ehs = encoder_hidden_states
        if ehs is not None:
            ehs = u.process_encoder_hidden_states(ehs.to(u.dtype), {})
        return self._start(sample, emb, emb, ehs, None, sample.shape[0])

    def input(self, x: Tensor, t: Tensor, cond: BackboneCond) -> UNetState:
        sample, timestep = self.model_input(x, t, cond)
        return self.embed(sample, timestep, **self.conditioning(cond, x.shape[0]))

    def _kwargs(self, block: nn.Module, s: UNetState, mid: bool) -> dict[str, Any]:
        if getattr(block, "has_cross_attention", False):
            return {"encoder_hidden_states": s.ehs}
        return {}

    def output(self, s: UNetState) -> Tensor:
        return self._layout(self._conv_out(s.h))

    def velocity(self, raw: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return timemaps.velocity_from_ddpm(raw.to(x.dtype), x, t, self.schedule.prediction_type)

    def to_tokens(self, s: UNetState) -> tuple[Tensor, Tensor]:
        rows, cols = s.h.shape[2:]
        time_axis = 0 if self.cfg.time_first else 1
        bins, freq = ((rows, cols) if self.cfg.time_first else (cols, rows))
        pos = audio_positions(
            bins, s.latent_size[time_axis], freq, self.cfg.audio_frame_rate,
            self.cfg.time_first, s.h.device,
        )
        return s.h.flatten(2).transpose(1, 2), pos

    def from_tokens(self, s: UNetState, tokens: Tensor) -> UNetState:
        return replace(s, h=tokens.transpose(1, 2).reshape(s.h.shape).contiguous())

"""JointBackboneModel: two Backbones (jointdit/backbones) joined by joint layers.

Same call as JointDiT (`model(video, audio, t_video, t_audio, image, text, iso, experts_only,
image_embedding) -> (velocity_video, velocity_audio)`), so training, guidance, sampling and
evaluation run on it unchanged. The video backbone's expert i is paired with the audio
backbone's expert i (or a configured list of pairs); after each pair, a JointLayer attends
over both experts' feature maps flattened to tokens ([video; audio; context] keys), then puts
them back. Each joint layer projects each modality's width at that level to a shared
attention width and is gated by AdaLN of each backbone's own time embedding, zero-initialised,
so at init the model is exactly its two backbones run separately.

Context: text ids and the CLIP image embedding become context tokens of width context_dim
(as in JointDiT); the joint layers attend to them, and each UNet backbone receives them
through its own learned projection (encoder_hidden_states / class_labels, see
jointdit/backbones/unet.py).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jointdit.backbones.base import Backbone, BackboneCond
from jointdit.backbones.timemaps import DDPMSchedule
from jointdit.backbones.unet import AudioLDMBackbone, AudioLDMConfig, SVDBackbone, SVDConfig
from jointdit.config import from_dict
from jointdit.model.joint_layer import JointLayer
from jointdit.model.jointdit import JointDiT, JointDiTConfig
from jointdit.model.layers import context_tokens, text_embedder
from jointdit.model.rope import axis_dims, rope_angles
from jointdit.pretrained import torch_dtype


@dataclass(frozen=True)
class BackboneModelConfig:
    """The pretrained path: SVD video UNet + AudioLDM audio UNet + joint layers."""

    svd: SVDConfig = field(default_factory=SVDConfig)
    audioldm: AudioLDMConfig = field(default_factory=AudioLDMConfig)
    dtype: str = "float32"  # the UNets' weights (bfloat16 / float16 on a GPU)
    pairs: tuple[tuple[int, int], ...] = ()  # (video expert, audio expert); () = i with i
    joint_dim: int = 0  # attention width of every joint layer; 0 = the wider side's width
    joint_head_dim: int = 64
    ff_mult: int = 2
    context_dim: int = 512
    text_vocab: int = 1024  # 0: no text context
    text_len: int = 12
    text_embed_dim: int = 0  # > 0: text arrives as (B, text_len, D) features (e.g. CLIP's)
    image_embed_dim: int = 0  # > 0: a (B, D) image embedding (e.g. CLIP) is a context token
    audio_channels: int = 8  # audio latent (B, Ca, F, L), as the codec gives it
    audio_bins: int = 16
    rope_time_scale: float = 16.0  # RoPE time positions per second, shared by both modalities
    rope_theta: float = 1000.0
    query_chunk: int = 0
    kv_downsample: int = 1

    def __post_init__(self) -> None:
        # a params file gives lists of lists; pairs are compared and hashed as tuples
        object.__setattr__(self, "pairs", tuple(tuple(p) for p in self.pairs))

    def to_dict(self) -> dict:
        return asdict(self)


class ContextEmbedder(nn.Module):
    """Context tokens [text; image] from text ids and an image embedding (or None)."""

    def __init__(self, text: nn.Module | None, image_embed: nn.Linear | None):
        super().__init__()
        self.text = text
        self.image_embed = image_embed

    def forward(self, text: Tensor | None, image_embedding: Tensor | None) -> Tensor | None:
        return context_tokens(self.text, self.image_embed, text, image_embedding)


def resolve_pairs(
    video: Backbone, audio: Backbone, pairs: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    nv, na = video.num_experts, audio.num_experts
    if not pairs:
        if nv != na:
            raise ValueError(
                f"video backbone has {nv} experts, audio backbone {na}: configure `pairs`"
            )
        return tuple((i, i) for i in range(nv))
    for (iv, ia), (jv, ja) in itertools.pairwise(pairs):
        if jv <= iv or ja <= ia:
            raise ValueError(f"pairs {pairs}: must increase on both sides")
    if any(not (0 <= iv < nv and 0 <= ia < na) for iv, ia in pairs):
        raise ValueError(f"pairs {pairs}: out of range for {nv} video / {na} audio experts")
    return pairs


class JointBackboneModel(nn.Module):
    def __init__(
        self,
        cfg: BackboneModelConfig | JointDiTConfig,
        video: Backbone,
        audio: Backbone,
        context: ContextEmbedder,
        joint: nn.ModuleList,
        pairs: tuple[tuple[int, int], ...],
        rope: tuple[float, float],
    ):
        super().__init__()
        if len(joint) != len(pairs):
            raise ValueError(f"{len(joint)} joint layers for {len(pairs)} expert pairs")
        self.cfg = cfg
        self.video = video
        self.audio = audio
        self.context = context
        self.joint = joint
        self.pairs = pairs
        self.rope_time_scale, self.rope_theta = rope
        self.grad_checkpointing = False

    @property
    def text(self) -> nn.Module | None:
        """The text embedder, or None without text context: as JointDiT.text, which callers
        read to know whether the model takes text (the served model does)."""
        return self.context.text

    @classmethod
    def from_backbones(
        cls, cfg: BackboneModelConfig, video: Backbone, audio: Backbone
    ) -> JointBackboneModel:
        pairs = resolve_pairs(video, audio, cfg.pairs)
        text = text_embedder(cfg.text_embed_dim, cfg.text_vocab, cfg.text_len, cfg.context_dim)
        image = nn.Linear(cfg.image_embed_dim, cfg.context_dim) if cfg.image_embed_dim else None
        layers = []
        for iv, ia in pairs:
            dv, da = video.expert_dim(iv), audio.expert_dim(ia)
            dim = cfg.joint_dim or max(dv, da)
            if dim % cfg.joint_head_dim:
                raise ValueError(f"joint width {dim} (pair {iv}, {ia}) is not a multiple of "
                                 f"joint_head_dim {cfg.joint_head_dim}")
            layers.append(JointLayer(
                dim, dim // cfg.joint_head_dim, cfg.ff_mult, (cfg.query_chunk, cfg.kv_downsample),
                video_dim=dv, audio_dim=da, video_cond=video.cond_dim, audio_cond=audio.cond_dim,
                context_dim=cfg.context_dim,
            ))
        return cls(cfg, video, audio, ContextEmbedder(text, image), nn.ModuleList(layers), pairs,
                   (cfg.rope_time_scale, cfg.rope_theta))

    def _angles(self, positions: Tensor, layer: JointLayer) -> Tensor:
        pos = positions.clone()
        pos[:, 0] *= self.rope_time_scale
        dims = axis_dims(layer.head_dim, spatial_axes=pos.shape[1] - 1)
        return rope_angles(pos, dims, self.rope_theta)

    def _joint(self, k: int, sv, sa, context: Tensor | None, iso: Tensor):
        layer = self.joint[k]
        xv, pv = self.video.to_tokens(sv)
        xa, pa = self.audio.to_tokens(sa)
        # the joint layers keep their own (trainable, float32) dtype beside bf16 backbones
        dt = layer.video_qkv.weight.dtype
        yv, ya = layer(
            xv.to(dt), xa.to(dt),
            self.video.time_embedding(sv).to(dt), self.audio.time_embedding(sa).to(dt),
            self._angles(pv, layer), self._angles(pa, layer),
            None if context is None else context.to(dt), iso,
        )
        return (self.video.from_tokens(sv, yv.to(xv.dtype)),
                self.audio.from_tokens(sa, ya.to(xa.dtype)))

    def _call(self, fn, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(
        self,
        video: Tensor,
        audio: Tensor,
        t_video: Tensor,
        t_audio: Tensor,
        image: Tensor,
        text: Tensor | None = None,
        iso: Tensor | bool = False,
        experts_only: bool = False,
        image_embedding: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Velocity predictions (video, audio), as JointDiT.forward."""
        if isinstance(iso, bool):
            iso = torch.full((video.shape[0],), iso, dtype=torch.bool, device=video.device)
        context = self.context(text, image_embedding)
        sv = self.video.input(video, t_video, BackboneCond(image=image, context=context))
        sa = self.audio.input(audio, t_audio, BackboneCond(context=context))
        nv = na = 0
        for k, (iv, ia) in enumerate(self.pairs):
            for i in range(nv, iv + 1):
                sv = self._call(self.video.expert, i, sv)
            for i in range(na, ia + 1):
                sa = self._call(self.audio.expert, i, sa)
            nv, na = iv + 1, ia + 1
            if not experts_only:
                sv, sa = self._call(self._joint, k, sv, sa, context, iso)
        for i in range(nv, self.video.num_experts):
            sv = self._call(self.video.expert, i, sv)
        for i in range(na, self.audio.num_experts):
            sa = self._call(self.audio.expert, i, sa)
        return (
            self.video.velocity(self.video.output(sv), video, t_video),
            self.audio.velocity(self.audio.output(sa), audio, t_audio),
        )


def build_from_unets(
    cfg: BackboneModelConfig, video_unet: nn.Module, audio_unet: nn.Module,
    schedule: DDPMSchedule,
) -> JointBackboneModel:
    video = SVDBackbone(video_unet, cfg.svd, cfg.context_dim)
    audio = AudioLDMBackbone(audio_unet, cfg.audioldm, cfg.context_dim, schedule)
    return JointBackboneModel.from_backbones(cfg, video, audio)


def load_backbone_model(cfg: BackboneModelConfig) -> tuple[JointBackboneModel, DDPMSchedule]:
    """The joint model on the pretrained UNets of the snapshot directories in cfg, and the
    audio backbone's DDPM schedule (its snapshot's scheduler config, else AudioLDM's)."""
    # imported here: diffusers takes seconds, which the default (dit) path never needs
    from jointdit.backbones.loader import load_scheduler_config, load_unet

    dtype = torch_dtype(cfg.dtype, "model.backbones")
    video_unet = load_unet(
        cfg.svd.path, "UNetSpatioTemporalConditionModel", dtype, "model.backbones.svd"
    )
    audio_unet = load_unet(
        cfg.audioldm.path, "UNet2DConditionModel", dtype, "model.backbones.audioldm"
    )
    scheduler = load_scheduler_config(cfg.audioldm.path)
    schedule = DDPMSchedule.from_scheduler_config(scheduler) if scheduler else DDPMSchedule()
    return build_from_unets(cfg, video_unet, audio_unet, schedule), schedule


def model_config_from_dict(
    data: dict, where: str = "model"
) -> JointDiTConfig | BackboneModelConfig:
    """A params.yaml `model` section: `kind: dit` (default: our JointDiT, from the section's
    other keys) or `kind: backbones` (pretrained SVD + AudioLDM UNets, from its `backbones`
    subsection). Both configs live side by side, so a params profile switches between them by
    setting leaves only."""
    data = dict(data)
    kind = data.pop("kind", "dit")
    backbones = data.pop("backbones", {})
    if kind == "dit":
        return from_dict(JointDiTConfig, data, where)
    if kind == "backbones":
        return from_dict(BackboneModelConfig, backbones, f"{where}.backbones")
    raise ValueError(f"{where}: kind {kind!r} is not 'dit' or 'backbones'")


def build_model(cfg: JointDiTConfig | BackboneModelConfig) -> JointDiT | JointBackboneModel:
    """A fresh model: JointDiT at random init, or the joint model on the pretrained UNets
    (loaded from the config's local snapshot directories) with fresh joint layers."""
    if isinstance(cfg, JointDiTConfig):
        return JointDiT(cfg)
    return load_backbone_model(cfg)[0]

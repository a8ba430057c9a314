"""Our own JointDiT seen through the Backbone interface: views over its modules, no copies.

A test instrument, not a model anyone trains: the joint model over two backbones
(`JointBackboneModel`, the pretrained path) must compute exactly what JointDiT computes when its
backbones are JointDiT's own halves (tests/test_backbones.py), which checks the generic
machinery on a model with no diffusers in it.

The DiT already works on tokens at the flow's own t, so its time map is the identity; its
prediction converts as JointDiT.forward converts it (an x-predicting DiT's clean latent becomes
the velocity).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from jointdit.backbones.base import Backbone, BackboneCond
from jointdit.model.joint import ContextEmbedder, JointBackboneModel
from jointdit.model.jointdit import (
    JointDiT,
    signal_scaled,
    unpatchify_audio,
    unpatchify_video,
    velocity_from_x0,
)
from jointdit.model.rope import rope_angles


@dataclass(frozen=True)
class DiTState:
    x: Tensor  # tokens (B, N, dim)
    c: Tensor  # time embedding (B, dim), or per video frame (B, T, dim)
    angles: Tensor  # the DiT's own RoPE angles for its experts
    positions: Tensor  # (N, axes), time in seconds
    context: Tensor | None
    shape: tuple[int, ...]


class DiTBackbone(Backbone):
    def __init__(self, model: JointDiT, modality: str):
        super().__init__()
        if modality not in ("video", "audio"):
            raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
        self.cfg = model.cfg
        self.modality = modality
        self.embedder = getattr(model, f"{modality}_input")
        self.time = getattr(model, f"{modality}_time")
        self.experts = nn.ModuleList(getattr(b, f"{modality}_expert") for b in model.blocks)
        self.final = getattr(model, f"{modality}_output")
        self.refine = model.video_refine if modality == "video" else nn.Identity()
        self.dims = getattr(model, f"{modality}_dims")

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def cond_dim(self) -> int:
        return self.cfg.dim

    def expert_dim(self, i: int) -> int:
        return self.cfg.dim

    def input(self, x: Tensor, t: Tensor, cond: BackboneCond) -> DiTState:
        shape = tuple(x.shape)
        if self.cfg.input_scale == "signal":
            x = signal_scaled(x, t)
        if self.modality == "video":
            tokens, grid = self.embedder(x, cond.image)
        else:
            tokens, grid = self.embedder(x)
        positions = grid.clone()
        positions[:, 0] /= self.cfg.rope_time_scale  # the input blocks scale time; undo
        return DiTState(
            x=tokens,
            c=self.time(t.flatten()).unflatten(0, t.shape),
            angles=rope_angles(grid, self.dims, self.cfg.rope_theta),
            positions=positions,
            context=cond.context,
            shape=shape,
        )

    def expert(self, i: int, s: DiTState) -> DiTState:
        return replace(s, x=self.experts[i](s.x, s.c, s.angles, s.context))

    def output(self, s: DiTState) -> Tensor:
        unpatchify = unpatchify_video if self.modality == "video" else unpatchify_audio
        return self.refine(unpatchify(self.final(s.x, s.c), s.shape, self.cfg))

    def velocity(self, raw: Tensor, x: Tensor, t: Tensor) -> Tensor:
        if self.cfg.prediction == "v":
            return raw
        return velocity_from_x0(raw, x, t, self.cfg.t_floor)

    def time_embedding(self, s: DiTState) -> Tensor:
        return s.c

    def to_tokens(self, s: DiTState) -> tuple[Tensor, Tensor]:
        return s.x, s.positions

    def from_tokens(self, s: DiTState, tokens: Tensor) -> DiTState:
        return replace(s, x=tokens)


def jointdit_view(model: JointDiT) -> JointBackboneModel:
    """The JointDiT as a JointBackboneModel over its own modules (no copies). Frame sync is
    the DiT's own (the backbone model has only joint layers between the modalities), so the
    DiT must be built without it."""
    c = model.cfg
    if c.frame_sync:
        raise ValueError("the backbone model has no FrameSync: view a JointDiT without it")
    return JointBackboneModel(
        c,
        DiTBackbone(model, "video"),
        DiTBackbone(model, "audio"),
        ContextEmbedder(model.text, model.image_embed),
        nn.ModuleList(b.joint for b in model.blocks),
        tuple((i, i) for i in range(c.depth)),
        (c.rope_time_scale, c.rope_theta),
    )

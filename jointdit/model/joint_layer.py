"""The joint layer: one attention over [video; audio; context] with per-modality projections,
then per-modality feed-forwards, every branch gated by its modality's AdaLN (zero-initialised,
so a new joint layer starts as the identity). JointDiT's blocks and the joint model over
pretrained backbones (jointdit/model/joint.py) both use it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jointdit.model.layers import (
    GEGLU,
    adaln,
    attend,
    gate,
    grouped,
    merge_heads,
    modulate,
    split_heads,
)
from jointdit.model.rope import apply_rope


class JointLayer(nn.Module):
    """Joint attention over [video; audio; context] then V-FF and A-FF, all gated per modality.

    `iso` (B,) marks samples whose modalities attend only to themselves (+ context): those run
    as separate per-modality attentions, never as a dense mask, so every call stays on the
    attention kernels (`attend`). A plain bool says the same of the whole batch.

    `dim` is the attention width. The token widths (video_dim, audio_dim), the widths of the
    conditioning vectors (video_cond, audio_cond) and of the context tokens (context_dim)
    default to `dim` (the DiT); pretrained backbones have other widths at every level, which
    the per-modality projections map to and from the shared attention width.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_mult: int,
        knobs: tuple[int, int] = (0, 1),
        video_dim: int | None = None,
        audio_dim: int | None = None,
        video_cond: int | None = None,
        audio_cond: int | None = None,
        context_dim: int | None = None,
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.knobs = knobs
        dv, da = video_dim or dim, audio_dim or dim
        self.video_norm1 = nn.LayerNorm(dv, elementwise_affine=False, eps=1e-6)
        self.audio_norm1 = nn.LayerNorm(da, elementwise_affine=False, eps=1e-6)
        self.video_qkv = nn.Linear(dv, 3 * dim)
        self.audio_qkv = nn.Linear(da, 3 * dim)
        self.context_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.video_out = nn.Linear(dim, dv)
        self.audio_out = nn.Linear(dim, da)
        self.video_norm2 = nn.LayerNorm(dv, elementwise_affine=False, eps=1e-6)
        self.audio_norm2 = nn.LayerNorm(da, elementwise_affine=False, eps=1e-6)
        self.video_ff = GEGLU(dv, ff_mult)
        self.audio_ff = GEGLU(da, ff_mult)
        self.video_modulation = adaln(dv, 6, video_cond)
        self.audio_modulation = adaln(da, 6, audio_cond)

    def forward(
        self,
        xv: Tensor,
        xa: Tensor,
        cv: Tensor,
        ca: Tensor,
        angles_v: Tensor,
        angles_a: Tensor,
        context: Tensor | None,
        iso: Tensor | bool,
    ) -> tuple[Tensor, Tensor]:
        mv = self.video_modulation(grouped(cv)).chunk(6, dim=-1)
        ma = self.audio_modulation(grouped(ca)).chunk(6, dim=-1)
        qv, kv, vv = split_heads(
            self.video_qkv(modulate(self.video_norm1(xv), *mv[:2])), 3, self.heads
        )
        qa, ka, va = split_heads(
            self.audio_qkv(modulate(self.audio_norm1(xa), *ma[:2])), 3, self.heads
        )
        qv, kv = apply_rope(qv, angles_v), apply_rope(kv, angles_v)
        qa, ka = apply_rope(qa, angles_a), apply_rope(ka, angles_a)
        if context is None:
            kc = vc = qv.new_zeros(qv.shape[0], self.heads, 0, qv.shape[-1])
        else:
            kc, vc = split_heads(self.context_kv(context), 2, self.heads)

        if isinstance(iso, bool) or iso.all() or not iso.any():
            # one kind of attention for the whole batch: no gathering and scattering of samples
            isolated = iso if isinstance(iso, bool) else bool(iso[0])
            out_v, out_a = self._attend(qv, kv, vv, qa, ka, va, kc, vc, isolated)
        else:
            out_v, out_a = torch.empty_like(qv), torch.empty_like(qa)
            for isolated, idx in ((False, (~iso).nonzero()[:, 0]), (True, iso.nonzero()[:, 0])):
                out_v[idx], out_a[idx] = self._attend(
                    *(x[idx] for x in (qv, kv, vv, qa, ka, va, kc, vc)), isolated
                )

        xv = xv + gate(self.video_out(merge_heads(out_v)), mv[2])
        xa = xa + gate(self.audio_out(merge_heads(out_a)), ma[2])
        xv = xv + gate(self.video_ff(modulate(self.video_norm2(xv), mv[3], mv[4])), mv[5])
        xa = xa + gate(self.audio_ff(modulate(self.audio_norm2(xa), ma[3], ma[4])), ma[5])
        return xv, xa

    def _attend(
        self,
        qv: Tensor,
        kv: Tensor,
        vv: Tensor,
        qa: Tensor,
        ka: Tensor,
        va: Tensor,
        kc: Tensor,
        vc: Tensor,
        isolated: bool,
    ) -> tuple[Tensor, Tensor]:
        """(video, audio) attention outputs: over [video; audio; context] keys, or each
        modality over its own and the context's when isolated."""
        if isolated:
            return (
                attend(qv, torch.cat((kv, kc), 2), torch.cat((vv, vc), 2), *self.knobs),
                attend(qa, torch.cat((ka, kc), 2), torch.cat((va, vc), 2), *self.knobs),
            )
        q = torch.cat((qv, qa), dim=2)
        k = torch.cat((kv, ka, kc), dim=2)
        v = torch.cat((vv, va, vc), dim=2)
        out = attend(q, k, v, *self.knobs)
        return out[:, :, : qv.shape[2]], out[:, :, qv.shape[2] :]

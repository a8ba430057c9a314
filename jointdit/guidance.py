"""Guidance as a sum of difference terms over forward passes that share one batch.

pred = c + w_v (c - iso_v) + w_a (c - iso_a) + w_img (c - no_img) + w_txt (c - no_txt)
         + w_neg (c - neg)

c is the joint conditional prediction; iso is the same input with the modalities isolated in
the joint attention (its video output is iso_v, its audio output iso_a); no_img / no_txt drop
one condition; neg swaps the text for a negative prompt. The video weight w_v applies to the
video output and w_a to the audio output. All passes needed run as one batched forward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from jointdit.model.interface import JointModel


@dataclass(frozen=True)
class GuidanceWeights:
    video_iso: float = 0.0
    audio_iso: float = 0.0
    image: float = 0.0
    text: float = 0.0
    negative: float = 0.0


# Weights add up: with four terms at 1.0 the prediction is extrapolated four-fold, which on the
# small default model ruined the audio (fd_logmel 35 -> 246); these gentler values did not.
PRESETS: dict[str, GuidanceWeights] = {
    "none": GuidanceWeights(),
    "cfg": GuidanceWeights(image=0.5, text=0.5),
    "jointcfg": GuidanceWeights(video_iso=0.25, audio_iso=0.25, image=0.25, text=0.25),
}


def guidance_weights(preset: str, **overrides: float) -> GuidanceWeights:
    """A preset's weights with any non-None overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown guidance preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


class _Pass(NamedTuple):
    w_video: float
    w_audio: float
    iso: bool
    image: Tensor
    text: Tensor | None
    image_embedding: Tensor | None


@dataclass
class Condition:
    image: Tensor  # (B, Cv, H, W)
    text: Tensor | None = None  # (B, Lt) ids or (B, Lt, D) features
    negative_text: Tensor | None = None  # as text
    image_embedding: Tensor | None = None  # (B, D), e.g. CLIP; dropped with the image


def guided_velocity(
    model: JointModel,
    video: Tensor,
    audio: Tensor,
    t_video: Tensor,
    t_audio: Tensor,
    cond: Condition,
    w: GuidanceWeights,
    experts_only: bool = False,
) -> tuple[Tensor, Tensor]:
    """The guided (video, audio) velocity; one model call however many terms are active."""
    b = video.shape[0]
    emb = cond.image_embedding
    no_emb = None if emb is None else torch.zeros_like(emb)
    passes = [
        _Pass(w.video_iso, w.audio_iso, True, cond.image, cond.text, emb),
        _Pass(w.image, w.image, False, torch.zeros_like(cond.image), cond.text, no_emb),
    ]
    if cond.text is not None:
        no_text = torch.zeros_like(cond.text)
        passes.append(_Pass(w.text, w.text, False, cond.image, no_text, emb))
        if cond.negative_text is not None:
            passes.append(_Pass(w.negative, w.negative, False, cond.image, cond.negative_text, emb))
    active = [p for p in passes if p.w_video or p.w_audio]

    k = 1 + len(active)
    pred_v, pred_a = model(
        video.repeat(k, 1, 1, 1, 1),
        audio.repeat(k, 1, 1, 1),
        t_video.repeat(k, *(1,) * (t_video.dim() - 1)),  # (B,) or per frame (B, T)
        t_audio.repeat(k),
        torch.cat([cond.image] + [p.image for p in active]),
        None if cond.text is None else torch.cat([cond.text] + [p.text for p in active]),
        iso=torch.tensor([False] + [p.iso for p in active]).repeat_interleave(b),
        experts_only=experts_only,
        image_embedding=None
        if emb is None
        else torch.cat([emb] + [p.image_embedding for p in active]),
    )
    pred_v, pred_a = pred_v.chunk(k), pred_a.chunk(k)
    out_v, out_a = pred_v[0].clone(), pred_a[0].clone()
    for p, pv, pa in zip(active, pred_v[1:], pred_a[1:], strict=True):
        out_v += p.w_video * (pred_v[0] - pv)
        out_a += p.w_audio * (pred_a[0] - pa)
    return out_v, out_a

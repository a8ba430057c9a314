"""Rectified flow: x_t = (1 - t) x_0 + t eps, the model predicts the velocity eps - x_0.

t = 1 is pure noise and t = 0 is data, for video and audio alike; each modality has its own t,
so one modality can be held clean (t = 0) while the other is generated. A model that holds the
first frame (JointDiTConfig.hold_first_frame) takes the video's time per frame, (B, T), with
frame 0 at t = 0: it is the image, given clean, and has no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jointdit.model.interface import JointModel
from jointdit.model.jointdit import JointDiTConfig


@dataclass(frozen=True)
class FlowConfig:
    audio_weight: float = 1.0  # weight of the audio loss beside the video loss
    logit_normal_std: float = 1.0  # t = sigmoid(N(0, std)): more weight on mid-range t (SD3)
    p_drop_image: float = 0.1  # condition dropout, for classifier-free guidance
    p_drop_text: float = 0.1
    # share of samples with one modality held clean (t = 0, no loss on it), so the model also
    # learns video -> audio and audio -> video (the v2a / a2v sampling modes)
    p_hold: float = 0.1
    # share of samples whose audio time is drawn apart from the video's (UniDiffuser): the
    # model learns audio at any noise beside video at any other, which a sampler that lets the
    # audio lag behind the video (SampleConfig.audio_lag) relies on
    p_independent: float = 0.0


@dataclass
class Batch:
    video: Tensor  # (B, T, Cv, H, W) clean latents
    audio: Tensor  # (B, Ca, F, L)
    image: Tensor  # (B, Cv, H, W) first-frame latent
    text: Tensor  # (B, Lt) token ids, or (B, Lt, D) text features (CLIP)
    image_embedding: Tensor | None = None  # (B, D), e.g. CLIP of the first frame

    def __len__(self) -> int:
        return self.video.shape[0]


def noised(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t for t of shape (B,) or, per video frame, (B, T)."""
    t = t.view(*t.shape, *(1,) * (x0.dim() - t.dim()))
    return (1 - t) * x0 + t * noise


def holds_first_frame(model: JointModel) -> bool:
    """Whether the model was built to take frame 0 as the clean image (our DiT with
    hold_first_frame; the pretrained UNets take one time per clip)."""
    return isinstance(model.cfg, JointDiTConfig) and model.cfg.hold_first_frame


def frame_times(t: Tensor, frames: int, hold_first: bool) -> Tensor:
    """The video's time: t (B,) as it is, or per frame (B, T) with frame 0 held (t = 0)."""
    if not hold_first:
        return t
    per_frame = t[:, None].repeat(1, frames)
    per_frame[:, 0] = 0.0
    return per_frame


def sample_t(n: int, cfg: FlowConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(t_video, t_audio): one shared logit-normal t, with p_hold of samples holding a
    modality clean (t = 0), video or audio with equal odds, and p_independent of the others
    drawing the audio's t on its own."""
    t = torch.sigmoid(torch.randn(n, generator=generator) * cfg.logit_normal_std)
    hold = torch.rand(n, generator=generator) < cfg.p_hold
    video_held = torch.rand(n, generator=generator) < 0.5
    t_audio = t
    if cfg.p_independent:  # drawn only when asked: the default keeps its random stream
        own = torch.sigmoid(torch.randn(n, generator=generator) * cfg.logit_normal_std)
        apart = torch.rand(n, generator=generator) < cfg.p_independent
        t_audio = torch.where(apart, own, t)
    return t.masked_fill(hold & video_held, 0.0), t_audio.masked_fill(hold & ~video_held, 0.0)


def drop_conditions(batch: Batch, cfg: FlowConfig, generator: torch.Generator) -> Batch:
    """Zero the image latent / text of random samples (the null condition is all zeros)."""
    n = len(batch)
    keep_image = (torch.rand(n, generator=generator) >= cfg.p_drop_image).float()
    keep_text = (torch.rand(n, generator=generator) >= cfg.p_drop_text).to(batch.text.dtype)
    emb = batch.image_embedding
    return Batch(
        batch.video,
        batch.audio,
        batch.image * keep_image.view(-1, 1, 1, 1),
        batch.text * keep_text.view(-1, *(1,) * (batch.text.dim() - 1)),
        None if emb is None else emb * keep_image.view(-1, 1),
    )


def _masked_mse(pred: Tensor, target: Tensor, t: Tensor, count: Tensor | None) -> Tensor:
    """Mean over the samples with loss of each one's MSE over its frames with t > 0 (t is (B,)
    or per frame (B, T)); `count` is the number of samples with loss to divide by."""
    err = (pred - target).square().flatten(t.dim()).mean(-1)
    mask = (t > 0).float()
    if t.dim() == 2:
        frames = mask.sum(1)
        err = (err * mask).sum(1) / frames.clamp_min(1)
        mask = (frames > 0).float()
    return (err * mask).sum() / (mask.sum() if count is None else count).clamp_min(1)


def draw_noise(batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(video noise, audio noise), drawn in the order flow_loss draws them itself."""
    return (
        torch.randn(batch.video.shape, generator=generator),
        torch.randn(batch.audio.shape, generator=generator),
    )


def flow_loss(
    model: JointModel,
    batch: Batch,
    t_video: Tensor,
    t_audio: Tensor,
    generator: torch.Generator,
    audio_weight: float,
    experts_only: bool = False,
    noise: tuple[Tensor, Tensor] | None = None,
    counts: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Velocity MSE at per-modality times: t_audio (B,), t_video (B,) or per frame (B, T)
    (`frame_times`); a modality or frame held clean (t = 0) has no loss.

    `noise` (else drawn from `generator`) and `counts`, the (video, audio) numbers of samples
    with loss in the whole batch (else this batch's), let a micro-batch return its share of
    the whole batch's loss: the shares of a split batch sum to the unsplit loss.
    """
    noise_v, noise_a = draw_noise(batch, generator) if noise is None else noise
    count_v, count_a = (None, None) if counts is None else counts
    pred_v, pred_a = model(
        noised(batch.video, noise_v, t_video),
        noised(batch.audio, noise_a, t_audio),
        t_video,
        t_audio,
        batch.image,
        batch.text,
        experts_only=experts_only,
        image_embedding=batch.image_embedding,
    )
    loss_v = _masked_mse(pred_v, noise_v - batch.video, t_video, count_v)
    loss_a = _masked_mse(pred_a, noise_a - batch.audio, t_audio, count_a)
    loss = (loss_v + audio_weight * loss_a) / (1 + audio_weight)
    return loss, {"loss": loss.item(), "loss_video": loss_v.item(), "loss_audio": loss_a.item()}

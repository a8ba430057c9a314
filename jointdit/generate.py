"""Image (+ text) -> (video, audio) latents: noise, the guided velocity, a sampler.

Modes (one model, per-modality timesteps): `i2sv` generates both; `v2a` holds a given video
clean (t_video = 0 throughout) and generates its audio; `a2v` holds a given audio clean and
generates the video. A model that holds the first frame (`holds_first_frame`) gets the image as
its clean frame 0 in every mode, so a sample's first frame is the image latent exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jointdit.flow import frame_times, holds_first_frame
from jointdit.guidance import Condition, guidance_weights, guided_velocity
from jointdit.model.interface import JointModel
from jointdit.sampling import Latents, sample


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 16  # model evaluations: each one batched forward of all guidance passes
    shift: float = 1.0
    guidance: str = "jointcfg"
    seed: int = 0
    sampler: str = "euler"  # euler | heun
    # The audio's noise runs behind the video's: at sampler time t the audio is at
    # min(1, (1 + audio_lag) t), so a sound forms beside frames that already show their impacts
    # (the model must have seen such pairs: FlowConfig.p_independent). 0: in step.
    audio_lag: float = 0.0

    def __post_init__(self) -> None:
        if self.audio_lag < 0:
            raise ValueError(f"sample.audio_lag must be >= 0, got {self.audio_lag}")


@torch.no_grad()
def generate(
    model: JointModel,
    image: Tensor,
    text: Tensor | None,
    frames: int,
    audio_frames: int,
    cfg: SampleConfig,
    experts_only: bool = False,
    video: Tensor | None = None,
    audio: Tensor | None = None,
    image_embedding: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Latents (B, T, Cv, H, W) and (B, Ca, F, L) for first-frame latents `image` (B, Cv, H, W).

    Sample i of the batch uses the noise of seed `cfg.seed + i`.

    Pass clean `video` latents for v2a or clean `audio` latents for a2v; they come back as given.
    """
    if video is not None and audio is not None:
        raise ValueError("give clean video (v2a) or clean audio (a2v), not both")
    mc = model.cfg
    b, c, h, w = image.shape
    # Sample i starts from the noise of seed + i, so a sample does not depend on the batch it
    # was generated in, and an evaluation's seed list is reproducible one clip at a time.
    noise_v, noise_a = [], []
    for i in range(b):
        generator = torch.Generator().manual_seed(cfg.seed + i)
        noise_v.append(torch.randn(frames, c, h, w, generator=generator))
        noise_a.append(
            torch.randn(mc.audio_channels, mc.audio_bins, audio_frames, generator=generator)
        )
    noise_v, noise_a = torch.stack(noise_v), torch.stack(noise_a)
    hold_v, hold_a = video is not None, audio is not None
    hold_first = holds_first_frame(model)
    if hold_first:
        noise_v[:, 0] = image
    weights = guidance_weights(cfg.guidance)
    cond = Condition(image=image, text=text, image_embedding=image_embedding)

    def velocity(x: Latents, t: float) -> Latents:
        lagged = (1 + cfg.audio_lag) * t
        t_v = frame_times(torch.full((b,), 0.0 if hold_v else t), frames, hold_first)
        t_a = torch.full((b,), 0.0 if hold_a else min(1.0, lagged))
        v, a = guided_velocity(model, x[0], x[1], t_v, t_a, cond, weights, experts_only)
        # held frames and modalities do not move; the lagging audio moves at d t_audio / d t:
        # not at all while it waits at pure noise, then 1 + audio_lag times the video's pace
        v = v * (t_v > 0).to(v.dtype).view(*t_v.shape, *(1,) * (v.dim() - t_v.dim()))
        pace = 0.0 if hold_a or lagged > 1.0 else 1.0 + cfg.audio_lag
        return (v, a * pace)

    start = (video if hold_v else noise_v, audio if hold_a else noise_a)
    out_v, out_a = sample(cfg.sampler, velocity, start, cfg.steps, cfg.shift)
    return out_v, out_a

"""Image (+ text) -> (video, audio) latents: noise, the guided velocity, an Euler sampler."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jointdit.guidance import Condition, guidance_weights, guided_velocity
from jointdit.model.jointdit import JointDiT
from jointdit.sampling import Latents, sample_euler, timesteps


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 16  # model evaluations (each one batched forward of all guidance passes)
    shift: float = 1.0
    guidance: str = "jointcfg"
    seed: int = 0


@torch.no_grad()
def generate(
    model: JointDiT,
    image: Tensor,
    text: Tensor | None,
    frames: int,
    audio_frames: int,
    cfg: SampleConfig,
    experts_only: bool = False,
) -> tuple[Tensor, Tensor]:
    """Latents (B, T, Cv, H, W) and (B, Ca, F, L) for first-frame latents `image` (B, Cv, H, W)."""
    mc = model.cfg
    b, c, h, w = image.shape
    generator = torch.Generator().manual_seed(cfg.seed)
    noise = (
        torch.randn(b, frames, c, h, w, generator=generator),
        torch.randn(b, mc.audio_channels, mc.audio_bins, audio_frames, generator=generator),
    )
    weights = guidance_weights(cfg.guidance)
    cond = Condition(image=image, text=text)

    def velocity(x: Latents, t: float) -> Latents:
        tt = torch.full((b,), t)
        return guided_velocity(model, x[0], x[1], tt, tt, cond, weights, experts_only)

    video, audio = sample_euler(velocity, noise, timesteps(cfg.steps, cfg.shift))
    return video, audio

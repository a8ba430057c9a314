"""JointDiT: a video expert and an audio expert joined by full video-audio attention.

Layout follows the paper ("Animate and Sound an Image", CVPR 2025): per modality an Input block,
an Expert per depth and an Output block; each JointBlock runs the two experts, then one
attention over [video; audio; context] keys with per-modality projections, then a per-modality
GEGLU feed-forward. Every residual branch is gated by AdaLN modulation of its modality's
timestep embedding, zero-initialised (DiT), so the joint parts start as the identity and the
joint model at init equals its experts.

Latents: video (B, T, Cv, H, W), audio (B, Ca, F, L) with F frequency bins and L time frames.
The image condition (the first-frame latent) is concatenated on channels to every video frame.

Two choices set how the network meets the data (each measured in the README's ablation table):
- `prediction: x`: the output heads predict the clean latent x0 and the forward converts it to
  the flow velocity (x_t - x0) / t ("Back to Basics", Li & He 2025): a token carries a whole
  pixel patch (192 values into a 192-wide model), and clean patches lie on a simple manifold
  where noise does not.
- `hold_first_frame`: frame 0 is the image, held clean (t = 0) in training and sampling (the
  image-to-video mask of Wan and CogVideoX). The video time is then per frame (B, T), and every
  AdaLN modulation of a video token reads its own frame's time embedding, so the network knows
  which frame is given; the first frame of a sample is the image exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jointdit.model.joint_layer import JointLayer
from jointdit.model.layers import (
    Attention,
    Mlp,
    TimestepEmbedder,
    adaln,
    context_tokens,
    gate,
    grouped,
    modulate,
    text_embedder,
)
from jointdit.model.rope import axis_dims, rope_angles


@dataclass(frozen=True)
class JointDiTConfig:
    video_channels: int = 48  # Cv: channels of the codec's video latent
    audio_channels: int = 1  # Ca
    audio_bins: int = 32  # F: frequency bins of the audio latent
    video_patch: int = 2  # spatial patch of video latents (time is not patched)
    audio_patch_f: int = 32
    audio_patch_t: int = 2
    dim: int = 192
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    ff_mult: int = 2
    text_vocab: int = 1024  # 0: no text context
    text_len: int = 12
    text_embed_dim: int = 0  # > 0: text arrives as (B, text_len, D) features (e.g. CLIP's)
    image_embed_dim: int = 0  # > 0: a (B, D) image embedding (e.g. CLIP) becomes a context token
    video_fps: float = 8.0  # video latent frames per second
    audio_frame_rate: float = 64.0  # audio latent frames per second
    rope_time_scale: float = 16.0  # RoPE time positions per second, shared by both modalities
    rope_theta: float = 1000.0
    # Memory knobs, off by default (measured in benchmarks/attention.py): run queries in
    # chunks (exact), average-pool keys/values over groups of tokens (an approximation).
    query_chunk: int = 0
    kv_downsample: int = 1
    prediction: str = "x"  # what the output heads predict: x (clean latent) or v (velocity)
    t_floor: float = 0.05  # x-prediction: the velocity divides by max(t, t_floor)
    hold_first_frame: bool = True  # frame 0 = the image, clean (t = 0) in training and sampling
    # how the noisy latent enters: "signal" scales it by its share of signal (signal_scaled),
    # so near pure noise a token is mostly its condition; "none" as it is
    input_scale: str = "signal"
    # a 3x3 convolution over each predicted frame's latent grid after the per-token output
    # layer, across token borders (U-ViT's extra conv): neighbouring tokens agree on an object
    # that straddles them
    output_conv: bool = True
    # after each joint layer, the video's frames summarised (where each feature sits in the
    # frame), mixed over neighbouring frames and interpolated to every audio token's time, are
    # added to that token (FrameSync): the audio reads the motion at its own instant directly
    frame_sync: bool = True

    def __post_init__(self) -> None:
        if self.prediction not in ("x", "v"):
            raise ValueError(f"model.prediction must be 'x' or 'v', got {self.prediction!r}")
        if not 0 < self.t_floor < 1:
            raise ValueError(f"model.t_floor must be in (0, 1), got {self.t_floor}")
        if self.input_scale not in ("signal", "none"):
            raise ValueError(
                f"model.input_scale must be 'signal' or 'none', got {self.input_scale!r}"
            )
        if self.audio_bins % self.audio_patch_f:
            raise ValueError(
                f"model.audio_patch_f ({self.audio_patch_f}) must divide the codec's "
                f"{self.audio_bins} frequency bins"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class VideoInput(nn.Module):
    """Patchify (video ++ image condition) per frame -> tokens, with (t, h, w) positions."""

    def __init__(self, cfg: JointDiTConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.video_patch
        self.proj = nn.Linear(2 * cfg.video_channels * p * p, cfg.dim)

    def forward(self, video: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        b, t, c, h, w = video.shape
        p = self.cfg.video_patch
        if h % p or w % p:
            raise ValueError(f"video latent {h}x{w} is not divisible by patch {p}")
        x = torch.cat((video, image[:, None].expand(b, t, c, h, w)), dim=2)
        x = x.reshape(b, t, 2 * c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        tokens = self.proj(x.reshape(b, t * (h // p) * (w // p), -1))
        grid = torch.stack(
            torch.meshgrid(
                torch.arange(t, device=video.device) / self.cfg.video_fps,
                torch.arange(h // p, device=video.device).float(),
                torch.arange(w // p, device=video.device).float(),
                indexing="ij",
            ),
            dim=-1,
        ).reshape(-1, 3)
        grid[:, 0] *= self.cfg.rope_time_scale
        return tokens, grid


class AudioInput(nn.Module):
    """Patchify (f, t) audio latents -> tokens, padding time to a whole patch."""

    def __init__(self, cfg: JointDiTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.audio_bins % cfg.audio_patch_f:
            raise ValueError(f"audio_bins {cfg.audio_bins} not divisible by {cfg.audio_patch_f}")
        self.proj = nn.Linear(cfg.audio_channels * cfg.audio_patch_f * cfg.audio_patch_t, cfg.dim)

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        b, c, f, length = audio.shape
        pf, pt = self.cfg.audio_patch_f, self.cfg.audio_patch_t
        audio = F.pad(audio, (0, -length % pt))
        nf, nt = f // pf, audio.shape[-1] // pt
        x = audio.reshape(b, c, nf, pf, nt, pt).permute(0, 2, 4, 1, 3, 5)
        tokens = self.proj(x.reshape(b, nf * nt, -1))
        # A patch's time is its centre frame's, in seconds, on the same scale as the video's.
        seconds = (torch.arange(nt, device=audio.device) * pt + (pt - 1) / 2) / (
            self.cfg.audio_frame_rate
        )
        # Token order is (f, t), as in the reshape above; positions are (time, frequency).
        freq, time = torch.meshgrid(
            torch.arange(nf, device=audio.device).float(),
            seconds * self.cfg.rope_time_scale,
            indexing="ij",
        )
        grid = torch.stack((time, freq), dim=-1).reshape(-1, 2)
        return tokens, grid


class Expert(nn.Module):
    """One modality's transformer block: self-attention + MLP, AdaLN on the timestep (DiT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, knobs: tuple[int, int] = (0, 1)):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, knobs)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.modulation = adaln(dim, 6)

    def forward(self, x: Tensor, c: Tensor, angles: Tensor, context: Tensor | None) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.modulation(grouped(c)).chunk(6, dim=-1)
        x = x + gate(self.attn(modulate(self.norm1(x), sh1, sc1), angles, context), g1)
        return x + gate(self.mlp(modulate(self.norm2(x), sh2, sc2)), g2)


class JointBlock(nn.Module):
    def __init__(self, cfg: JointDiTConfig):
        super().__init__()
        knobs = (cfg.query_chunk, cfg.kv_downsample)
        self.video_expert = Expert(cfg.dim, cfg.heads, cfg.mlp_ratio, knobs)
        self.audio_expert = Expert(cfg.dim, cfg.heads, cfg.mlp_ratio, knobs)
        self.joint = JointLayer(cfg.dim, cfg.heads, cfg.ff_mult, knobs)


class FrameConv(nn.Module):
    """x + conv3x3(x) on every frame of a video latent (B, T, C, H, W); zero-initialised, so
    it starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x.flatten(0, 1)).view_as(x)


class FrameSync(nn.Module):
    """Video frames -> a feature per audio token at the token's time, added to the audio.

    Attention finds what the audio should follow only through learned queries; an impact is a
    reversal of an object's motion, a second difference of its position over frames, and
    position is not in the tokens' content (RoPE gives attention relative positions only). So
    each frame is summarised by the spatial moments (1, x, y, x^2, y^2, xy over the frame, in
    [-1, 1]) of a few learned per-token features: where each feature sits, at any latent size.
    A convolution over 5 frames turns those into motion (velocity, its reversals), and linear
    interpolation carries them to each audio token's centre time, as MMAudio's aligned
    synchronisation features do (Cheng et al., 2025). The output is zero-initialised: a new
    FrameSync adds nothing, and the joint model at init equals its experts.
    """

    MOMENTS = 6

    def __init__(self, cfg: JointDiTConfig, features: int = 32, kernel: int = 5):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.features = nn.Linear(cfg.dim, features)
        self.motion = nn.Conv1d(features * self.MOMENTS, cfg.dim, kernel, padding=kernel // 2)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, xv: Tensor, video_shape: tuple[int, ...], audio_shape: tuple[int, ...]
    ) -> Tensor:
        """(B, audio tokens, D) to add to the audio tokens, from video tokens (B, T*h*w, D)."""
        b, t, _, h, w = video_shape
        p = self.cfg.video_patch
        f = self.features(self.norm(xv)).view(b, t, (h // p) * (w // p), -1)
        moments = torch.einsum("btnf,nm->btfm", f, _moment_basis(h // p, w // p, xv))
        motion = F.gelu(self.motion(moments.flatten(2).transpose(1, 2)))  # (B, D, T)
        nf = audio_shape[2] // self.cfg.audio_patch_f
        nt = -(-audio_shape[3] // self.cfg.audio_patch_t)
        aligned = motion @ self._frames_to_tokens(t, nt, xv).to(motion.dtype)  # (B, D, nt)
        # audio tokens are ordered (frequency, time): every frequency row gets its instant's
        return self.out(aligned.transpose(1, 2)).repeat(1, nf, 1)

    def _frames_to_tokens(self, frames: int, tokens: int, like: Tensor) -> Tensor:
        """(T, nt) linear-interpolation weights from frame times to audio token centres."""
        cfg = self.cfg
        centres = (torch.arange(tokens, device=like.device) + 0.5) * cfg.audio_patch_t - 0.5
        at = (centres / cfg.audio_frame_rate * cfg.video_fps).clamp(0, frames - 1)
        lo = at.floor().clamp(max=max(frames - 2, 0)).long()
        frac = at - lo
        cols = torch.arange(tokens, device=like.device)
        weights = torch.zeros(frames, tokens, device=like.device)
        weights.index_put_((lo, cols), 1 - frac)
        weights.index_put_(((lo + 1).clamp(max=frames - 1), cols), frac, accumulate=True)
        return weights


def _moment_basis(rows: int, cols: int, like: Tensor) -> Tensor:
    """(rows*cols, 6): 1, x, y, x^2, y^2, xy of each token's centre in [-1, 1], / tokens."""
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, rows, device=like.device),
        torch.linspace(-1, 1, cols, device=like.device),
        indexing="ij",
    )
    x, y = x.flatten(), y.flatten()
    basis = torch.stack((torch.ones_like(x), x, y, x * x, y * y, x * y), dim=-1)
    return (basis / (rows * cols)).to(like.dtype)


class FinalLayer(nn.Module):
    """AdaLN + linear back to patch values (DiT), zero-initialised."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = adaln(dim, 2)
        self.linear = nn.Linear(dim, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(grouped(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def unpatchify_video(x: Tensor, shape: tuple[int, ...], cfg: JointDiTConfig) -> Tensor:
    """Patch values (B, N, Cv*p*p) back to a video latent of `shape` (B, T, Cv, H, W)."""
    b, t, c, h, w = shape
    p = cfg.video_patch
    v = x.reshape(b, t, h // p, w // p, c, p, p)
    return v.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, t, c, h, w)


def unpatchify_audio(x: Tensor, shape: tuple[int, ...], cfg: JointDiTConfig) -> Tensor:
    """Patch values back to an audio latent of `shape` (B, Ca, F, L), time padding cut."""
    b, ca, f, length = shape
    pf, pt = cfg.audio_patch_f, cfg.audio_patch_t
    nt = -(-length // pt)
    a = x.reshape(b, f // pf, nt, ca, pf, pt)
    return a.permute(0, 3, 1, 4, 2, 5).reshape(b, ca, f, nt * pt)[..., :length]


@dataclass
class Tokens:
    """The state between the model's sub-modules: tokens, conditioning vectors, positions."""

    video: Tensor
    audio: Tensor
    cv: Tensor
    ca: Tensor
    angles_v: Tensor
    angles_a: Tensor
    context: Tensor | None
    video_shape: tuple[int, ...]
    audio_shape: tuple[int, ...]


class JointDiT(nn.Module):
    def __init__(self, cfg: JointDiTConfig):
        super().__init__()
        self.cfg = cfg
        self.video_input = VideoInput(cfg)
        self.audio_input = AudioInput(cfg)
        self.video_time = TimestepEmbedder(cfg.dim)
        self.audio_time = TimestepEmbedder(cfg.dim)
        self.text = text_embedder(cfg.text_embed_dim, cfg.text_vocab, cfg.text_len, cfg.dim)
        self.image_embed = nn.Linear(cfg.image_embed_dim, cfg.dim) if cfg.image_embed_dim else None
        self.blocks = nn.ModuleList(JointBlock(cfg) for _ in range(cfg.depth))
        self.sync = (
            nn.ModuleList(FrameSync(cfg) for _ in range(cfg.depth)) if cfg.frame_sync else None
        )
        p = cfg.video_patch
        self.video_output = FinalLayer(cfg.dim, cfg.video_channels * p * p)
        self.video_refine = FrameConv(cfg.video_channels) if cfg.output_conv else nn.Identity()
        self.audio_output = FinalLayer(
            cfg.dim, cfg.audio_channels * cfg.audio_patch_f * cfg.audio_patch_t
        )
        self.video_dims = axis_dims(cfg.head_dim, spatial_axes=2)
        self.audio_dims = axis_dims(cfg.head_dim, spatial_axes=1)
        # recompute each block's activations in backward instead of storing them
        self.grad_checkpointing = False

    def forward_input(
        self,
        video: Tensor,
        audio: Tensor,
        t_video: Tensor,
        t_audio: Tensor,
        image: Tensor,
        text: Tensor | None = None,
        image_embedding: Tensor | None = None,
    ) -> Tokens:
        if self.cfg.input_scale == "signal":
            video, audio = signal_scaled(video, t_video), signal_scaled(audio, t_audio)
        xv, grid_v = self.video_input(video, image)
        xa, grid_a = self.audio_input(audio)
        context = context_tokens(self.text, self.image_embed, text, image_embedding)
        return Tokens(
            video=xv,
            audio=xa,
            # per frame (B, T, D) when the video time is per frame, else (B, D)
            cv=self.video_time(t_video.flatten()).unflatten(0, t_video.shape),
            ca=self.audio_time(t_audio),
            angles_v=rope_angles(grid_v, self.video_dims, self.cfg.rope_theta),
            angles_a=rope_angles(grid_a, self.audio_dims, self.cfg.rope_theta),
            context=context,
            video_shape=tuple(video.shape),
            audio_shape=tuple(audio.shape),
        )

    def forward_expert(self, i: int, s: Tokens) -> Tokens:
        block = self.blocks[i]
        s.video = block.video_expert(s.video, s.cv, s.angles_v, s.context)
        s.audio = block.audio_expert(s.audio, s.ca, s.angles_a, s.context)
        return s

    def forward_joint(self, i: int, s: Tokens, iso: Tensor | bool) -> Tokens:
        s.video, s.audio = self.blocks[i].joint(
            s.video, s.audio, s.cv, s.ca, s.angles_v, s.angles_a, s.context, iso
        )
        if self.sync is not None and iso is not True:
            cross = self.sync[i](s.video, s.video_shape, s.audio_shape)
            if isinstance(iso, Tensor):  # isolated samples get nothing from the video
                cross = cross * (~iso).to(cross.dtype)[:, None, None]
            s.audio = s.audio + cross
        return s

    def forward_output(self, s: Tokens) -> tuple[Tensor, Tensor]:
        v = unpatchify_video(self.video_output(s.video, s.cv), s.video_shape, self.cfg)
        a = unpatchify_audio(self.audio_output(s.audio, s.ca), s.audio_shape, self.cfg)
        return self.video_refine(v), a

    def _block(
        self,
        i: int,
        s: Tokens,
        iso: Tensor | bool,
        experts_only: bool,
        video: Tensor,
        audio: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Block i on (video, audio) tokens: the expert, then (unless experts_only) the joint."""
        s = replace(s, video=video, audio=audio)
        s = self.forward_expert(i, s)
        if not experts_only:
            s = self.forward_joint(i, s, iso)
        return s.video, s.audio

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
        """Velocity predictions (video, audio) for noisy latents at per-modality times.

        t_video is (B,) or, per frame, (B, T); t_audio is (B,). iso: True (or a (B,) bool
        mask) isolates the modalities in the joint attention; experts_only skips the joint
        layers altogether (the no-joint baseline).
        """
        s = self.forward_input(video, audio, t_video, t_audio, image, text, image_embedding)
        for i in range(len(self.blocks)):
            args = (i, s, iso, experts_only, s.video, s.audio)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                s.video, s.audio = checkpoint(self._block, *args, use_reentrant=False)
            else:
                s.video, s.audio = self._block(*args)
        out_v, out_a = self.forward_output(s)
        if self.cfg.prediction == "v":
            return out_v, out_a
        return (
            velocity_from_x0(out_v, video, t_video, self.cfg.t_floor),
            velocity_from_x0(out_a, audio, t_audio, self.cfg.t_floor),
        )


def signal_scaled(x_t: Tensor, t: Tensor) -> Tensor:
    """x_t times (1 - t) / sqrt((1 - t)^2 + t^2): its share of signal at unit-variance data.

    A token mixes the noisy latent with the image condition in one projection. Near pure noise
    the latent says nothing about the clip, yet as it is it would swamp the condition, and the
    network would have to learn to dig the image out from under it; scaled, the condition is
    what the token holds there, while a clean latent (t = 0, the held frame) enters unscaled.
    """
    t = t.to(x_t.dtype)
    scale = (1 - t) / ((1 - t).square() + t.square()).sqrt()
    return x_t * scale.view(*t.shape, *(1,) * (x_t.dim() - t.dim()))


def velocity_from_x0(x0: Tensor, x_t: Tensor, t: Tensor, t_floor: float) -> Tensor:
    """The flow velocity eps - x0 = (x_t - x0) / t of a clean-latent prediction; t is (B,) or
    (B, T) for a video's frames, and is floored at `t_floor`, as 1 / t explodes near the data
    (where the velocity matters least: a step there moves the sample by t)."""
    t = t.clamp_min(t_floor).to(x_t.dtype)
    return (x_t - x0) / t.view(*t.shape, *(1,) * (x_t.dim() - t.dim()))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts by top-level part (experts and joint layers summed over blocks)."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = parts[2] if parts[0] == "blocks" else parts[0]
        counts[key] = counts.get(key, 0) + p.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts

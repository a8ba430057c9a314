"""Synchformer, the audio-visual offset classifier behind DeSync.

Synchformer (Iashin et al. 2024, "Synchformer: Efficient Synchronization from Sparse Cues")
predicts the offset of a clip's audio against its video, one of 21 classes from -2 s to +2 s in
steps of 0.2 s, from 4.8 s of both: fourteen 0.64-s segments every 0.32 s. Each video segment
(16 frames at 25 fps, 224x224) goes through a MotionFormer (ViT-B/16 with divided space-time
attention over 2-frame tubelets), pooled over space to 8 tokens; each audio segment (a
128-band log-mel spectrogram of 0.64 s at 16 kHz) through an AST, pooled over frequency to 6
tokens; a 3-layer transformer over all 198 tokens classifies the offset.

The modules and parameter names follow the state dict that hkchengrex/av-benchmark and MMAudio
load (``synchformer_state_dict.pth``, the ``24-01-04T16-39-21`` AudioSet model), so that file
loads as is; weights are never downloaded, the user names a local file. The MotionFormer's 2D
``patch_embed`` is unused, as in the original, and kept because the file holds it.

``desync.py`` holds the benchmark's protocol around this network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEGMENT_FRAMES = 16  # a video segment: 0.64 s at 25 fps
TUBELET = 2  # frames per video token
SPEC_FRAMES = 66  # a segment's log-mel frames: 10240 samples / hop 160 + 1, padded by one
PATCH = 16  # both patch embeddings
AUDIO_STRIDE = 10  # AST's patches overlap: 16x16 every 10 bins and 10 frames
WINDOW_SEGMENTS = 14  # segments the offset classifier sees at once (4.8 s)


@dataclass(frozen=True)
class SynchformerConfig:
    """Sizes of the network; the defaults are the published model's.

    The time structure (16-frame segments, 66 spectrogram frames, 14 segments) is fixed by the
    protocol and the classifier's positional embedding; the widths, depths and input sizes may
    shrink (tests build tiny ones).
    """

    dim: int = 768
    video_depth: int = 12
    video_heads: int = 12
    audio_depth: int = 12
    audio_heads: int = 12
    sync_depth: int = 3
    sync_heads: int = 8
    image_size: int = 224
    num_mel_bins: int = 128
    num_offsets: int = 21

    @property
    def video_tokens(self) -> int:
        """Tokens per video segment after spatial pooling (one per tubelet)."""
        return SEGMENT_FRAMES // TUBELET

    @property
    def audio_grid(self) -> tuple[int, int]:
        """AST's patch grid (frequency, time) of one segment."""
        return (
            (self.num_mel_bins - PATCH) // AUDIO_STRIDE + 1,
            (SPEC_FRAMES - PATCH) // AUDIO_STRIDE + 1,
        )


def _layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention over the second-to-last dimension of any batch shape."""
    return F.scaled_dot_product_attention(q, k, v)


class _PooledEncoderLayer(nn.TransformerEncoderLayer):
    """A pre-norm transformer layer that pools a sequence into a learned CLS token."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__(
            dim,
            heads,
            hidden,
            dropout=0.0,
            activation=nn.GELU(),
            layer_norm_eps=1e-6,
            batch_first=True,
            norm_first=True,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``(N, L, D)`` -> ``(N, D)``: the CLS token's output."""
        cls = self.cls_token.expand(len(x), -1, -1)
        return super().forward(torch.cat([cls, x], dim=1))[:, 0]


# ---------------------------------------------------------------- video: MotionFormer


class _DividedAttention(nn.Module):
    """Attention within each frame ("space") or across frames at one position ("time").

    Tokens are ``[CLS, frame 0 patches, frame 1 patches, ...]``. The CLS token attends to every
    token; every other token attends to the CLS token and to its own group.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, frames: int, over: str) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        cls_out = _attend(q[:, :, :1], k, v)  # (B, h, 1, d)

        def groups(t: Tensor) -> Tensor:  # (B, h, F*P, d) -> (B, h, groups, members, d)
            grid = t[:, :, 1:].unflatten(2, (frames, -1))
            return grid.transpose(2, 3) if over == "time" else grid

        q_, k_, v_ = groups(q), groups(k), groups(v)
        n_groups = q_.shape[2]
        k_ = torch.cat([k[:, :, None, :1].expand(-1, -1, n_groups, -1, -1), k_], dim=3)
        v_ = torch.cat([v[:, :, None, :1].expand(-1, -1, n_groups, -1, -1), v_], dim=3)
        out = _attend(q_, k_, v_)
        if over == "time":
            out = out.transpose(2, 3)
        out = torch.cat([cls_out, out.flatten(2, 3)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _DividedBlock(nn.Module):
    """Time attention, then space attention, then the MLP, each pre-norm and residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim, 1e-6)
        self.attn = _DividedAttention(dim, heads)
        self.timeattn = _DividedAttention(dim, heads)
        self.norm2 = _layer_norm(dim, 1e-6)
        self.mlp = _Mlp(dim, 4 * dim)
        self.norm3 = _layer_norm(dim, 1e-6)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        x = x + self.timeattn(self.norm3(x), frames, "time")
        x = x + self.attn(self.norm1(x), frames, "space")
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.proj = conv


class MotionFormer(nn.Module):
    """Video segments ``(N, 3, 16, S, S)`` in [-1, 1] -> ``(N, 8, D)``, one token per tubelet."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        dim, side = cfg.dim, cfg.image_size // PATCH
        self.patches = side * side
        self.patch_embed = _PatchEmbed(nn.Conv2d(3, dim, PATCH, PATCH))
        self.patch_embed_3d = _PatchEmbed(
            nn.Conv3d(3, dim, (TUBELET, PATCH, PATCH), (TUBELET, PATCH, PATCH))
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patches, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.video_tokens, dim))
        for p in (self.cls_token, self.pos_embed, self.temp_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList(
            _DividedBlock(dim, cfg.video_heads) for _ in range(cfg.video_depth)
        )
        self.norm = _layer_norm(dim, 1e-6)
        self.spatial_attn_agg = _PooledEncoderLayer(dim, cfg.video_heads, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)  # (N, t*P, D), t-major
        frames = tokens.shape[1] // self.patches
        position = self.pos_embed[:, 1:].repeat(1, frames, 1)
        position = position + self.temp_embed.repeat_interleave(self.patches, dim=1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(len(x), -1, -1)
        x = torch.cat([cls, tokens + position], dim=1)
        for block in self.blocks:
            x = block(x, frames)
        x = self.norm(x[:, 1:])
        pooled = self.spatial_attn_agg(x.reshape(-1, self.patches, x.shape[-1]))
        return pooled.view(len(tokens), frames, -1)


# ---------------------------------------------------------------- audio: AST


class _Dense(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)


class _HeadsAttention(nn.Module):
    """Multi-head self-attention from separate query, key and value projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        def split(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = _attend(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return out.transpose(1, 2).flatten(2)


class _ASTAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = _HeadsAttention(dim, heads)
        self.output = _Dense(dim, dim)


class _ASTLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = _ASTAttention(dim, heads)
        self.intermediate = _Dense(dim, 4 * dim)
        self.output = _Dense(4 * dim, dim)
        self.layernorm_before = _layer_norm(dim, 1e-12)
        self.layernorm_after = _layer_norm(dim, 1e-12)

    def forward(self, x: Tensor) -> Tensor:
        attention = self.attention.attention(self.layernorm_before(x))
        x = x + self.attention.output.dense(attention)
        hidden = F.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(hidden)


class _ASTEncoder(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            _ASTLayer(cfg.dim, cfg.audio_heads) for _ in range(cfg.audio_depth)
        )


class _ASTPatchEmbeddings(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(1, dim, PATCH, AUDIO_STRIDE)


class _ASTEmbeddings(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        f, t = cfg.audio_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 2 + f * t, cfg.dim))
        for p in (self.cls_token, self.distillation_token, self.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)
        self.patch_embeddings = _ASTPatchEmbeddings(cfg.dim)

    def forward(self, mel: Tensor) -> Tensor:
        """``(N, F, T)`` -> ``(N, 2 + f*t, D)``: CLS, distillation, patches (frequency-major)."""
        patches = self.patch_embeddings.projection(mel[:, None]).flatten(2).transpose(1, 2)
        n = len(mel)
        aux = [self.cls_token.expand(n, -1, -1), self.distillation_token.expand(n, -1, -1)]
        return torch.cat([*aux, patches], dim=1) + self.position_embeddings


class _ASTModel(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.embeddings = _ASTEmbeddings(cfg)
        self.encoder = _ASTEncoder(cfg)
        self.layernorm = _layer_norm(cfg.dim, 1e-12)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.embeddings(mel)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AST(nn.Module):
    """Log-mel segments ``(N, F, 66)`` -> ``(N, 6, D)``, one token per time patch."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.grid = cfg.audio_grid
        self.ast = _ASTModel(cfg)
        self.freq_attn_agg = _PooledEncoderLayer(cfg.dim, cfg.audio_heads, 4 * cfg.dim)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.ast(mel)[:, 2:]  # without CLS and distillation tokens
        f, t = self.grid
        by_time = x.unflatten(1, (f, t)).transpose(1, 2).reshape(-1, f, x.shape[-1])
        return self.freq_attn_agg(by_time).view(len(mel), t, -1)


# ---------------------------------------------------------------- the offset classifier


class _SelfAttention(_HeadsAttention):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(super().forward(x))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads)
        # Indices 0 and 2 hold the weights, as in the published Sequential (GELU, Dropout).
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.0)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _Positions(nn.Module):
    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(1, length, dim))


class OffsetTransformer(nn.Module):
    """``[OFF, video tokens, MOD, audio tokens]`` -> offset-class logits from the OFF token."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        dim = cfg.dim
        length = 2 + WINDOW_SEGMENTS * (cfg.video_tokens + cfg.audio_grid[1])
        self.vis_in_lnorm = nn.LayerNorm(dim)
        self.aud_in_lnorm = nn.LayerNorm(dim)
        self.OFF_tok = nn.Parameter(torch.randn(1, 1, dim))
        self.MOD_tok = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_emb_cfg = _Positions(length, dim)
        self.blocks = nn.Sequential(*(_Block(dim, cfg.sync_heads) for _ in range(cfg.sync_depth)))
        self.ln_f = nn.LayerNorm(dim)
        self.off_head = nn.Linear(dim, cfg.num_offsets)

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        """``(B, Lv, D)``, ``(B, La, D)`` -> ``(B, num_offsets)``."""
        n = len(video)
        x = torch.cat(
            [
                self.OFF_tok.expand(n, -1, -1),
                self.vis_in_lnorm(video),
                self.MOD_tok.expand(n, -1, -1),
                self.aud_in_lnorm(audio),
            ],
            dim=1,
        )
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """Segment features of both modalities and the offset classifier over a 14-segment window."""

    def __init__(self, cfg: SynchformerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SynchformerConfig()
        self.vfeat_extractor = MotionFormer(self.cfg)
        self.afeat_extractor = AST(self.cfg)
        self.vproj = nn.Linear(self.cfg.dim, self.cfg.dim)
        self.aproj = nn.Linear(self.cfg.dim, self.cfg.dim)
        self.transformer = OffsetTransformer(self.cfg)

    def video_features(self, segments: Tensor) -> Tensor:
        """``(N, 16, 3, S, S)`` frames in [-1, 1] -> ``(N, 8, D)``."""
        return self.vfeat_extractor(segments.transpose(1, 2))

    def audio_features(self, mel: Tensor) -> Tensor:
        """``(N, F, 66)`` normalised log-mel -> ``(N, 6, D)``."""
        return self.afeat_extractor(mel)

    def offset_logits(self, video: Tensor, audio: Tensor) -> Tensor:
        """Features of windows of 14 segments, ``(B, 14, 8, D)`` and ``(B, 14, 6, D)`` ->
        ``(B, num_offsets)`` logits of the audio's offset against the video."""
        if video.shape[1] != WINDOW_SEGMENTS or audio.shape[1] != WINDOW_SEGMENTS:
            raise ValueError(
                f"the offset classifier takes windows of {WINDOW_SEGMENTS} segments, got "
                f"{video.shape[1]} video and {audio.shape[1]} audio segments"
            )
        return self.transformer(self.vproj(video).flatten(1, 2), self.aproj(audio).flatten(1, 2))

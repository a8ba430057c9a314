"""The layers JointDiT and the joint model over pretrained backbones share: AdaLN modulation,
timestep and text embedders, attention (SDPA, or dense scores for small CPU problems) and
feed-forwards."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointdit.model.rope import apply_rope


def grouped(c: Tensor) -> Tensor:
    """A conditioning vector as (B, G, D): G groups of consecutive tokens (video frames) with
    their own vector; a plain (B, D) vector is one group for all tokens."""
    return c if c.dim() == 3 else c[:, None]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, D) shifted and scaled per group of tokens; shift, scale (B, G, D), G | N."""
    b, n, d = x.shape
    g = shift.shape[1]
    out = x.view(b, g, n // g, d) * (1 + scale[:, :, None]) + shift[:, :, None]
    return out.view(b, n, d)


def gate(x: Tensor, g: Tensor) -> Tensor:
    """x (B, N, D) times the per-group gate g (B, G, D)."""
    b, n, d = x.shape
    return (x.view(b, g.shape[1], n // g.shape[1], d) * g[:, :, None]).view(b, n, d)


def adaln(dim: int, chunks: int, cond_dim: int | None = None) -> nn.Sequential:
    """SiLU + Linear from a `cond_dim` (default `dim`) conditioning vector to `chunks`
    modulation vectors of width `dim`, zero-initialised (identity start)."""
    linear = nn.Linear(cond_dim or dim, chunks * dim)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.SiLU(), linear)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t in [0, 1] followed by an MLP (DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat((args.cos(), args.sin()), dim=-1))


class TextEmbedder(nn.Module):
    """Context tokens from hashed word ids (token 0 = padding, all-zero ids = no text)."""

    def __init__(self, vocab: int, length: int, dim: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        return self.tokens(ids) + self.position[: ids.shape[1]]


class TextProjection(nn.Module):
    """Context tokens from per-token text features (B, L, D), e.g. CLIP's text tower."""

    def __init__(self, in_dim: int, length: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features) + self.position[: features.shape[1]]


def text_embedder(embed_dim: int, vocab: int, length: int, dim: int) -> nn.Module | None:
    """The text half of the context: projected features (embed_dim > 0, e.g. CLIP's tokens),
    else embedded hashed word ids (vocab > 0), else no text."""
    if embed_dim:
        return TextProjection(embed_dim, length, dim)
    if vocab:
        return TextEmbedder(vocab, length, dim)
    return None


class Attention(nn.Module):
    """Self-attention over one modality's tokens, with extra context keys (no RoPE on those)."""

    def __init__(self, dim: int, heads: int, knobs: tuple[int, int] = (0, 1)):
        super().__init__()
        self.heads = heads
        self.knobs = knobs
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, angles: Tensor, context: Tensor | None) -> Tensor:
        q, k, v = split_heads(self.qkv(x), 3, self.heads)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        if context is not None:
            _, kc, vc = split_heads(self.qkv(context), 3, self.heads)
            k, v = torch.cat((k, kc), dim=2), torch.cat((v, vc), dim=2)
        return self.out(merge_heads(attend(q, k, v, *self.knobs)))


def split_heads(x: Tensor, parts: int, heads: int) -> list[Tensor]:
    b, n, _ = x.shape
    return list(x.reshape(b, n, parts, heads, -1).permute(2, 0, 3, 1, 4).unbind(0))


def merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def pool_tokens(x: Tensor, factor: int) -> Tensor:
    """Mean over consecutive groups of `factor` tokens of x (B, H, N, D); a short last group
    averages only the tokens it has."""
    n = x.shape[2]
    pad = -n % factor
    sums = F.pad(x, (0, 0, 0, pad)).unflatten(2, (-1, factor)).sum(3)
    counts = torch.full((n + pad,), 1.0, device=x.device)
    counts[n:] = 0
    return sums / counts.unflatten(0, (-1, factor)).sum(1)[:, None].to(x.dtype)


# Up to this many scores per head, attention on a CPU runs as two matmuls around a softmax
# (`dense_attention`): at the default model's 288 x 300 its forward + backward in bf16 took a
# quarter of the fused CPU kernel's time, whose backward walks small blocks one at a time.
# Beyond it, the fused kernel's memory saving matters more (benchmarks/attention.py).
DENSE_SCORES_MAX = 1 << 18


def dense_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with the N x M scores materialised.

    Scores and softmax are float32 whatever the inputs (under bf16 autocast too), and the
    weights are rounded to v's dtype for the weighted sum: the precision of the fused kernels.
    """
    with torch.autocast(q.device.type, enabled=False):
        scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-2, -1)
        return scores.softmax(-1).to(v.dtype) @ v


def attend(q: Tensor, k: Tensor, v: Tensor, query_chunk: int = 0, kv_downsample: int = 1) -> Tensor:
    """scaled_dot_product_attention (fused kernels, no N x N score tensor where the backend
    has one), with the two memory knobs of JointDiTConfig; small attentions on a CPU are
    `dense_attention` (faster there, the same function)."""
    if kv_downsample > 1:
        k, v = pool_tokens(k, kv_downsample), pool_tokens(v, kv_downsample)
    if q.device.type == "cpu" and q.shape[2] * k.shape[2] <= DENSE_SCORES_MAX:
        return dense_attention(q, k, v)
    if query_chunk <= 0 or q.shape[2] <= query_chunk:
        return F.scaled_dot_product_attention(q, k, v)
    chunks = [F.scaled_dot_product_attention(c, k, v) for c in q.split(query_chunk, dim=2)]
    return torch.cat(chunks, dim=2)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )


class GEGLU(nn.Module):
    """Gated-GELU feed-forward (the joint block's V-FF / A-FF)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


def context_tokens(
    text_embedder: nn.Module | None,
    image_embedder: nn.Linear | None,
    text: Tensor | None,
    image_embedding: Tensor | None,
) -> Tensor | None:
    """Context tokens [text; image] (B, N, D), or None when there is neither."""
    tokens = []
    if text_embedder is not None and text is not None:
        tokens.append(text_embedder(text))
    if image_embedder is not None and image_embedding is not None:
        tokens.append(image_embedder(image_embedding)[:, None])
    return torch.cat(tokens, dim=1) if tokens else None

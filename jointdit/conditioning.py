"""What a caption and a first frame become for the model: its text and image context.

`hashed` (the default, no weights): a caption becomes hashed word ids (`jointdit.text`), and
there is no image embedding (the first-frame latent is the image condition).
`clip`: a caption becomes CLIP's text-token features and the first frame CLIP's image
embedding (open_clip, from a local checkpoint); the model projects both into context tokens.

The cache stage and the served model both encode through `Conditioner`, so training and
sampling see the same features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from jointdit.text import tokenize

ENCODERS = ("hashed", "clip")


@dataclass(frozen=True)
class ConditioningConfig:
    encoder: str = "hashed"  # hashed | clip
    clip_model: str = "ViT-B-16"  # an open_clip architecture name (dashes: ViT-B-16)
    clip_pretrained: str = ""  # open_clip checkpoint file, or snapshot dir (open_clip_config.json)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"conditioning.encoder {self.encoder!r}: choose from {ENCODERS}")
        if self.encoder == "clip" and not self.clip_pretrained:
            raise ValueError(
                "conditioning.encoder is clip but conditioning.clip_pretrained is empty: name "
                "a local open_clip checkpoint file or snapshot directory (nothing is downloaded)"
            )


def conditioning_dims(cfg: ConditioningConfig) -> tuple[int, int]:
    """(text feature width, image embedding width) the model takes; (0, 0) for `hashed`.

    Read from the open_clip architecture config, without loading any weights, so a model can
    be built (and a run fail on a wrong setting) before the encoder is needed.
    """
    if cfg.encoder == "hashed":
        return 0, 0
    from jointdit.encoders.clip import clip_architecture

    arch = clip_architecture(cfg.clip_model, cfg.clip_pretrained)
    return int(arch["text_cfg"]["width"]), int(arch["embed_dim"])


class Conditioner:
    """Encodes captions and first frames for one model (its text_len and text_vocab)."""

    def __init__(self, cfg: ConditioningConfig, text_len: int, text_vocab: int) -> None:
        self.cfg, self.text_len, self.text_vocab = cfg, text_len, text_vocab
        self.clip = None
        if cfg.encoder == "clip":
            from jointdit.encoders.clip import CLIPConfig, CLIPEncoder

            self.clip = CLIPEncoder(
                CLIPConfig(model=cfg.clip_model, pretrained=cfg.clip_pretrained, device=cfg.device)
            )

    def encode(self, captions: list[str], first_frames: list[np.ndarray]) -> dict[str, Tensor]:
        """`text` (N, text_len) ids or (N, text_len, W) features, and for clip an
        `image_embedding` (N, D), from captions and uint8 (H, W, 3) first frames.

        An empty caption is all zeros either way: the null text that guidance drops to.
        """
        if self.clip is None:
            return {"text": tokenize(captions, self.text_vocab, self.text_len)}
        text = torch.from_numpy(self.clip.encode_token_features(captions, self.text_len))
        image = torch.from_numpy(self.clip.encode_images(first_frames)).float()
        return {"text": text, "image_embedding": image}

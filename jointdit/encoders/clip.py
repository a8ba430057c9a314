"""CLIP image and text embeddings through open_clip, from a local checkpoint only.

``pretrained`` is either a checkpoint file for the built-in architecture ``model`` (e.g.
``ViT-B-16`` and its ``open_clip_pytorch_model.bin``) or a directory holding
``open_clip_config.json`` and the weights (the layout of a Hugging Face snapshot of an
open_clip model). open_clip would treat any other string as a tag to download; that is refused
here, so a run never reaches for the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-B-16"
    pretrained: str = ""  # checkpoint file, or a directory with open_clip_config.json
    device: str = "cpu"
    batch_size: int = 32


class ClipEncoder:
    """L2-normalised CLIP embeddings of uint8 RGB images and of captions."""

    def __init__(self, cfg: ClipConfig) -> None:
        import open_clip

        path = Path(cfg.pretrained)
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{path}: no open_clip_config.json, not an open_clip model")
            name, pretrained = f"local-dir:{path}", None
        elif path.is_file():
            name, pretrained = cfg.model, str(path)
        else:
            raise FileNotFoundError(f"{path}: CLIP checkpoint not found (a file or a directory)")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=cfg.device, require_pretrained=True
            )
        except RuntimeError as err:  # open_clip reports a state-dict mismatch this way
            raise ValueError(f"{path}: does not hold {cfg.model} weights ({err})") from err
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        self.cfg = cfg

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """``(N, D)`` float64 embeddings of uint8 ``(H, W, 3)`` images, preprocessed as CLIP was."""
        out = []
        for k in range(0, len(images), self.cfg.batch_size):
            batch = torch.stack(
                [self.preprocess(Image.fromarray(i)) for i in images[k : k + self.cfg.batch_size]]
            )
            out.append(self.model.encode_image(batch.to(self.cfg.device), normalize=True))
        return torch.cat(out).double().cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """``(N, D)`` float64 embeddings of captions."""
        out = []
        for k in range(0, len(texts), self.cfg.batch_size):
            tokens = self.tokenizer(texts[k : k + self.cfg.batch_size]).to(self.cfg.device)
            out.append(self.model.encode_text(tokens, normalize=True))
        return torch.cat(out).double().cpu().numpy()

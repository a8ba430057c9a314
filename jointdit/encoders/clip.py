"""CLIP image and text embeddings through open_clip, from a local checkpoint only.

``pretrained`` is either a checkpoint file for the built-in architecture ``model`` (e.g.
``ViT-B-16`` and its ``open_clip_pytorch_model.bin``) or a directory holding
``open_clip_config.json`` and the weights (the layout of a Hugging Face snapshot of an
open_clip model). open_clip would treat any other string as a tag to download; that is refused
here, so a run never reaches for the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class CLIPConfig:
    model: str = "ViT-B-16"
    pretrained: str = ""  # checkpoint file, or a directory with open_clip_config.json
    device: str = "cpu"
    batch_size: int = 32


def clip_architecture(model: str, pretrained: str) -> dict[str, Any]:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) that `pretrained` holds:
    a snapshot directory's own open_clip_config.json, else the built-in `model`'s."""
    import open_clip

    path = Path(pretrained)
    if path.is_dir():
        config_file = path / "open_clip_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path}: no open_clip_config.json, not an open_clip model")
        config = json.loads(config_file.read_text())
        return config.get("model_cfg", config)
    arch = open_clip.get_model_config(model)
    if arch is None:
        raise ValueError(
            f"{model!r} is not an open_clip architecture (names use dashes, e.g. ViT-B-16)"
        )
    return arch


class CLIPEncoder:
    """L2-normalised CLIP embeddings of uint8 RGB images and of captions."""

    def __init__(self, cfg: CLIPConfig) -> None:
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

    @torch.no_grad()
    def encode_token_features(self, texts: list[str], length: int) -> np.ndarray:
        """``(N, length, W)`` float32 per-token features of the text tower (its final layer
        norm, before pooling): the context tokens a generator attends to, as text-to-image
        models use CLIP. Positions after the end-of-text token, and every position of an empty
        caption, are zero, so an empty caption is the all-zero null text."""
        tower = getattr(self.model, "text", self.model)
        norm = getattr(tower, "ln_final", None)
        if norm is None:
            raise ValueError(f"{self.cfg.pretrained}: this CLIP's text tower has no ln_final")
        captured: list[torch.Tensor] = []
        hook = norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = []
            for k in range(0, len(texts), self.cfg.batch_size):
                chunk = texts[k : k + self.cfg.batch_size]
                tokens = self.tokenizer(chunk).to(self.cfg.device)
                captured.clear()
                self.model.encode_text(tokens)
                features = captured[-1].float()
                # CLIP's tokenizer gives the end-of-text token the highest id
                end = tokens.argmax(dim=-1)
                keep = torch.arange(tokens.shape[1], device=tokens.device)[None] <= end[:, None]
                nonempty = torch.tensor([bool(t.strip()) for t in chunk], device=tokens.device)
                features = features * (keep & nonempty[:, None])[..., None]
                pad = max(0, length - features.shape[1])
                out.append(torch.nn.functional.pad(features, (0, 0, 0, pad))[:, :length])
        finally:
            hook.remove()
        return torch.cat(out).cpu().numpy()

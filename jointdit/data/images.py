"""Still images in: the user's conditioning image, at the size the model works at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def load_image(path: Path, width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3) RGB, centre-cropped to the aspect ratio, then resized."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    w, h = im.size
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    im = im.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
    return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)

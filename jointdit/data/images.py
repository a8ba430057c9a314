"""Still images in: the user's conditioning image, checked, at the size the model works at.

An image may come from anyone (an upload, an HTTP request), so its header is read and judged
before a single pixel is decoded: PIL's `Image.open` reads only the header, and a 30000 x 30000
PNG of a few megabytes would otherwise expand to 2.7 GB in memory (a decompression bomb).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
# An 8K photo is 33 megapixels; anything larger is not a conditioning image someone meant.
MAX_PIXELS = 40_000_000
# Below this the image holds too little to animate (the model's smallest clip is 16 pixels).
MIN_SIDE = 16


class ImageError(ValueError):
    """An image that cannot be used; the message names it and says why."""


def read_image(source: Path | bytes, width: int, height: int, name: str = "") -> np.ndarray:
    """uint8 (height, width, 3) RGB from a PNG, JPEG or WebP file or its bytes: turned upright
    by its EXIF orientation, centre-cropped to the aspect ratio, then resized.

    `name` is how messages refer to the image (default: the path, or "image bytes").
    Raises ImageError before decoding when the header says it is too large or too small.
    """
    name = name or (str(source) if isinstance(source, Path) else "image bytes")
    fp = source if isinstance(source, Path) else io.BytesIO(source)
    try:
        im = Image.open(fp, formats=FORMATS)
    except FileNotFoundError as e:
        raise ImageError(f"{name}: no such file") from e
    except Image.DecompressionBombError as e:  # PIL's own ceiling (179 MP), far above ours
        raise ImageError(f"{name}: refused without decoding: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a PNG, JPEG or WebP image") from e
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e})") from e
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageError(
                f"{name}: {w}x{h} pixels is more than the {MAX_PIXELS:,} allowed "
                "(refused without decoding: a decompression bomb, or far larger than needed)"
            )
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"{name}: {w}x{h} pixels is too small; at least {MIN_SIDE} a side")
        try:
            im.load()
            im = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated / corrupt data
            raise ImageError(f"{name}: truncated or corrupt {im.format} ({e})") from e
    return _fit(im, width, height)


def _fit(im: Image.Image, width: int, height: int) -> np.ndarray:
    """Centre-crop `im` to width:height, resize it to width x height: uint8 (H, W, 3)."""
    w, h = im.size
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    im = im.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
    return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)

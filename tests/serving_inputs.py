"""Images and requests for the serving tests: good ones and each bad input every entry must
refuse with a clear message (the served model over HTTP, the demo, the CLI, the sample flow)."""

from __future__ import annotations

import base64
import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(width: int = 40, height: int = 40, seed: int = 0) -> bytes:
    """A small picture: a grey floor and a coloured square on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[height * 3 // 4 :, :] = 128
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
    canvas[y : y + height // 5, x : x + width // 5] = rng.integers(40, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG of width x height black 1-bit pixels: 110 kB on disk, 2.7 GB as RGB.

    Built without compressing its 112 MB of rows: one block of 100 rows is deflated once and
    repeated (a full flush ends each block byte-aligned, referring to nothing before it), then
    the zlib stream is closed with the Adler-32 of all the rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    assert height % 100 == 0
    rows = b"\0" * (1 + (width + 7) // 8) * 100  # filter byte + packed bits, 100 times
    packer = zlib.compressobj(9)
    block = packer.compress(rows) + packer.flush(zlib.Z_FULL_FLUSH)
    header, block = block[:2], block[2:]
    end = zlib.compressobj(9).flush()[2:-4]  # an empty final block
    adler = 1
    for _ in range(height // 100):
        adler = zlib.adler32(rows, adler)
    stream = header + block * (height // 100) + end + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream)
            + chunk(b"IEND", b""))  # fmt: skip


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bad_inputs(good: str) -> dict[str, tuple[dict, str]]:
    """name -> (request fields, a phrase the refusal must contain), for the base64 image `good`.

    Covers the issue's list: not an image, a truncated PNG, a 1x1 image, a 30000 x 30000 PNG,
    a 100 kB prompt, steps 0 and 10^6, an unknown guidance and an unknown sampler."""
    one_pixel = io.BytesIO()
    Image.new("RGB", (1, 1)).save(one_pixel, "PNG")
    truncated = png_bytes()[:-60]
    return {
        "not_an_image": ({"image": b64(b"%PDF-1.4 certainly not a picture" * 4)},
                         "not a PNG, JPEG or WebP"),
        "truncated_png": ({"image": b64(truncated)}, "truncated or corrupt PNG"),
        "one_pixel": ({"image": b64(one_pixel.getvalue())}, "1x1 pixels is too small"),
        "bomb": ({"image": b64(bomb_png())}, "decompression bomb"),
        "long_prompt": ({"image": good, "prompt": "la " * 34_000}, "prompt is 102,000 characters"),
        "zero_steps": ({"image": good, "steps": 0}, "steps must be between 1 and"),
        "million_steps": ({"image": good, "steps": 10**6}, "got 1,000,000"),
        "unknown_guidance": ({"image": good, "guidance": "loud"}, "unknown guidance 'loud'"),
        "unknown_sampler": ({"image": good, "sampler": "dpm"}, "unknown sampler 'dpm'"),
    }  # fmt: skip


def write_bad_files(folder: Path) -> dict[str, Path]:
    """The bad images as files, for the entries that take a path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (fields, _) in bad_inputs(b64(png_bytes())).items():
        if fields["image"] != b64(png_bytes()):
            files[name] = folder / f"{name}.png"
            files[name].write_bytes(base64.b64decode(fields["image"]))
    return files


def drawn_image(path: Path) -> Path:
    """A 40x40 PNG drawn here (a red square over a grey floor), not from any data set."""
    canvas = np.zeros((40, 40, 3), dtype=np.uint8)
    canvas[30:, :] = 128
    canvas[5:13, 16:24] = (230, 40, 40)
    Image.fromarray(canvas).save(path)
    return path

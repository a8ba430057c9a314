"""Requests to animate and sound an image: each field checked against its limits, the image
decoded (after its header is judged), and rows grouped into batches the sampler can share.

Every entry (the served model over HTTP, the web demo, the CLI, the Prefect `sample` flow)
takes its rows through here, so a bad field gets the same message wherever it came from, and
nothing is generated until every row of a request has passed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jointdit.data.images import ImageError, read_image
from jointdit.generate import SampleConfig
from jointdit.guidance import PRESETS
from jointdit.sampling import SAMPLERS

# a request row's fields and their types; only `image` is required
FIELDS: dict[str, type] = {
    "image": str,
    "prompt": str,
    "seed": int,
    "steps": int,
    "guidance": str,
    "sampler": str,
    "shift": float,
}
MAX_ROWS = 64
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens and the hashed encoder `text_len` words
MAX_STEPS = 1000
MAX_SHIFT = 100.0
MAX_SEED = 2**62  # seeds seed .. seed + rows must stay inside torch's 64-bit range
MAX_IMAGE_BASE64 = 48 * 2**20  # characters: 36 MB of image file
_MAX_PATH = 4096
# first bytes of the accepted formats; WebP is RIFF....WEBP
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class BadRequest(ValueError):
    """A request that cannot be served; the message names the row, the field and the problem."""


@dataclass(frozen=True)
class SampleRequest:
    pixels: np.ndarray  # uint8 (H, W, 3) at the model's size
    prompt: str
    sample: SampleConfig  # seed, steps, guidance, sampler, shift for this row


def parse_rows(
    rows: Sequence[Mapping[str, Any]],
    defaults: SampleConfig,
    width: int,
    height: int,
    image_root: Path | None = None,
) -> list[SampleRequest]:
    """Checked requests for `rows` (dicts of FIELDS); raises BadRequest at the first bad field.

    A row without a seed gets `defaults.seed` + its row number, so the rows of one request
    differ and share one batch. `image` is a path or the image file's bytes, base64-encoded
    (a `data:` URI too); with `image_root`, paths outside it are refused.
    """
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"{len(rows)} rows in one request; at most {MAX_ROWS}")
    out = []
    for i, row in enumerate(rows):
        where = f"row {i}: " if len(rows) > 1 else ""
        try:
            out.append(_parse_row(row, i, defaults, width, height, image_root))
        except (BadRequest, ImageError) as e:
            raise BadRequest(where + str(e)) from e
    return out


def _parse_row(
    row: Mapping[str, Any],
    index: int,
    defaults: SampleConfig,
    width: int,
    height: int,
    image_root: Path | None,
) -> SampleRequest:
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; the fields are {list(FIELDS)}")
    given = {k: v for k, v in row.items() if not _missing(v)}
    if "image" not in given:
        raise BadRequest("image is missing: give a path or base64-encoded PNG, JPEG or WebP")
    prompt = given.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,}")
    seed = _whole("seed", given.get("seed", defaults.seed + index), 0, MAX_SEED)
    steps = _whole("steps", given.get("steps", defaults.steps), 1, MAX_STEPS)
    guidance = _choice("guidance", given.get("guidance", defaults.guidance), sorted(PRESETS))
    sampler = _choice("sampler", given.get("sampler", defaults.sampler), SAMPLERS)
    if sampler == "heun" and steps < 2:
        raise BadRequest("sampler heun needs steps >= 2 (each interval takes two evaluations)")
    shift = given.get("shift", defaults.shift)
    if not _number(shift) or not 0 < float(shift) <= MAX_SHIFT:
        raise BadRequest(f"shift must be a number in (0, {MAX_SHIFT:g}], got {shift!r}")
    sample = dataclasses.replace(
        defaults, seed=seed, steps=steps, guidance=guidance, sampler=sampler, shift=float(shift)
    )
    source = image_source(given["image"], image_root)
    name = f"image {source}" if isinstance(source, Path) else "image"
    return SampleRequest(read_image(source, width, height, name), prompt, sample)


def image_source(value: Any, image_root: Path | None = None) -> Path | bytes:
    """What an `image` field holds: the bytes of an image file (raw, base64 or a base64
    `data:` URI) or the path of one."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("image must be a path or base64-encoded PNG, JPEG or WebP bytes")
    text = value.strip()
    if len(text) > MAX_IMAGE_BASE64:
        raise BadRequest(
            f"image is {len(text):,} characters of base64; at most {MAX_IMAGE_BASE64:,}"
        )
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        data = _base64(payload) if header.endswith(";base64") else None
        if data is None:
            raise BadRequest("image: a data URI must carry base64 (data:image/png;base64,...)")
        return data
    path = Path(text) if len(text) < _MAX_PATH and "\0" not in text else None
    inside = path is not None and (
        image_root is None or path.resolve().is_relative_to(image_root.resolve())
    )
    if inside and _is_file(path):
        return path
    data = _base64(text)
    # a path is rarely valid base64 of 16 bytes or more; an image file is always longer
    if data is not None and (len(data) >= 16 or data.startswith(_MAGIC) or _is_webp(data)):
        return data  # read_image judges what it holds
    if path is not None and not inside:
        raise BadRequest(f"image: the path {text!r} is outside the image root; send the bytes")
    raise BadRequest(
        f"image: {text[:80]!r} is neither a file nor base64-encoded PNG, JPEG or WebP bytes"
    )


def batches(requests: Sequence[SampleRequest], max_batch: int) -> list[list[int]]:
    """Row indices in groups one `generate` call can make: the same steps, guidance, sampler
    and shift, and consecutive seeds (generate gives sample i of a batch the seed seed + i),
    at most `max_batch` rows each; groups in the order of their first row."""

    def key(i: int) -> tuple:
        s = requests[i].sample
        return (s.steps, s.guidance, s.sampler, s.shift, s.seed)

    groups: list[list[int]] = []
    for i in sorted(range(len(requests)), key=key):
        last = groups[-1] if groups else None
        if (
            last is not None
            and len(last) < max_batch
            and key(last[-1])[:-1] == key(i)[:-1]
            and key(last[-1])[-1] + 1 == key(i)[-1]
        ):
            last.append(i)
        else:
            groups.append([i])
    return sorted(groups, key=min)


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA: what a DataFrame holds where a row has no value."""
    try:
        return value is None or bool(value != value)
    except TypeError:  # pd.NA refuses bool()
        return True


def _number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _whole(name: str, value: Any, low: int, high: int) -> int:
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (integral or (_number(value) and float(value).is_integer())):  # 2.0: a float column
        raise BadRequest(f"{name} must be a whole number, got {value!r}")
    whole = int(value)
    if not low <= whole <= high:
        raise BadRequest(f"{name} must be between {low} and {high:,}, got {whole:,}")
    return whole


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise BadRequest(f"unknown {name} {value!r}; choose from {list(choices)}")
    return str(value)


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a file here
        return False


def _is_webp(data: bytes | None) -> bool:
    return data is not None and data[:4] == b"RIFF" and data[8:12] == b"WEBP"

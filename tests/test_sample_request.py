"""Requests to the served model: image sources, the checks on each field, the image limits
(a decompression bomb refused from its header, never decoded) and the grouping into batches."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from jointdit.data.images import ImageError, read_image
from jointdit.generate import SampleConfig
from jointdit.sample_request import (
    MAX_ROWS,
    BadRequest,
    SampleRequest,
    batches,
    image_source,
    parse_rows,
)
from tests.serving_inputs import b64, bad_inputs, bomb_png, png_bytes

DEFAULTS = SampleConfig(steps=4, guidance="jointcfg", seed=7, sampler="euler")


def encoded(fmt: str, size=(48, 32), **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), (200, 30, 60), np.uint8)).save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_format_is_read_from_raw_base64_and_data_uri_bytes(fmt):
    data = encoded(fmt, quality=95) if fmt != "PNG" else encoded(fmt)
    for value in (data, b64(data), f"data:image/{fmt.lower()};base64,{b64(data)}"):
        assert image_source(value) == data
    pixels = read_image(data, 16, 8)
    assert pixels.shape == (8, 16, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - (200, 30, 60)).max() <= 6  # lossy formats: close


def test_a_path_is_a_path_and_an_image_root_confines_paths(tmp_path):
    inside = tmp_path / "root" / "in.png"
    inside.parent.mkdir()
    inside.write_bytes(png_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    assert image_source(str(inside)) == inside
    assert image_source(str(inside), image_root=tmp_path / "root") == inside
    with pytest.raises(BadRequest, match="outside the image root"):
        image_source(str(outside), image_root=tmp_path / "root")
    with pytest.raises(BadRequest, match="outside the image root"):  # no way around by ..
        image_source(str(tmp_path / "root" / ".." / "secret.png"), image_root=tmp_path / "root")
    with pytest.raises(BadRequest, match="neither a file nor base64"):
        image_source(str(tmp_path / "missing.png"))
    # bytes are bytes under a root too, however long, and a long name is not a file here
    long_b64 = b64(png_bytes(width=400, height=300))
    assert len(long_b64) > 255
    assert image_source(long_b64, image_root=tmp_path / "root") == png_bytes(400, 300)
    assert image_source(long_b64[:3000]) == base64.b64decode(long_b64[:3000])


def test_exif_orientation_turns_the_picture_upright():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown as a tall picture, white on top
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG", exif=exif)
    upright = read_image(buf.getvalue(), 20, 40)
    assert upright[:20].mean() > 250 and upright[20:].mean() < 5


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    # past 179 MP PIL itself refuses at open; below that only our check stands
    with pytest.raises(ImageError, match=r"refused without decoding: .*900000000 pixels"):
        read_image(bomb_png(), 16, 16)
    with pytest.raises(ImageError, match=r"8000x6000 pixels is more than the 40,000,000"):
        read_image(bomb_png(8000, 6000), 16, 16)
    assert decoded == []


@pytest.mark.parametrize("name", ["not_an_image", "truncated_png", "one_pixel", "bomb",
                                  "long_prompt", "zero_steps", "million_steps",
                                  "unknown_guidance", "unknown_sampler"])  # fmt: skip
def test_each_bad_input_is_refused_with_its_reason(name):
    fields, phrase = bad_inputs(b64(png_bytes()))[name]
    with pytest.raises(BadRequest, match=phrase):
        parse_rows([fields], DEFAULTS, 16, 16)


def test_field_checks_name_the_row_and_the_field():
    good = b64(png_bytes())
    cases = [
        ({"image": good, "seed": -1}, "row 1: seed must be between 0 and"),
        ({"image": good, "steps": 2.5}, "row 1: steps must be a whole number, got 2.5"),
        ({"image": good, "steps": "8"}, "row 1: steps must be a whole number, got '8'"),
        ({"image": good, "sampler": "heun", "steps": 1}, "row 1: sampler heun needs steps >= 2"),
        ({"image": good, "shift": 0.0}, r"row 1: shift must be a number in \(0, 100\]"),
        ({"image": good, "prompt": 3}, "row 1: prompt must be text"),
        ({"image": good, "stpes": 3}, r"row 1: unknown field\(s\) \['stpes'\]"),
        ({"prompt": "no image"}, "row 1: image is missing"),
        ({"image": "data:image/png,abc"}, "row 1: image: a data URI must carry base64"),
    ]
    for fields, phrase in cases:
        with pytest.raises(BadRequest, match=phrase):
            parse_rows([{"image": good}, fields], DEFAULTS, 16, 16)
    with pytest.raises(BadRequest, match=f"{MAX_ROWS + 1} rows in one request; at most"):
        parse_rows([{"image": good}] * (MAX_ROWS + 1), DEFAULTS, 16, 16)


def test_defaults_fill_missing_fields_and_unseeded_rows_count_up_from_the_default_seed():
    good = b64(png_bytes())
    rows = [
        {"image": good, "seed": float("nan"), "steps": None},  # a DataFrame's missing cells
        {"image": good, "prompt": "a drum", "steps": 2.0, "guidance": "cfg", "shift": 3},
        {"image": good, "seed": 100},
    ]
    first, second, third = parse_rows(rows, DEFAULTS, 16, 12)
    assert first.sample == DEFAULTS  # row 0: the default seed
    assert first.prompt == "" and first.pixels.shape == (12, 16, 3)
    assert second.prompt == "a drum"
    assert second.sample == SampleConfig(steps=2, guidance="cfg", seed=8, sampler="euler",
                                         shift=3.0)  # fmt: skip
    assert third.sample.seed == 100 and third.sample.steps == 4


def request(seed: int, steps: int = 4, guidance: str = "jointcfg") -> SampleRequest:
    cfg = SampleConfig(seed=seed, steps=steps, guidance=guidance)
    return SampleRequest(np.zeros((2, 2, 3), np.uint8), "", cfg)


def test_rows_with_equal_settings_and_consecutive_seeds_share_a_batch():
    rows = [request(0), request(1), request(5, steps=8), request(2), request(4, steps=8),
            request(3, guidance="cfg"), request(3), request(9)]  # fmt: skip
    # in seed order within a group (generate gives row k of it the first seed + k)
    assert batches(rows, max_batch=8) == [[0, 1, 3, 6], [4, 2], [5], [7]]
    assert batches(rows, max_batch=2) == [[0, 1], [4, 2], [3, 6], [5], [7]]
    rows[4] = request(3, steps=8)
    assert batches(rows, max_batch=8) == [[0, 1, 3, 6], [2], [4], [5], [7]]
    assert batches([], max_batch=4) == []


def test_a_path_row_and_a_bytes_row_give_the_same_pixels(tmp_path):
    data = png_bytes(seed=3)
    path = Path(tmp_path / "in.png")
    path.write_bytes(data)
    by_path, by_bytes = parse_rows(
        [{"image": str(path)}, {"image": base64.b64encode(data).decode()}], DEFAULTS, 16, 16
    )
    assert np.array_equal(by_path.pixels, by_bytes.pixels)

"""How media becomes the model's inputs, as params describe it: clips at `clip`'s shape, the
`codec` pair, the `conditioning` of captions and first frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jointdit.codecs import Codec, CodecConfig, build_codec
from jointdit.conditioning import ConditioningConfig
from jointdit.config import from_dict
from jointdit.data.media import Clip, read_windows


def codec_config(params: dict[str, Any]) -> CodecConfig:
    c = params["codec"]
    if "name" in c:
        raise ValueError(
            "codec.name was replaced by codec.video and codec.audio (e.g. video: patch, "
            "audio: patch); update params"
        )
    return from_dict(CodecConfig, c, "codec")


def codec_from(params: dict[str, Any]) -> Codec:
    """The codec pair of params.codec, for params.clip's sample rate (the served model builds
    the same one from the same section: tasks/pyfunc_model.py)."""
    return build_codec(codec_config(params), params["clip"]["sample_rate"])


def conditioning_from(params: dict[str, Any]) -> ConditioningConfig:
    # a params file from before the section gets what it got then: hashed word ids
    return from_dict(ConditioningConfig, params.get("conditioning"), "conditioning")


def read_normalised(
    path: Path, params: dict[str, Any], starts: Sequence[float] = (0.0,)
) -> list[Clip]:
    """The windows of a clip starting at ``starts``, at the shape the model works at."""
    clip = params["clip"]
    return read_windows(
        path,
        starts,
        fps=clip["fps"],
        width=clip["width"],
        height=clip["height"],
        sample_rate=clip["sample_rate"],
        duration_s=clip["duration_s"],
    )

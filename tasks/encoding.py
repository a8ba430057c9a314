"""How media becomes the model's inputs, as params describe it: the `codec` pair and the
`conditioning` of captions and first frames (the clip's shape: `tasks.params.clip_spec`)."""

from __future__ import annotations

from typing import Any

from jointdit.codecs import Codec, CodecConfig, build_codec
from jointdit.conditioning import ConditioningConfig
from jointdit.config import from_dict


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


"""The model's configuration: params.model plus what the codec, the clip and the
conditioning imply."""

from __future__ import annotations

from typing import Any

from jointdit.codecs import Codec
from jointdit.conditioning import conditioning_dims
from jointdit.model.joint import BackboneModelConfig, model_config_from_dict
from jointdit.model.jointdit import JointDiTConfig
from tasks.encoding import conditioning_from
from tasks.params import clip_spec


def model_config(
    params: dict[str, Any], codec: Codec
) -> JointDiTConfig | BackboneModelConfig:
    """params.model (`kind: dit`, our JointDiT, or `kind: backbones`, the pretrained UNets)
    plus what follows from the codec, the clip and the conditioning."""
    text_dim, image_dim = conditioning_dims(conditioning_from(params))
    model = params["model"]
    context = {"text_embed_dim": text_dim, "image_embed_dim": image_dim}
    latents = {"audio_channels": codec.audio_channels, "audio_bins": codec.audio_bins}
    if model.get("kind", "dit") == "backbones":
        b = model.get("backbones") or {}
        section = {
            **b,
            **context,
            **latents,
            # the context is the same in both kinds: what `cache` encoded
            "text_vocab": model["text_vocab"],
            "text_len": model["text_len"],
            "svd": {**b.get("svd", {}), "video_fps": clip_spec(params).fps},
            "audioldm": {**b.get("audioldm", {}), "audio_frame_rate": codec.audio_frame_rate},
        }
        return model_config_from_dict({"kind": "backbones", "backbones": section})
    derived = {
        **context,
        **latents,
        "video_channels": codec.video_channels,
        "video_fps": clip_spec(params).fps,
        "audio_frame_rate": codec.audio_frame_rate,
    }
    return model_config_from_dict({**model, **derived})

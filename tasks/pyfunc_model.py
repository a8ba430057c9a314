"""The registered model: an MLflow pyfunc *from code* (this file is logged, no pickled class).

Input: a DataFrame with a column `image` (path to a still image) and optional columns
`prompt`, `seed`, `steps`, `guidance`, `shift`, `sampler`. Output: one dict per row with
`frames` (T, H, W, 3) uint8, `audio` (S,) float32, `fps`, `sample_rate` and `audio_decoder`
(how the audio latents became a waveform: "hifigan" or "griffin-lim"). The codec is built from
the training params' `codec` section; pretrained codec directories named there must exist on
the serving machine at the same paths.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from jointdit.checkpoint import load_checkpoint
from jointdit.codecs import CodecConfig, build_codec
from jointdit.conditioning import Conditioner, ConditioningConfig
from jointdit.config import from_dict
from jointdit.data.images import load_image
from jointdit.generate import SampleConfig, generate


class JointDiTPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model, _ = load_checkpoint(Path(context.artifacts["checkpoint"]))
        serving = json.loads(Path(context.artifacts["serving"]).read_text())
        self.clip = serving["clip"]
        self.codec = build_codec(
            from_dict(CodecConfig, serving["codec"], "codec"), self.clip["sample_rate"]
        )
        self.sample = from_dict(SampleConfig, serving["sample"])
        conditioning = from_dict(ConditioningConfig, serving.get("conditioning"), "conditioning")
        if conditioning.encoder == "clip":  # the registered copy, not the training machine's path
            conditioning = dataclasses.replace(
                conditioning, clip_pretrained=context.artifacts["clip"]
            )
        cfg = self.model.cfg
        self.conditioner = Conditioner(conditioning, cfg.text_len, cfg.text_vocab)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list:
        out = []
        frames = round(self.clip["duration_s"] * self.clip["fps"])
        audio_frames = round(self.clip["duration_s"] * self.codec.audio_frame_rate)
        for row in model_input.to_dict("records"):
            overrides = {  # cast: DataFrame cells arrive as numpy scalars
                k: type(getattr(self.sample, k))(row[k])
                for k in ("seed", "steps", "guidance", "shift", "sampler")
                if k in row and not pd.isna(row[k])
            }
            sample = dataclasses.replace(self.sample, **overrides)
            pixels = load_image(Path(row["image"]), self.clip["width"], self.clip["height"])
            image = self.codec.encode_video(pixels[None])
            context = self.conditioner.encode([row.get("prompt") or ""], [pixels])
            text = context["text"] if self.model.text is not None else None
            video, audio = generate(
                self.model,
                image,
                text,
                frames,
                audio_frames,
                sample,
                image_embedding=context.get("image_embedding"),
            )
            out.append(
                {
                    "frames": self.codec.decode_video(video[0]),
                    "audio": self.codec.decode_audio(audio[0]),
                    "fps": float(self.clip["fps"]),
                    "sample_rate": int(self.clip["sample_rate"]),
                    "audio_decoder": self.codec.audio_decoder,
                }
            )
        return out


mlflow.models.set_model(JointDiTPyfunc())

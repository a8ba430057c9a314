"""The registered model: an MLflow pyfunc *from code* (this file is logged, no pickled class).

Input: a DataFrame, one row per clip, with the columns of `jointdit.sample_request.FIELDS`:
`image` (a path, or the image file's bytes base64-encoded: PNG, JPEG or WebP) and optional
`prompt`, `seed`, `steps`, `guidance`, `sampler`, `shift` (default: the registered `sample`
params; a row without a seed gets the default seed + its row number). Rows that share steps,
guidance, sampler and shift and have consecutive seeds are generated as one batch.

Output: one dict per row with the parameters used (`prompt`, `seed`, `steps`, `guidance`,
`sampler`, `shift`), `fps`, `sample_rate`, `duration_s`, `audio_decoder` (how the audio
latents became a waveform: "hifigan" or "griffin-lim") and the clip: by default `mp4_base64`,
an MP4 (H.264 + AAC, fast start) base64-encoded; with the param `output="arrays"`, `frames`
(T, H, W, 3) uint8 and `audio` (S,) float32 instead.

A bad row refuses the whole request before anything is generated (MLflow's server answers
400 with the message). `$JOINTDIT_IMAGE_ROOT`, when set, confines image paths to that
directory (a server others can reach should set it, or take bytes only).

The codec is built from the training params' `codec` section; pretrained codec directories
named there must exist on the serving machine at the same paths.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from jointdit.checkpoint import load_checkpoint
from jointdit.codecs import CodecConfig, build_codec
from jointdit.conditioning import Conditioner, ConditioningConfig
from jointdit.config import from_dict
from jointdit.data.clip_bytes import mp4_bytes
from jointdit.data.windows import ClipSpec
from jointdit.generate import SampleConfig, generate
from jointdit.sample_request import BadRequest, SampleRequest, batches, parse_rows

OUTPUTS = ("mp4", "arrays")
MAX_BATCH = 8  # rows per generate call: bounds activation memory


class JointDiTPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model, _ = load_checkpoint(Path(context.artifacts["checkpoint"]))
        serving = json.loads(Path(context.artifacts["serving"]).read_text())
        self.clip = from_dict(ClipSpec, serving["clip"], "clip")
        self.codec = build_codec(
            from_dict(CodecConfig, serving["codec"], "codec"), self.clip.sample_rate
        )
        self.sample = from_dict(SampleConfig, serving["sample"])
        conditioning = from_dict(ConditioningConfig, serving.get("conditioning"), "conditioning")
        if conditioning.encoder == "clip":  # the registered copy, not the training machine's path
            conditioning = dataclasses.replace(
                conditioning, clip_pretrained=context.artifacts["clip"]
            )
        cfg = self.model.cfg
        self.conditioner = Conditioner(conditioning, cfg.text_len, cfg.text_vocab)
        root = os.environ.get("JOINTDIT_IMAGE_ROOT")
        self.image_root = Path(root) if root else None
        # MLflow's server runs requests in threads: one generation at a time per process
        # (they would only compete for the same cores or GPU) and the RNG seeding below
        # stays per request
        self.lock = threading.Lock()

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        output = (params or {}).get("output") or "mp4"
        try:
            if output not in OUTPUTS:
                raise BadRequest(f"unknown output {output!r}; choose from {list(OUTPUTS)}")
            requests = parse_rows(
                model_input.to_dict("records"),
                self.sample,
                self.clip.width,
                self.clip.height,
                self.image_root,
            )
        except BadRequest as e:  # MLflow's server answers this one 400 with its message
            raise MlflowException.invalid_parameter_value(str(e)) from e
        results: list[dict[str, Any]] = [{} for _ in requests]
        for group in batches(requests, MAX_BATCH):
            with self.lock:
                clips = self._generate([requests[i] for i in group])
            for i, (frames, audio) in zip(group, clips, strict=True):
                results[i] = self._answer(requests[i], frames, audio, output)
        return results

    def _generate(self, batch: list[SampleRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One generate call for rows of equal settings and consecutive seeds."""
        frames = self.clip.frames
        audio_frames = round(self.clip.duration_s * self.codec.audio_frame_rate)
        pixels = [r.pixels for r in batch]
        image = self.codec.encode_video(np.stack(pixels))  # one first frame per row
        context = self.conditioner.encode([r.prompt for r in batch], pixels)
        video, audio = generate(
            self.model,
            image,
            context["text"] if self.model.text is not None else None,
            frames,
            audio_frames,
            batch[0].sample,  # the first row's seed: row k gets seed + k
            image_embedding=context.get("image_embedding"),
        )
        clips = []
        for k, request in enumerate(batch):
            # Griffin-Lim starts from random phases drawn from torch's global generator:
            # seeded by the row, an answer depends on its seed, not on what ran before it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(request.sample.seed)
                sound = self.codec.decode_audio(audio[k])
            clips.append((self.codec.decode_video(video[k]), sound))
        return clips

    def _answer(
        self, request: SampleRequest, frames: np.ndarray, audio: np.ndarray, output: str
    ) -> dict[str, Any]:
        fps, sample_rate = float(self.clip.fps), int(self.clip.sample_rate)
        s = request.sample
        answer: dict[str, Any] = {
            "prompt": request.prompt,
            "seed": s.seed,
            "steps": s.steps,
            "guidance": s.guidance,
            "sampler": s.sampler,
            "shift": s.shift,
            "fps": fps,
            "sample_rate": sample_rate,
            "duration_s": len(frames) / fps,
            "audio_decoder": self.codec.audio_decoder,
        }
        if output == "arrays":
            return {**answer, "frames": frames, "audio": audio}
        clip = mp4_bytes(frames, audio, fps, sample_rate)
        return {**answer, "mp4_base64": base64.b64encode(clip).decode("ascii")}


mlflow.models.set_model(JointDiTPyfunc())

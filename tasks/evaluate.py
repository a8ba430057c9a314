"""evaluate: sample the validation clips' first frames; sync, Fréchet distances, val losses.

Systems compared: the final (Stage B) model with its default guidance, the experts alone (the
no-joint baseline) and the real clips. Fréchet distances use parameter-free embeddings
(`fd_logmel`, `fd_frames`), not VGGish/I3D: they are not FAD/FVD and are named so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from jointdit.checkpoint import load_checkpoint
from jointdit.codecs import Codec
from jointdit.config import from_dict
from jointdit.data.media import write_clip
from jointdit.data.shards import load_split
from jointdit.flow import FlowConfig
from jointdit.generate import SampleConfig, generate
from jointdit.metrics.frechet import frames_embedding, frechet_distance, logmel_embedding
from jointdit.metrics.sync import av_align
from jointdit.training import validation_loss
from jointdit.viz import log_mel, sample_sheet
from tasks.common import (
    CACHE,
    MODELS,
    RAW,
    REPORTS,
    cli,
    codec_from,
    get_logger,
    mlflow_run,
    read_normalised,
    write_json,
)
from tasks.train import initial_model

SAMPLES = REPORTS / "samples"


def decode(
    codec: Codec, video: torch.Tensor, audio: torch.Tensor
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (codec.decode_video(v), codec.decode_audio(a)) for v, a in zip(video, audio, strict=True)
    ]


def media_metrics(
    media: list[tuple[np.ndarray, np.ndarray]],
    real: list[tuple[np.ndarray, np.ndarray]],
    fps: float,
    sample_rate: int,
) -> dict[str, float]:
    sync = [av_align(frames, fps, audio, sample_rate) for frames, audio in media]
    return {
        "av_align": float(np.mean(sync)),
        "fd_logmel": frechet_distance(
            np.stack([logmel_embedding(a, sample_rate) for _, a in media]),
            np.stack([logmel_embedding(a, sample_rate) for _, a in real]),
        ),
        "fd_frames": frechet_distance(
            np.stack([frames_embedding(f) for f, _ in media]),
            np.stack([frames_embedding(f) for f, _ in real]),
        ),
    }


def evaluate(params: dict[str, Any]) -> dict[str, Any]:
    log = get_logger()
    clip = params["clip"]
    ev = params["evaluate"]
    codec = codec_from(params)
    flow = from_dict(FlowConfig, params["flow"], "flow")
    val = load_split(CACHE, "val")
    n = min(ev["num_samples"], len(val.clips))
    image, text = val.batch.image[:n], val.batch.text[:n]
    frames, audio_frames = val.batch.video.shape[1], val.batch.audio.shape[-1]

    untrained = initial_model(params, "experts").eval()  # the experts stage's starting point
    experts, _ = load_checkpoint(MODELS / "experts")
    stage_a, _ = load_checkpoint(MODELS / "stage_a")
    final, _ = load_checkpoint(MODELS / "stage_b")
    val_loss = {
        "untrained": validation_loss(untrained, val.batch, flow)["loss"],
        "experts": validation_loss(experts, val.batch, flow, experts_only=True)["loss"],
        "stage_a": validation_loss(stage_a, val.batch, flow)["loss"],
        "stage_b": validation_loss(final, val.batch, flow)["loss"],
    }
    log.info("evaluate: val losses %s", val_loss)

    sample_cfg = from_dict(SampleConfig, params["sample"], "sample")
    baseline_cfg = dataclasses.replace(sample_cfg, guidance=ev["baseline_guidance"])
    joint = decode(codec, *generate(final, image, text, frames, audio_frames, sample_cfg))
    baseline = decode(
        codec,
        *generate(experts, image, text, frames, audio_frames, baseline_cfg, experts_only=True),
    )
    real = []
    for row in val.clips[:n]:
        media = read_normalised(RAW / row["path"], params)
        real.append((media.frames, media.audio))

    fps, sr = clip["fps"], clip["sample_rate"]
    metrics = {
        "n_samples": n,
        "val_loss": val_loss,
        "joint": media_metrics(joint, real, fps, sr),
        "baseline": media_metrics(baseline, real, fps, sr),
        "real": {"av_align": float(np.mean([av_align(f, fps, a, sr) for f, a in real]))},
    }
    write_json(REPORTS / "metrics.json", metrics)

    SAMPLES.mkdir(parents=True, exist_ok=True)
    for i in range(min(ev["num_media"], n)):
        for name, (f, a) in (("joint", joint[i]), ("baseline", baseline[i]), ("real", real[i])):
            write_clip(SAMPLES / f"{i:02d}_{name}.mp4", f, fps, a[None], sr)
            sample_sheet(
                f,
                log_mel(a, sr),
                clip["duration_s"],
                SAMPLES / f"{i:02d}_{name}.png",
                f"{name}: {val.clips[i]['caption']}",
            )

    with mlflow_run(params, "evaluate", {"evaluate": ev, "sample": params["sample"]}):
        import mlflow

        flat = {f"val_loss_{k}": v for k, v in val_loss.items()}
        for system in ("joint", "baseline", "real"):
            flat.update({f"{system}_{k}": v for k, v in metrics[system].items()})
        mlflow.log_metrics(flat)
        mlflow.log_artifact(str(REPORTS / "metrics.json"))
        mlflow.log_artifacts(str(SAMPLES), artifact_path="samples")
    log.info("evaluate: %s", metrics)
    return metrics


if __name__ == "__main__":
    cli(evaluate)

"""One evaluation: the systems it compares, how each is sampled and scored, and the paper's
claims between them, as functions of models, latents and clips (usable from a notebook).

A system is a list of clips (``Media``): a model under a guidance, or real data.
- ``joint-<guidance>``: the final model under each guidance of ``EvaluateConfig.guidances``;
- ``iso-<baseline_guidance>``: the experts alone, no joint attention (the ablation baseline);
- ``real``, ``codec`` (real through the codec and back) and ``shuffled`` (real videos with
  another clip's audio: the chance level of sync) are made by the caller from its data.
Clip i of every model system starts from the noise of ``seed + i``, so systems pair clip by
clip. The evaluate stage (tasks/evaluate.py) reads params and data and writes the reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jointdit.codecs import Codec
from jointdit.encoders.clip import CLIPConfig, CLIPEncoder
from jointdit.generate import SampleConfig, generate
from jointdit.metrics.claims import compare
from jointdit.metrics.desync import WINDOW_S, DeSyncScorer
from jointdit.metrics.i3d import NUM_FRAMES, I3DEmbedder
from jointdit.metrics.suite import (
    Embedders,
    Events,
    Media,
    clip_similarity,
    sample_scores,
    set_distances,
    set_features,
    summarise,
)
from jointdit.metrics.vggish import VGGishEmbedder
from jointdit.model.interface import JointModel


@dataclass(frozen=True)
class EmbedderPaths:
    """Local weight files of the pretrained metric networks; empty leaves a metric out."""

    vggish: str = ""  # torchvggish state dict -> fad, kd_vggish
    i3d: str = ""  # pytorch-i3d rgb_imagenet.pt -> fvd, kvd
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = ""  # open_clip checkpoint or snapshot directory -> clip_sim
    synchformer: str = ""  # av-benchmark's state dict -> desync (clips of at least 4.8 s)


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int = 12
    num_reference: int = 24
    seed: int = 1000
    guidances: tuple[str, ...] = ("none", "cfg", "jointcfg")
    baseline_guidance: str = "cfg"
    num_media: int = 3
    num_sheets: int = 2
    oracle: bool = True  # the tracking oracle: only for sounds of visible impacts (synthetic)
    claim_metric: str = "oracle_f1"
    embedders: EmbedderPaths = field(default_factory=EmbedderPaths)


@dataclass(frozen=True)
class System:
    name: str
    model: JointModel
    guidance: str
    experts_only: bool  # the iso baseline: the joint layers skipped


def load_embedders(paths: EmbedderPaths, frames: int, duration_s: float) -> Embedders:
    """The pretrained networks `paths` name, for clips of `frames` frames and `duration_s`
    seconds, which must be long enough for the metrics named (checked before any loading)."""
    if paths.i3d and frames < NUM_FRAMES:
        raise ValueError(
            f"evaluate.embedders.i3d: FVD is defined on {NUM_FRAMES}-frame clips, and "
            f"params.clip gives {frames} frames; lengthen the clip or leave i3d empty"
        )
    if paths.synchformer and duration_s < WINDOW_S:
        raise ValueError(
            f"evaluate.embedders.synchformer: DeSync is defined on {WINDOW_S:.1f}-s windows, and "
            f"params.clip gives {duration_s:g}-s clips; lengthen the clip or leave synchformer "
            "empty"
        )
    return Embedders(
        vggish=VGGishEmbedder(Path(paths.vggish)) if paths.vggish else None,
        i3d=I3DEmbedder(Path(paths.i3d)) if paths.i3d else None,
        clip=(
            CLIPEncoder(CLIPConfig(model=paths.clip_model, pretrained=paths.clip_pretrained))
            if paths.clip_pretrained
            else None
        ),
        # ~0.4 TFLOP per 0.64-s video segment, 28 segments a clip: minutes per clip on a CPU
        synchformer=(
            DeSyncScorer(Path(paths.synchformer), "cuda" if torch.cuda.is_available() else "cpu")
            if paths.synchformer
            else None
        ),
    )


def model_systems(
    final: JointModel, experts: JointModel, cfg: EvaluateConfig, default_guidance: str
) -> list[System]:
    """The final model under each guidance, then the iso baseline; the default system
    (``joint-<default_guidance>``, the one the register gate reads) must be among them."""
    systems = [System(f"joint-{g}", final, g, False) for g in dict.fromkeys(cfg.guidances)]
    if default_guidance not in cfg.guidances:
        raise ValueError(
            f"params: sample.guidance {default_guidance!r} is not in "
            f"evaluate.guidances {list(cfg.guidances)}"
        )
    systems.append(System(f"iso-{cfg.baseline_guidance}", experts, cfg.baseline_guidance, True))
    return systems


def sample_system(
    system: System,
    image: Tensor,
    text: Tensor | None,
    frames: int,
    audio_frames: int,
    sample: SampleConfig,
    image_embedding: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The system's (video, audio) latents for first-frame latents `image` (`decode` makes
    them clips); clip i from the noise of seed `sample.seed + i`."""
    return generate(
        system.model,
        image,
        text,
        frames,
        audio_frames,
        dataclasses.replace(sample, guidance=system.guidance),
        system.experts_only,
        image_embedding=image_embedding,
    )


def decode(codec: Codec, video: Tensor, audio: Tensor) -> list[Media]:
    return [
        (codec.decode_video(v), codec.decode_audio(a)) for v, a in zip(video, audio, strict=True)
    ]


def shuffled(real: list[Media]) -> list[Media]:
    """Each real video with the next clip's audio: the chance level of every sync score."""
    return [(frames, real[(i + 1) % len(real)][1]) for i, (frames, _) in enumerate(real)]


def score_system(
    media: list[Media],
    images: list[np.ndarray] | None,
    reference: dict[str, np.ndarray] | None,
    fps: float,
    sample_rate: int,
    oracle: bool,
    embedders: Embedders,
) -> tuple[dict[str, float], list[dict[str, float]], list[Events]]:
    """(table row, per-sample rows, per-sample events) of one system.

    `images`: the conditioning images, for first-frame fidelity (None for real clips, whose
    first frame is the image); `reference`: the real feature sets the distances are to (None:
    no distances, as for `shuffled`, whose sets are `real`'s).
    """
    rows, events = [], []
    for i, clip in enumerate(media):
        row, ev = sample_scores(clip, fps, sample_rate, images[i] if images else None, oracle)
        rows.append(row)
        events.append(ev)
    if images and embedders.clip is not None:
        sims = clip_similarity(embedders.clip, [f[0] for f, _ in media], images)
        for row, sim in zip(rows, sims, strict=True):
            row["clip_sim"] = float(sim)
    if embedders.synchformer is not None:
        for row, (frames, audio) in zip(rows, media, strict=True):
            row["desync"] = embedders.synchformer.desync(frames, fps, audio, sample_rate)
    summary = summarise(rows)
    if reference is not None:
        summary.update(set_distances(set_features(media, sample_rate, embedders), reference))
    return summary, rows, events


def claims(
    scores: dict[str, list[dict[str, float]]], default_system: str, cfg: EvaluateConfig
) -> list[dict[str, Any]]:
    """The paper's two claims on this run, clip by clip on `cfg.claim_metric`: the joint model
    beats its experts (the iso baseline), and JointCFG beats no guidance."""
    metric = cfg.claim_metric
    pairs = [(default_system, f"iso-{cfg.baseline_guidance}"), ("joint-jointcfg", "joint-none")]
    return [
        compare(
            a, b, metric, [r[metric] for r in scores[a]], [r[metric] for r in scores[b]]
        ).to_dict()
        for a, b in pairs
        if a in scores and b in scores and metric in scores[a][0]
    ]

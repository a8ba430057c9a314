"""evaluate: one table of every metric, for the final model, its ablations and real data.

Rows (systems), all sampled from the validation clips' first frames with one fixed seed per
clip (`evaluate.seed` + i):
- `joint-<guidance>`: the final (Stage B) model under each guidance in `evaluate.guidances`;
  `joint-<sample.guidance>` is the default system, the one the register gate reads;
- `iso-<baseline_guidance>`: the experts alone, no joint attention (the ablation baseline);
- `real`: the validation clips themselves: the floor of every distance at this sample count;
- `codec`: the validation clips through the codec and back: the best any model can do with it;
- `shuffled`: real videos with another clip's audio: the chance level of sync.
Every set distance is to one reference set of real training clips, so the rows compare. The
`protocol` fingerprint names what was measured how; the register gate only compares numbers
that share one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointdit.atomic import atomic_path
from jointdit.checkpoint import load_checkpoint
from jointdit.codecs import Codec
from jointdit.config import from_dict
from jointdit.data.manifest import WindowManifest, read_manifest
from jointdit.data.media import display_scale, write_clip
from jointdit.data.shards import load_split
from jointdit.encoders.clip import ClipConfig, ClipEncoder
from jointdit.flow import FlowConfig
from jointdit.generate import SampleConfig, generate
from jointdit.metrics.claims import compare
from jointdit.metrics.desync import WINDOW_S, DeSyncScorer
from jointdit.metrics.i3d import NUM_FRAMES, I3DEmbedder
from jointdit.metrics.oracle import impact_times
from jointdit.metrics.suite import (
    Embedders,
    Media,
    clip_similarity,
    sample_scores,
    set_distances,
    set_features,
    summarise,
)
from jointdit.metrics.vggish import VGGishEmbedder
from jointdit.timing import Timer
from jointdit.training import condition_sensitivity, validation_loss
from jointdit.viz import log_mel, sample_sheet, system_bars
from tasks.encoding import codec_from, read_normalised
from tasks.logs import get_logger
from tasks.mlflow_runs import mlflow_run
from tasks.params import cli
from tasks.paths import CACHE, MODELS, PLOTS, RAW, REPORTS, write_json
from tasks.train import initial_model

SAMPLES = REPORTS / "samples"
PER_SAMPLE = REPORTS / "per_sample.csv"
SYSTEMS_CSV = PLOTS / "systems.csv"
# The columns of the DVC plot and of the MLflow bar chart.
HEADLINE = (
    "av_align",
    "av_align_fine",
    "oracle_f1",
    "desync",
    "fd_logmel",
    "fd_frames",
    "fad",
    "fvd",
    "psnr",
)
# Raised when a metric's definition changes: numbers made before do not compare, and the
# register gate only compares numbers under one protocol. 2: `av_align` is AV-Align as
# published; the project's tuned variant, which `av_align` was before, is `av_align_fine`.
METRIC_DEFINITIONS = 2


def load_embedders(cfg: dict[str, str], clip: dict[str, Any]) -> Embedders:
    """The pretrained networks whose weights params name (`evaluate.embedders`); empty paths
    leave them out. `clip` (params' section) must be long enough for the metrics named."""
    frames, duration_s = round(clip["duration_s"] * clip["fps"]), clip["duration_s"]
    if cfg["i3d"] and frames < NUM_FRAMES:
        raise ValueError(
            f"evaluate.embedders.i3d: FVD is defined on {NUM_FRAMES}-frame clips, and "
            f"params.clip gives {frames} frames; lengthen the clip or leave i3d empty"
        )
    if cfg["synchformer"] and duration_s < WINDOW_S:
        raise ValueError(
            f"evaluate.embedders.synchformer: DeSync is defined on {WINDOW_S:.1f}-s windows, and "
            f"params.clip gives {duration_s:g}-s clips; lengthen the clip or leave synchformer "
            "empty"
        )
    return Embedders(
        vggish=VGGishEmbedder(Path(cfg["vggish"])) if cfg["vggish"] else None,
        i3d=I3DEmbedder(Path(cfg["i3d"])) if cfg["i3d"] else None,
        clip=(
            ClipEncoder(ClipConfig(model=cfg["clip_model"], pretrained=cfg["clip_pretrained"]))
            if cfg["clip_pretrained"]
            else None
        ),
        # ~0.4 TFLOP per 0.64-s video segment, 28 segments a clip: minutes per clip on a CPU
        synchformer=(
            DeSyncScorer(Path(cfg["synchformer"]), "cuda" if torch.cuda.is_available() else "cpu")
            if cfg["synchformer"]
            else None
        ),
    )


def protocol(params: dict[str, Any], clips: list[dict], reference: list[dict]) -> str:
    """A fingerprint of how the numbers were made: settings, seeds, and which clips were used."""
    ev = {k: v for k, v in params["evaluate"].items() if k not in ("num_media", "num_sheets")}
    spec = {
        "metric_definitions": METRIC_DEFINITIONS,
        "evaluate": ev,
        "sample": {k: v for k, v in params["sample"].items() if k != "seed"},
        # which windows were cut is in `clips`; so fingerprints from before windows still hold
        "clip": {
            k: v for k, v in params["clip"].items() if k not in ("hop_s", "max_windows_per_clip")
        },
        # paths, not hashes: re-encoding a clip does not make it another clip (see assign_split)
        "clips": [window_name(c) for c in clips],
        "reference": [window_name(c) for c in reference],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def window_name(row: dict) -> str:
    """A window's name in the fingerprint: its clip's path, with the start when it is not 0.

    A clip's first window is what the whole clip was before clips had windows, so fingerprints
    of single-window data stay what they were.
    """
    return row["path"] if row["start_s"] == 0 else f"{row['path']}@{row['start_s']}"


def decode(codec: Codec, video: torch.Tensor, audio: torch.Tensor) -> list[Media]:
    return [
        (codec.decode_video(v), codec.decode_audio(a)) for v, a in zip(video, audio, strict=True)
    ]


def read_real(rows: list[dict], params: dict[str, Any]) -> list[Media]:
    clips = [read_normalised(RAW / row["path"], params, [row["start_s"]])[0] for row in rows]
    return [(c.frames, c.audio) for c in clips]


def score_system(
    media: list[Media],
    images: list[np.ndarray] | None,
    reference: dict[str, np.ndarray] | None,
    params: dict[str, Any],
    embedders: Embedders,
) -> tuple[dict[str, float], list[dict[str, float]], list[Any]]:
    """(table row, per-sample rows, per-sample events) of one system."""
    fps, sr = params["clip"]["fps"], params["clip"]["sample_rate"]
    oracle = params["evaluate"]["oracle"]
    rows, events = [], []
    for i, clip in enumerate(media):
        row, ev = sample_scores(clip, fps, sr, images[i] if images else None, oracle)
        rows.append(row)
        events.append(ev)
    if images and embedders.clip is not None:
        sims = clip_similarity(embedders.clip, [f[0] for f, _ in media], images)
        for row, sim in zip(rows, sims, strict=True):
            row["clip_sim"] = float(sim)
    if embedders.synchformer is not None:
        for row, (frames, audio) in zip(rows, media, strict=True):
            row["desync"] = embedders.synchformer.desync(frames, fps, audio, sr)
    summary = summarise(rows)
    if reference is not None:
        summary.update(set_distances(set_features(media, sr, embedders), reference))
    return summary, rows, events


def evaluate(params: dict[str, Any]) -> dict[str, Any]:
    log = get_logger()
    clip, ev = params["clip"], params["evaluate"]
    timer = Timer()
    with timer("load_embedders"):  # first: a wrong weights file fails before any work
        embedders = load_embedders(ev["embedders"], clip)
    codec = codec_from(params)
    flow = from_dict(FlowConfig, params["flow"], "flow")
    val = load_split(CACHE, "val")
    n = min(ev["num_samples"], len(val.clips))
    image, text = val.batch.image[:n], val.batch.text[:n]
    embedding = None if val.batch.image_embedding is None else val.batch.image_embedding[:n]
    frames, audio_frames = val.batch.video.shape[1], val.batch.audio.shape[-1]

    with timer("val_loss"):
        untrained = initial_model(params, "experts").eval()  # the experts stage's start
        experts, _ = load_checkpoint(MODELS / "experts")
        stage_a, _ = load_checkpoint(MODELS / "stage_a")
        final, _ = load_checkpoint(MODELS / "stage_b")
        val_loss = {
            "untrained": validation_loss(untrained, val.batch, flow)["loss"],
            "experts": validation_loss(experts, val.batch, flow, experts_only=True)["loss"],
            "stage_a": validation_loss(stage_a, val.batch, flow)["loss"],
            "stage_b": validation_loss(final, val.batch, flow)["loss"],
        }
        # does the model continue *its* image? (a model that learned an average clip does not)
        sensitivity = {
            "experts": condition_sensitivity(experts, val.batch, experts_only=True),
            "stage_b": condition_sensitivity(final, val.batch),
        }
    log.info("evaluate: val losses %s; condition sensitivity %s", val_loss, sensitivity)

    with timer("read_real"):
        real = read_real(val.clips[:n], params)
        train_rows = read_manifest(CACHE / "windows.csv", WindowManifest)
        train_rows = train_rows[train_rows["split"] == "train"].to_dict("records")
        reference_media = read_real(train_rows[: ev["num_reference"]], params)
    if min(n, len(reference_media)) < 2:  # a covariance needs two samples
        raise ValueError(
            f"evaluate needs at least 2 validation and 2 training clips, has {n} and "
            f"{len(reference_media)}: raise evaluate.num_samples / num_reference or add clips"
        )
    with timer("embed_reference"):
        reference = set_features(reference_media, clip["sample_rate"], embedders)
    images = [f[0] for f, _ in real]

    sample_cfg = dataclasses.replace(
        from_dict(SampleConfig, params["sample"], "sample"), seed=ev["seed"]
    )
    runs = [(f"joint-{g}", final, g, False) for g in dict.fromkeys(ev["guidances"])]
    runs.append((f"iso-{ev['baseline_guidance']}", experts, ev["baseline_guidance"], True))
    default_system = f"joint-{sample_cfg.guidance}"
    if default_system not in {name for name, *_ in runs}:
        raise ValueError(
            f"params: sample.guidance {sample_cfg.guidance!r} is not in "
            f"evaluate.guidances {ev['guidances']}"
        )
    media = {
        "real": real,
        "codec": decode(codec, val.batch.video[:n], val.batch.audio[:n]),
        "shuffled": [(f, real[(i + 1) % n][1]) for i, (f, _) in enumerate(real)],
    }
    for name, model, guidance, experts_only in runs:
        with timer("generate"):
            cfg = dataclasses.replace(sample_cfg, guidance=guidance)
            latents = generate(
                model,
                image,
                text,
                frames,
                audio_frames,
                cfg,
                experts_only,
                image_embedding=embedding,
            )
        with timer("decode"):
            media[name] = decode(codec, *latents)
        log.info("evaluate: sampled %s (%d clips)", name, n)

    table, per_sample, events, scores = {}, [], {}, {}
    with timer("score"):
        for name, clips in media.items():
            table[name], rows, events[name] = score_system(
                clips,
                None if name in ("real", "shuffled") else images,  # real: frame 0 *is* the image
                None if name == "shuffled" else reference,  # same sets as `real`
                params,
                embedders,
            )
            scores[name] = rows
            for i, row in enumerate(rows):
                per_sample.append(
                    {
                        "system": name,
                        "clip": i,
                        "seed": ev["seed"] + i,
                        "caption": val.clips[i]["caption"],
                        **row,
                    }
                )

    metrics = {
        "protocol": protocol(params, val.clips[:n], train_rows[: ev["num_reference"]]),
        "n_samples": n,
        "n_reference": len(reference_media),
        "default_system": default_system,
        "embedders": {k: v is not None for k, v in dataclasses.asdict(embedders).items()},
        "val_loss": val_loss,
        "condition_sensitivity": sensitivity,
        "systems": table,
        "claims": claims(scores, default_system, ev),
    }
    with timer("write"):
        write_reports(metrics, per_sample, media, events, val.clips, params)
    log.info("evaluate: seconds per phase %s", {k: round(v, 1) for k, v in timer.seconds.items()})
    log_to_mlflow(params, metrics, timer.seconds)
    return metrics


def claims(
    scores: dict[str, list[dict[str, float]]], default_system: str, ev: dict[str, Any]
) -> list[dict[str, Any]]:
    """The paper's two claims on this run, clip by clip on `evaluate.claim_metric`: the joint
    model beats its experts (the iso baseline), and JointCFG beats no guidance."""
    metric = ev["claim_metric"]
    pairs = [(default_system, f"iso-{ev['baseline_guidance']}"), ("joint-jointcfg", "joint-none")]
    return [
        compare(
            a, b, metric, [r[metric] for r in scores[a]], [r[metric] for r in scores[b]]
        ).to_dict()
        for a, b in pairs
        if a in scores and b in scores and metric in scores[a][0]
    ]


def write_reports(
    metrics: dict[str, Any],
    per_sample: list[dict[str, Any]],
    media: dict[str, list[Media]],
    events: dict[str, list[Any]],
    clips: list[dict],
    params: dict[str, Any],
) -> None:
    """metrics.json, the per-sample CSV, the DVC plot table, sample clips and sync sheets."""
    clip, ev = params["clip"], params["evaluate"]
    fps, sr = clip["fps"], clip["sample_rate"]
    table = metrics["systems"]
    write_json(REPORTS / "metrics.json", metrics)
    _write_csv(PER_SAMPLE, per_sample)
    _write_csv(
        SYSTEMS_CSV,
        [{"system": s, **{k: row.get(k, "") for k in HEADLINE}} for s, row in table.items()],
    )

    SAMPLES.mkdir(parents=True, exist_ok=True)
    for old in SAMPLES.iterdir():  # a smaller run must not leave stale samples behind
        old.unlink()
    default = metrics["default_system"]
    shown = {
        default: "joint",
        next(s for s in table if s.startswith("iso-")): "iso",
        "real": "real",
    }
    for i in range(min(ev["num_media"], metrics["n_samples"])):
        for system, label in shown.items():
            f, a = media[system][i]
            scale = display_scale(*f.shape[1:3])
            write_clip(SAMPLES / f"{i:02d}_{label}.mp4", f, fps, a[None], sr, scale)
            sample_sheet(
                f,
                log_mel(a, sr),
                clip["duration_s"],
                SAMPLES / f"{i:02d}_{label}.png",
                f"{system}: {clips[i]['caption']}",
            )
    # Contact sheets of the default system's best and worst clips by sync, events drawn.
    sync = [r["av_align"] for r in per_sample if r["system"] == default]
    order = np.argsort(sync, kind="stable")
    picks = {"worst": order[: ev["num_sheets"]], "best": order[::-1][: ev["num_sheets"]]}
    for kind, indices in picks.items():
        for rank, i in enumerate(indices):
            f, a = media[default][i]
            e = events[default][i]
            marks = {"audio onsets": e.onsets, "video peaks": e.peaks}
            if ev["oracle"]:
                marks["tracked impacts"] = impact_times(f, fps)
            sample_sheet(
                f,
                log_mel(a, sr),
                clip["duration_s"],
                SAMPLES / f"sync_{kind}{rank}.png",
                f"{default}, {kind} sync #{rank + 1}: clip {i}, AV-Align {sync[i]:.2f}",
                events=marks,
            )
    system_bars(
        table, [m for m in HEADLINE if any(m in r for r in table.values())], SAMPLES / "systems.png"
    )


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def log_to_mlflow(
    params: dict[str, Any], metrics: dict[str, Any], seconds: dict[str, float]
) -> None:
    import mlflow
    import pandas as pd

    ev = params["evaluate"]
    with mlflow_run(params, "evaluate", {"evaluate": ev, "sample": params["sample"]}):
        flat = {f"val_loss_{k}": v for k, v in metrics["val_loss"].items()}
        for model, values in metrics["condition_sensitivity"].items():
            flat.update({f"condition_{k}_{model}": v for k, v in values.items()})
        for system, row in metrics["systems"].items():
            flat.update({f"{system}/{k}": v for k, v in row.items() if np.isfinite(v)})
        flat.update({f"seconds/{k}": v for k, v in seconds.items()})
        mlflow.log_metrics(flat)
        table = pd.DataFrame([{"system": s, **r} for s, r in metrics["systems"].items()])
        mlflow.log_table(table, artifact_file="systems.json")
        mlflow.log_artifact(str(REPORTS / "metrics.json"))
        mlflow.log_artifact(str(PER_SAMPLE))
        mlflow.log_artifacts(str(SAMPLES), artifact_path="samples")


if __name__ == "__main__":
    cli(evaluate)

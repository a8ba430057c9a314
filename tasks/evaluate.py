"""evaluate: one table of every metric, for the final model, its ablations and real data.

The systems and their scoring are jointdit/evaluation.py's; this stage reads the checkpoints
and the validation clips, and writes metrics.json, the per-sample CSV, the samples and the
MLflow run. Rows, all sampled from the validation clips' first frames with one fixed seed per
clip (`evaluate.seed` + i): `joint-<guidance>` per guidance (`joint-<sample.guidance>` is the
default system, the one the register gate reads), `iso-<baseline_guidance>`, and `real`,
`codec` (the clips through the codec and back: the best any model can do with it) and
`shuffled` (chance-level sync). Every set distance is to one reference set of real training
clips, so the rows compare. The `protocol` fingerprint names what was measured how; the
register gate only compares numbers that share one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from jointdit.atomic import atomic_path
from jointdit.checkpoint import load_checkpoint
from jointdit.config import from_dict
from jointdit.data.manifest import WindowManifest, read_manifest
from jointdit.data.media import display_scale, read_windows, write_clip
from jointdit.data.shards import load_split
from jointdit.data.windows import ClipSpec
from jointdit.evaluation import (
    EvaluateConfig,
    claims,
    decode,
    load_embedders,
    model_systems,
    sample_system,
    score_system,
    shuffled,
)
from jointdit.flow import FlowConfig
from jointdit.generate import SampleConfig
from jointdit.metrics.oracle import impact_times
from jointdit.metrics.suite import Media, set_features
from jointdit.timing import Timer
from jointdit.training import condition_sensitivity, validation_loss
from jointdit.viz import log_mel, sample_sheet, system_bars
from tasks.encoding import codec_from
from tasks.logs import get_logger
from tasks.mlflow_runs import mlflow_run
from tasks.params import cli, clip_spec
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


def evaluate_config(params: dict[str, Any]) -> EvaluateConfig:
    return from_dict(EvaluateConfig, params["evaluate"], "evaluate")


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


def read_real(rows: list[dict], spec: ClipSpec) -> list[Media]:
    """The windows of manifest rows, as the model sees them."""
    clips = [read_windows(RAW / row["path"], [row["start_s"]], spec)[0] for row in rows]
    return [(c.frames, c.audio) for c in clips]


def evaluate(params: dict[str, Any]) -> dict[str, Any]:
    log = get_logger()
    spec, cfg = clip_spec(params), evaluate_config(params)
    fps, sr = spec.fps, spec.sample_rate
    timer = Timer()
    with timer("load_embedders"):  # first: a wrong weights file fails before any work
        embedders = load_embedders(cfg.embedders, spec.frames, spec.duration_s)
    codec = codec_from(params)
    flow = from_dict(FlowConfig, params["flow"], "flow")
    val = load_split(CACHE, "val")
    n = min(cfg.num_samples, len(val.clips))
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
        real = read_real(val.clips[:n], spec)
        train_rows = read_manifest(CACHE / "windows.csv", WindowManifest)
        train_rows = train_rows[train_rows["split"] == "train"].to_dict("records")
        reference_media = read_real(train_rows[: cfg.num_reference], spec)
    if min(n, len(reference_media)) < 2:  # a covariance needs two samples
        raise ValueError(
            f"evaluate needs at least 2 validation and 2 training clips, has {n} and "
            f"{len(reference_media)}: raise evaluate.num_samples / num_reference or add clips"
        )
    with timer("embed_reference"):
        reference = set_features(reference_media, sr, embedders)
    images = [f[0] for f, _ in real]

    sample_cfg = dataclasses.replace(
        from_dict(SampleConfig, params["sample"], "sample"), seed=cfg.seed
    )
    systems = model_systems(final, experts, cfg, sample_cfg.guidance)
    default_system = f"joint-{sample_cfg.guidance}"
    media = {
        "real": real,
        "codec": decode(codec, val.batch.video[:n], val.batch.audio[:n]),
        "shuffled": shuffled(real),
    }
    for system in systems:
        with timer("generate"):
            latents = sample_system(
                system, image, text, frames, audio_frames, sample_cfg, embedding
            )
        with timer("decode"):
            media[system.name] = decode(codec, *latents)
        log.info("evaluate: sampled %s (%d clips)", system.name, n)

    table, per_sample, events, scores = {}, [], {}, {}
    with timer("score"):
        for name, clips in media.items():
            table[name], rows, events[name] = score_system(
                clips,
                None if name in ("real", "shuffled") else images,  # real: frame 0 *is* the image
                None if name == "shuffled" else reference,  # same sets as `real`
                fps,
                sr,
                cfg.oracle,
                embedders,
            )
            scores[name] = rows
            for i, row in enumerate(rows):
                per_sample.append(
                    {
                        "system": name,
                        "clip": i,
                        "seed": cfg.seed + i,
                        "caption": val.clips[i]["caption"],
                        **row,
                    }
                )

    metrics = {
        "protocol": protocol(params, val.clips[:n], train_rows[: cfg.num_reference]),
        "n_samples": n,
        "n_reference": len(reference_media),
        "default_system": default_system,
        "embedders": {k: v is not None for k, v in dataclasses.asdict(embedders).items()},
        "val_loss": val_loss,
        "condition_sensitivity": sensitivity,
        "systems": table,
        "claims": claims(scores, default_system, cfg),
    }
    with timer("write"):
        write_reports(metrics, per_sample, media, events, val.clips, spec, cfg)
    log.info("evaluate: seconds per phase %s", {k: round(v, 1) for k, v in timer.seconds.items()})
    log_to_mlflow(params, metrics, timer.seconds)
    return metrics


def write_reports(
    metrics: dict[str, Any],
    per_sample: list[dict[str, Any]],
    media: dict[str, list[Media]],
    events: dict[str, list[Any]],
    clips: list[dict],
    spec: ClipSpec,
    cfg: EvaluateConfig,
) -> None:
    """metrics.json, the per-sample CSV, the DVC plot table, sample clips and sync sheets."""
    fps, sr = spec.fps, spec.sample_rate
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
    for i in range(min(cfg.num_media, metrics["n_samples"])):
        for system, label in shown.items():
            f, a = media[system][i]
            scale = display_scale(*f.shape[1:3])
            write_clip(SAMPLES / f"{i:02d}_{label}.mp4", f, fps, a[None], sr, scale)
            sample_sheet(
                f,
                log_mel(a, sr),
                spec.duration_s,
                SAMPLES / f"{i:02d}_{label}.png",
                f"{system}: {clips[i]['caption']}",
            )
    # Contact sheets of the default system's best and worst clips by sync, events drawn.
    sync = [r["av_align"] for r in per_sample if r["system"] == default]
    order = np.argsort(sync, kind="stable")
    picks = {"worst": order[: cfg.num_sheets], "best": order[::-1][: cfg.num_sheets]}
    for kind, indices in picks.items():
        for rank, i in enumerate(indices):
            f, a = media[default][i]
            e = events[default][i]
            marks = {"audio onsets": e.onsets, "video peaks": e.peaks}
            if cfg.oracle:
                marks["tracked impacts"] = impact_times(f, fps)
            sample_sheet(
                f,
                log_mel(a, sr),
                spec.duration_s,
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

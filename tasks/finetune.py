"""finetune (optional: finetune/dvc.yaml, outside the default graph): adapt a registered model
to the current data with LoRA adapters, compare it with where it started on the same
validation clips, and register it through the same gate, its parent recorded.

1. The parent: `finetune.model_uri` (models:/jointdit@champion or any MLflow model URI of a
   registered jointdit pyfunc); an alias or version is pinned to its version number first, so
   the model trained from is the one recorded. Its checkpoint artifact is read by the project's
   checkpoint loader (safetensors, SHA-256 checked).
2. Adapt: LoRA adapters (jointdit/finetune.py) on the layers `finetune.lora.targets` match,
   trained on data/cache by the training loop of every stage; `method: full` trains the
   `trainable` patterns instead (the baseline LoRA is measured against). The adapters are
   merged into the weights, so the registered model is a plain checkpoint that the pyfunc and
   the `sample` flow serve unchanged; the adapters alone are kept beside it
   (models/finetune/adapter/, peft's layout) and logged with the run.
3. Compare: the fine-tuned model, its parent and (when another version) the champion, sampled
   from the same validation clips and seeds as `evaluate` does, under `sample.guidance`:
   reports/finetune/metrics.json.
4. Register (tasks/register.py, the same gate): the champion is judged on its row measured
   here, on the same clips, not on the numbers it was registered with on its own data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from jointdit.checkpoint import load_checkpoint, save_checkpoint
from jointdit.codecs import Codec
from jointdit.config import from_dict
from jointdit.data.manifest import WindowManifest, read_manifest
from jointdit.data.shards import load_split
from jointdit.evaluation import System, decode, load_embedders, sample_system, score_system
from jointdit.finetune import (
    ADAPTER_PARAMETERS,
    AdapterConfig,
    adapter_summary,
    add_adapters,
    merge_adapters,
    save_adapters,
)
from jointdit.flow import FlowConfig
from jointdit.generate import SampleConfig
from jointdit.metrics.suite import set_features
from jointdit.model.joint import JointBackboneModel
from jointdit.model.jointdit import JointDiT
from jointdit.training import TrainConfig, train, validation_loss
from jointdit.viz import loss_curve
from tasks.encoding import codec_from
from tasks.evaluate import evaluate_config, protocol, read_real
from tasks.logs import get_logger
from tasks.mlflow_runs import mlflow_run, resolve_tracking_uri
from tasks.model_config import model_config
from tasks.params import cli, clip_spec
from tasks.paths import CACHE, MODELS, PLOTS, REPORTS, write_json
from tasks.register import register_model
from tasks.tracking import MetricBuffer
from tasks.train import write_history_csv

FINETUNE = MODELS / "finetune"
ADAPTER_DIR = FINETUNE / "adapter"
OUT = REPORTS / "finetune"
RESUME = MODELS / ".resume" / "finetune"
METHODS = ("lora", "full")
# The model config's fields that the data fixes: a parent whose values differ cannot take
# data/cache's latents and conditioning.
DATA_FIELDS = (
    "video_channels", "audio_channels", "audio_bins", "video_fps", "audio_frame_rate",
    "text_embed_dim", "image_embed_dim", "text_vocab", "text_len",
)  # fmt: skip
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?")

Model = JointDiT | JointBackboneModel


@dataclass(frozen=True)
class FinetuneConfig:
    model_uri: str = "models:/jointdit@champion"
    method: str = "lora"  # lora | full
    lora: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def finetune_config(params: dict[str, Any]) -> FinetuneConfig:
    """params.finetune as typed config: the training keys (steps, lr, ...) sit beside
    model_uri, method and lora, as in the training stages' sections."""
    section = dict(params["finetune"])
    uri = section.pop("model_uri", FinetuneConfig.model_uri)
    method = section.pop("method", FinetuneConfig.method)
    if method not in METHODS:
        raise ValueError(f"finetune.method must be one of {METHODS}, got {method!r}")
    lora = from_dict(AdapterConfig, section.pop("lora", None), "finetune.lora")
    if method == "lora" and {"trainable", "frozen"} & set(section):
        raise ValueError(
            "finetune.trainable / frozen apply to method: full; with lora only the adapters "
            "train (finetune.lora.targets says where they go)"
        )
    cfg = from_dict(TrainConfig, {"seed": params["seed"], **section}, "finetune")
    if method == "lora":
        cfg = dataclasses.replace(cfg, trainable=ADAPTER_PARAMETERS, frozen=())
    return FinetuneConfig(model_uri=uri, method=method, lora=lora, train=cfg)


@dataclass(frozen=True)
class Parent:
    """The model fine-tuned from: its URI as given, and when registered, where it is."""

    uri: str
    name: str | None = None
    version: str | None = None

    @property
    def pinned(self) -> str:
        """A URI of this very version (an alias may move while the stage runs)."""
        return f"models:/{self.name}/{self.version}" if self.version else self.uri


def resolve_parent(uri: str) -> Parent:
    """The registered name and version behind a models:/ URI (alias or number); other MLflow
    model URIs (runs:/, a path) are taken as they are, with no version."""
    import mlflow
    from mlflow import MlflowClient

    match = MODEL_URI.fullmatch(uri)
    if match is None:
        return Parent(uri)
    name, alias, number = match.group("name", "alias", "version")
    client = MlflowClient()
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, number)
        )
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(
            f"finetune.model_uri {uri}: no such registered model version ({err.message}); "
            "register one first (the default pipeline's `dvc repro` does)"
        ) from err
    return Parent(uri, name, str(found.version))


def champion_version(name: str) -> str | None:
    import mlflow
    from mlflow import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def download_checkpoint(uri: str, into: Path) -> Path:
    """The checkpoint directory of the jointdit pyfunc at `uri`, downloaded under `into`."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise ValueError(f"{uri}: not an MLflow model (no MLmodel file)")
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = (flavor.get("artifacts") or {}).get("checkpoint")
    if artifact is None:
        raise ValueError(f"{uri}: not a jointdit model (its pyfunc has no `checkpoint` artifact)")
    return local / artifact["path"]


def load_registered(parent: Parent, into: Path) -> Model:
    model, _ = load_checkpoint(download_checkpoint(parent.pinned, into))
    return model


def check_fits(model: Model, params: dict[str, Any], codec: Codec, where: str) -> None:
    """Refuse a model whose data-fixed config (latent channels, frame rates, conditioning)
    differs from what data/cache holds under the current params."""
    have = model.cfg.to_dict()
    expected = model_config(params, codec).to_dict()
    wrong = {
        k: (have[k], expected[k])
        for k in DATA_FIELDS
        if k in have and k in expected and have[k] != expected[k]
    }
    if wrong:
        raise ValueError(
            f"{where}: the model does not fit the data of the current params (codec, clip, "
            f"conditioning): {', '.join(f'{k} {a} vs {b}' for k, (a, b) in wrong.items())}"
        )


def adapt(model: Model, cfg: FinetuneConfig) -> dict[str, int]:
    """Prepare `model` for fine-tuning in place (adapters for lora); returns the counts of
    parameters that will train and of the rest."""
    if cfg.method == "lora":
        torch.manual_seed(cfg.train.seed)  # the adapters' A: the same start on a resume
        add_adapters(model, cfg.lora)
        counts = adapter_summary(model)
        return {"trainable": counts["adapter"], "frozen": counts["base"]}
    from jointdit.training import set_trainable

    names = set(set_trainable(model, cfg.train.trainable, cfg.train.frozen))
    trainable = sum(p.numel() for n, p in model.named_parameters() if n in names)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable}


def data_protocol(params: dict[str, Any], clips: list[dict], reference: list[dict]) -> str:
    """evaluate's protocol fingerprint with the data settings folded in: the same clip paths
    hold other pictures under other data settings (background_variety, say), and a fine-tune
    exists because the data changed, so its numbers only compare with numbers of that data."""
    spec = {"evaluate": protocol(params, clips, reference), "data": params["data"]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def compare(params: dict[str, Any], models: dict[str, Model]) -> dict[str, Any]:
    """Each model's row (sampled under sample.guidance from the validation clips' first frames,
    clip i from seed evaluate.seed + i, as `evaluate` does), `real` as the floor, and each
    model's validation loss; the first model's row is the default system."""
    spec, ev = clip_spec(params), evaluate_config(params)
    fps, sr = spec.fps, spec.sample_rate
    embedders = load_embedders(ev.embedders, spec.frames, spec.duration_s)
    codec = codec_from(params)
    flow = from_dict(FlowConfig, params["flow"], "flow")
    val = load_split(CACHE, "val")
    n = min(ev.num_samples, len(val.clips))
    if n < 2:
        raise ValueError(f"finetune: {n} validation clip(s); the distances need at least 2")
    batch = val.batch
    embedding = None if batch.image_embedding is None else batch.image_embedding[:n]
    real = read_real(val.clips[:n], spec)
    rows = read_manifest(CACHE / "windows.csv", WindowManifest)
    reference_rows = rows[rows["split"] == "train"].to_dict("records")[: ev.num_reference]
    reference = set_features(read_real(reference_rows, spec), sr, embedders)
    images = [f[0] for f, _ in real]
    sample = from_dict(SampleConfig, params["sample"], "sample")
    sample = dataclasses.replace(sample, seed=ev.seed)
    systems = {"real": score_system(real, None, reference, fps, sr, ev.oracle, embedders)[0]}
    val_loss = {}
    for name, model in models.items():
        system = System(name, model, sample.guidance, experts_only=False)
        latents = sample_system(
            system, batch.image[:n], batch.text[:n], batch.video.shape[1], batch.audio.shape[-1],
            sample, embedding,
        )  # fmt: skip
        media = decode(codec, *latents)
        systems[f"{name}-{sample.guidance}"] = score_system(
            media, images, reference, fps, sr, ev.oracle, embedders
        )[0]
        val_loss[name] = validation_loss(model, batch, flow)["loss"]
    return {
        "protocol": data_protocol(params, val.clips[:n], reference_rows),
        "n_samples": n,
        "n_reference": len(reference_rows),
        "default_system": f"{next(iter(models))}-{sample.guidance}",
        "val_loss": val_loss,
        "systems": systems,
    }


def finetune(params: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the model at finetune.model_uri on data/cache, compare, register."""
    import mlflow

    log = get_logger()
    cfg = finetune_config(params)
    flow = from_dict(FlowConfig, params["flow"], "flow")
    codec = codec_from(params)
    mlflow.set_tracking_uri(resolve_tracking_uri(params["mlflow"]["tracking_uri"]))
    parent = resolve_parent(cfg.model_uri)
    champion = champion_version(params["register"]["model_name"])
    train_set, val_set = load_split(CACHE, "train"), load_split(CACHE, "val")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_registered(parent, Path(tmp) / "parent")
        start = load_registered(parent, Path(tmp) / "start")  # the untouched parent, compared
        others = {"parent": start}
        if champion is not None and champion != parent.version:
            name = params["register"]["model_name"]
            others["champion"] = load_registered(
                Parent(f"models:/{name}@champion", name, champion), Path(tmp) / "champion"
            )
    check_fits(model, params, codec, f"finetune.model_uri {cfg.model_uri}")
    counts = adapt(model, cfg)
    log.info(
        "finetune: %s from %s (version %s): %d trainable / %d frozen parameters, %d train clips",
        cfg.method, cfg.model_uri, parent.version, counts["trainable"], counts["frozen"],
        len(train_set.batch),
    )  # fmt: skip
    lineage = {"parent_model_uri": cfg.model_uri, "parent_version": parent.version or ""}
    logged = {"finetune": params["finetune"], "flow": params["flow"], "parent": lineage}
    with (
        mlflow_run(params, "finetune", logged) as run,
        MetricBuffer(run.info.run_id, OUT / "unsent_metrics.jsonl") as metrics,
    ):
        mlflow.set_tags({**lineage, "finetune_method": cfg.method})
        began = time.perf_counter()
        history = train(
            model, train_set.batch, val_set.batch, cfg.train, flow,
            log=lambda step, rec: metrics.log(step, {k: v for k, v in rec.items() if k != "step"}),
            resume_dir=RESUME,
        )  # fmt: skip
        seconds = time.perf_counter() - began
        shutil.rmtree(FINETUNE, ignore_errors=True)  # no stale adapter beside a full fine-tune
        meta = {"stage": "finetune", "method": cfg.method, **lineage}
        if cfg.method == "lora":
            save_adapters(ADAPTER_DIR, model, cfg.lora, meta)
            merge_adapters(model)
        model.eval()
        save_checkpoint(FINETUNE, model, meta)
        report = compare(params, {"finetune": model, **others})
        report.update(
            method=cfg.method,
            parent={"model_uri": cfg.model_uri, "version": parent.version},
            champion_version=champion,
            steps=cfg.train.steps,
            train_seconds=seconds,
            **{f"{k}_parameters": v for k, v in counts.items()},
        )
        write_json(OUT / "metrics.json", report)
        write_history_csv(history, PLOTS / "finetune_loss.csv")
        png = PLOTS / "finetune_loss.png"
        loss_curve(history, png, f"finetune ({cfg.method}): rectified-flow loss")
        for system, row in report["systems"].items():
            metrics.log(cfg.train.steps, {f"{system}/{k}": v for k, v in row.items()})
        mlflow.log_artifact(str(png))
        mlflow.log_artifact(str(OUT / "metrics.json"))
        if cfg.method == "lora":
            mlflow.log_artifacts(str(ADAPTER_DIR), artifact_path="adapter")
    shutil.rmtree(RESUME, ignore_errors=True)  # the run is closed: nothing left to resume
    measured = {
        version: report["systems"][f"{name}-{params['sample']['guidance']}"]
        for name, version in (("parent", parent.version), ("champion", champion))
        if version is not None and f"{name}-{params['sample']['guidance']}" in report["systems"]
    }
    record = register_model(
        params,
        FINETUNE,
        report,
        OUT / "registry.json",
        tags={**lineage, "finetune_method": cfg.method, "finetune_run_id": run.info.run_id},
        measured=measured,
    )
    log.info(
        "finetune: val loss %s; registered version %s (%s)",
        {k: round(v, 4) for k, v in report["val_loss"].items()},
        record["version"],
        record["reason"],
    )
    return report


if __name__ == "__main__":
    cli(finetune)

"""experts / stage_a / stage_b: one training step, three contracts (see params.yaml).

experts: a fresh model, joint layers skipped (each expert fitted alone; the iso baseline).
stage_a: starts from the experts; only the joint layers learn.
stage_b: starts from Stage A; the joint layers plus the configured I/O and expert layers learn.

With train_launch.nproc_per_node > 1 (params.yaml) a stage re-runs itself under torchrun, one
process per GPU (or CPU process), in data-parallel; rank 0 alone logs to MLflow and writes.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from jointdit.checkpoint import load_checkpoint, save_checkpoint
from jointdit.config import from_dict
from jointdit.data.shards import load_split
from jointdit.distributed import Place, process_group, under_torchrun
from jointdit.flow import FlowConfig
from jointdit.model.joint import JointBackboneModel, build_model
from jointdit.model.jointdit import JointDiT, count_parameters
from jointdit.training import TrainConfig, train, validation_loss
from jointdit.viz import loss_curve
from tasks.encoding import codec_from
from tasks.logs import get_logger
from tasks.mlflow_runs import check_tracking_server, mlflow_run, resolve_tracking_uri
from tasks.model_config import model_config
from tasks.params import cli
from tasks.paths import CACHE, MODELS, PLOTS, REPORTS, write_json
from tasks.tracking import MetricBuffer

STARTS_FROM = {"experts": None, "stage_a": "experts", "stage_b": "stage_a"}
# Resume checkpoints live outside the DVC outputs: DVC deletes models/<stage> before a run,
# which would take a killed run's checkpoints with it, and the output holds the final model only.
RESUME = MODELS / ".resume"


def initial_model(params: dict[str, Any], stage: str) -> JointDiT | JointBackboneModel:
    """The stage's starting model: its parent stage's checkpoint, or for `experts` a fresh
    JointDiT (whose experts that stage fits) or the joint model on the pretrained UNets (whose
    experts are given: set experts.steps to 0 to take them as they are)."""
    parent = STARTS_FROM[stage]
    if parent is None:
        torch.manual_seed(params["seed"])
        return build_model(model_config(params, codec_from(params)))
    model, _ = load_checkpoint(MODELS / parent)
    return model


def write_history_csv(history: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "train_loss", "val_loss"])
        for h in history:
            writer.writerow([h["step"], f"{h['train_loss']:.6f}", h.get("val_loss", "")])


def launch_command(stage: str, params_file: Path, nproc: int) -> list[str]:
    """The torchrun command line that runs `stage` in `nproc` processes on this machine."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return [
        str(torchrun), "--standalone", f"--nproc_per_node={nproc}",
        "-m", "tasks.train", stage, "--params", str(params_file),
    ]  # fmt: skip


def train_stage(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """Train one stage; write models/<stage>/, reports/<stage>.json and its loss plot.

    Returns the report (under torchrun, an empty dict on the ranks other than 0).
    """
    if stage not in STARTS_FROM:
        raise ValueError(f"unknown training stage {stage!r}; choose from {list(STARTS_FROM)}")
    nproc = int(params.get("train_launch", {}).get("nproc_per_node", 1))
    if nproc > 1 and not under_torchrun():
        # fail before starting the processes, not in rank 0 while the others wait for it
        check_tracking_server(resolve_tracking_uri(params["mlflow"]["tracking_uri"]))
        # the params as given (a caller's dict need not be a file) travel as a temporary file
        with tempfile.TemporaryDirectory() as tmp:
            params_file = Path(tmp) / "params.yaml"
            params_file.write_text(yaml.safe_dump(params))
            subprocess.run(launch_command(stage, params_file, nproc), check=True)
        return json.loads((REPORTS / f"{stage}.json").read_text())
    with process_group() as place:
        return _train_stage(params, stage, place)


def _train_stage(params: dict[str, Any], stage: str, place: Place) -> dict[str, Any]:
    log = get_logger()
    cfg = from_dict(TrainConfig, {"seed": params["seed"], **params[stage]}, stage)
    flow = from_dict(FlowConfig, params["flow"], "flow")
    train_set, val_set = load_split(CACHE, "train"), load_split(CACHE, "val")
    model = initial_model(params, stage).to(place.device)
    if not place.is_main:
        train(model, train_set.batch, val_set.batch, cfg, flow, resume_dir=RESUME / stage)
        return {}
    before = validation_loss(model, val_set.batch, flow, cfg.experts_only)
    log.info(
        "%s: %d train / %d val clips, %s, %d process(es) on %s",
        stage,
        len(train_set.batch),
        len(val_set.batch),
        count_parameters(model),
        place.world_size,
        place.device,
    )

    logged = {stage: params[stage], "flow": params["flow"], "model": model.cfg.to_dict()}
    with (
        mlflow_run(params, stage, logged) as run,
        MetricBuffer(run.info.run_id, REPORTS / f"{stage}.unsent_metrics.jsonl") as metrics,
    ):
        import mlflow

        mlflow.set_tags({"world_size": place.world_size, "device": str(place.device)})

        def on_step(step: int, record: dict[str, float]) -> None:
            metrics.log(step, {k: v for k, v in record.items() if k != "step"})
            if "val_loss" in record:
                log.info(
                    "%s step %d: train %.4f val %.4f, condition swap %.3f",
                    stage,
                    step,
                    record["train_loss"],
                    record["val_loss"],
                    record["val_condition_swap"],
                )

        history = train(
            model, train_set.batch, val_set.batch, cfg, flow, log=on_step, resume_dir=RESUME / stage
        )
        after = validation_loss(model, val_set.batch, flow, cfg.experts_only)
        model.cpu()
        save_checkpoint(MODELS / stage, model, {"stage": stage, "val_loss": after["loss"]})
        report = {
            "val_loss_before": before["loss"],
            "val_loss": after["loss"],
            "val_loss_video": after["loss_video"],
            "val_loss_audio": after["loss_audio"],
            "steps": cfg.steps,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        write_json(REPORTS / f"{stage}.json", report)
        write_history_csv(history, PLOTS / f"{stage}_loss.csv")
        png = PLOTS / f"{stage}_loss.png"
        loss_curve(history, png, f"{stage}: rectified-flow loss")
        final = {"final_val_loss": after["loss"], "initial_val_loss": before["loss"]}
        metrics.log(cfg.steps, final)
        mlflow.log_artifact(str(png))
        mlflow.log_artifacts(str(MODELS / stage), artifact_path="checkpoint")
    # Only now, with the model uploaded and the run closed: a tracking server that fails the
    # upload fails the stage with its resume checkpoints kept (the last one is the final step),
    # so the retry resumes there instead of training again from step 0.
    shutil.rmtree(RESUME / stage, ignore_errors=True)
    log.info("%s: val loss %.4f -> %.4f", stage, before["loss"], after["loss"])
    return report


if __name__ == "__main__":
    cli(train_stage, "stage")

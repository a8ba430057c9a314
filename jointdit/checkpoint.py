"""Checkpoints: safetensors weights + a JSON config, written atomically (temp, then rename).

Two kinds: our JointDiT (config.json {"model", "meta"}, unchanged), and the joint model over
pretrained backbones (config.json {"kind": "backbones", "model", "unets", "schedule", "meta"}:
the joint config, both UNets' diffusers configs and the audio backbone's DDPM schedule, so the
checkpoint rebuilds without the pretrained snapshot directories).

The config holds the SHA-256 of the weights and of its own content, so a checkpoint edited by
hand is refused rather than served as the model a run trained. Checkpoints written before the
checksums (no `sha256` key; models registered then) still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from jointdit.atomic import atomic_path, write_text
from jointdit.config import from_dict
from jointdit.data.manifest import sealed_digest, sha256_file
from jointdit.model.jointdit import JointDiT, JointDiTConfig
from jointdit.weights import load_weights

if TYPE_CHECKING:  # diffusers takes seconds to import; the default path never needs it
    from diffusers import ModelMixin

    from jointdit.model.joint import JointBackboneModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# What a JointDiT checkpoint meant before its config named these choices: velocity prediction,
# no held first frame, the noisy latent as it is, no output convolution, no frame sync. Keys a
# config does name win.
LEGACY_DIT = {
    "prediction": "v",
    "hold_first_frame": False,
    "input_scale": "none",
    "output_conv": False,
    "frame_sync": False,
}
BACKBONES = "backbones"


def _unet_config(unet: ModelMixin) -> dict:
    """The diffusers config as diffusers writes it, less the directory it was loaded from
    (a checkpoint does not depend on where its backbones once lay)."""
    config = json.loads(unet.to_json_string())
    config.pop("_name_or_path", None)
    return config


def _config(model: JointDiT | JointBackboneModel, meta: dict[str, Any] | None) -> dict:
    if isinstance(model, JointDiT):
        return {"model": model.cfg.to_dict(), "meta": meta or {}}
    from jointdit.model.joint import BackboneModelConfig

    if not isinstance(model.cfg, BackboneModelConfig):
        raise ValueError("a JointDiT viewed as backbones is saved as the JointDiT itself")
    return {
        "kind": BACKBONES,
        "model": model.cfg.to_dict(),
        "unets": {"video": _unet_config(model.video.unet), "audio": _unet_config(model.audio.unet)},
        "schedule": model.audio.schedule.to_dict(),
        "meta": meta or {},
    }


def save_checkpoint(
    directory: Path, model: JointDiT | JointBackboneModel, meta: dict[str, Any] | None = None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = _config(model, meta)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp))
        config["sha256"] = {"weights": sha256_file(tmp)}
    config["sha256"]["config"] = sealed_digest(config, "config")
    write_text(directory / CONFIG, json.dumps(config, indent=2))


def _unet(config: dict, where: str, dtype: torch.dtype) -> ModelMixin:
    from jointdit.backbones.loader import UNET_CLASSES

    name = config.get("_class_name")
    if name not in UNET_CLASSES:
        raise ValueError(f"{where}: unknown UNet class {name!r}; known {sorted(UNET_CLASSES)}")
    unet = UNET_CLASSES[name].from_config(config)
    return unet if dtype == torch.float32 else unet.to(dtype)


def _backbone_model(config: dict, where: str) -> JointBackboneModel:
    from jointdit.backbones.timemaps import DDPMSchedule
    from jointdit.model.joint import BackboneModelConfig, build_from_unets
    from jointdit.pretrained import torch_dtype

    for key in ("unets", "schedule"):
        if key not in config:
            raise ValueError(f"{where}: backbones checkpoint without {key!r}")
    cfg = from_dict(BackboneModelConfig, config["model"], f"{where}: model")
    dtype = torch_dtype(cfg.dtype, f"{where}: model")
    video = _unet(config["unets"]["video"], f"{where}: unets.video", dtype)
    audio = _unet(config["unets"]["audio"], f"{where}: unets.audio", dtype)
    schedule = from_dict(DDPMSchedule, config["schedule"], f"{where}: schedule")
    return build_from_unets(cfg, video, audio, schedule)


def load_checkpoint(directory: Path) -> tuple[JointDiT | JointBackboneModel, dict[str, Any]]:
    """The model (eval mode) and the checkpoint's metadata; clear errors for missing files."""
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: not a checkpoint (missing {name})")
    config = json.loads((directory / CONFIG).read_text())
    where = str(directory / CONFIG)
    kind = config.get("kind")
    if kind is None:
        saved = {**LEGACY_DIT, **config["model"]}
        model = JointDiT(from_dict(JointDiTConfig, saved, f"{where}: model"))
    elif kind == BACKBONES:
        model = _backbone_model(config, where)
    else:
        raise ValueError(f"{where}: unknown checkpoint kind {kind!r}")
    load_weights(model, directory / WEIGHTS)  # first: its errors say what does not fit
    digests = config.get("sha256")
    if digests is not None:
        if digests.get("config") != sealed_digest(config, "config"):
            raise ValueError(f"{where}: edited after it was written (SHA-256 differs)")
        if digests.get("weights") != sha256_file(directory / WEIGHTS):
            raise ValueError(
                f"{directory / WEIGHTS}: edited or damaged after it was written (SHA-256 differs)"
            )
    return model.eval(), config["meta"]

"""Pretrained diffusers UNets from a local Hugging Face snapshot (never a download).

Layout: <directory>/unet/config.json + weights (what `save_pretrained` / `snapshot_download`
write), or that unet/ folder itself; optionally <directory>/scheduler/scheduler_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DConditionModel, UNetSpatioTemporalConditionModel

from jointdit.pretrained import model_dir

UNET_CLASSES: dict[str, type[ModelMixin]] = {
    "UNetSpatioTemporalConditionModel": UNetSpatioTemporalConditionModel,
    "UNet2DConditionModel": UNet2DConditionModel,
}


def load_unet(
    path: str | Path,
    class_name: str,
    dtype: torch.dtype = torch.float32,
    where: str = "model.backbones",
) -> ModelMixin:
    """The `class_name` UNet of the snapshot at `path` (errors name `where` and the file)."""
    directory = model_dir(str(path), "unet", class_name, where)
    cls = UNET_CLASSES[class_name]
    return cls.from_pretrained(directory, local_files_only=True, torch_dtype=dtype).eval()


def load_scheduler_config(directory: str | Path) -> dict | None:
    """The snapshot's scheduler config, or None when it has none."""
    path = Path(directory) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err

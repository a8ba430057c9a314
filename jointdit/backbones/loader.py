"""Pretrained diffusers UNets from a local Hugging Face snapshot (never a download).

Layout: <directory>/unet/config.json + weights (what `save_pretrained` / `snapshot_download`
write), optionally <directory>/scheduler/scheduler_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DConditionModel, UNetSpatioTemporalConditionModel

UNET_CLASSES: dict[str, type[ModelMixin]] = {
    "UNetSpatioTemporalConditionModel": UNetSpatioTemporalConditionModel,
    "UNet2DConditionModel": UNet2DConditionModel,
}


def read_component_config(directory: Path, subfolder: str, filename: str) -> dict:
    path = Path(directory) / subfolder / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected a Hugging Face snapshot directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def load_unet(
    directory: Path, class_name: str, dtype: torch.dtype = torch.float32
) -> ModelMixin:
    """The UNet of the snapshot at `directory`, which must be a `class_name`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: pretrained backbone directory not found")
    config = read_component_config(directory, "unet", "config.json")
    found = config.get("_class_name")
    if found != class_name:
        raise ValueError(
            f"{directory / 'unet' / 'config.json'}: is a {found!r}, expected {class_name!r}"
        )
    cls = UNET_CLASSES[class_name]
    return cls.from_pretrained(
        directory, subfolder="unet", local_files_only=True, torch_dtype=dtype
    ).eval()


def load_scheduler_config(directory: Path) -> dict | None:
    """The snapshot's scheduler config, or None when it has none."""
    path = Path(directory) / "scheduler" / "scheduler_config.json"
    return read_component_config(directory, "scheduler", "scheduler_config.json") if (
        path.is_file()
    ) else None

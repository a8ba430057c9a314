"""Pretrained weights from local directories (the Hugging Face snapshot layout), never a download.

A path names either the model's own directory (holding its config.json) or a pipeline snapshot
holding it in a sub-folder (`vae/`, `vocoder/`); the config's class is checked before loading, so
a UNet or a text encoder where a VAE is expected fails naming the file, not deep in a state-dict
load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str, where: str) -> torch.dtype:
    """The dtype a config names (`where` says which config, in the error)."""
    if name not in DTYPES:
        raise ValueError(f"{where}.dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def config_class(config: Path) -> str:
    """The class a saved config describes: diffusers' `_class_name`, transformers' architecture."""
    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config} is not valid JSON: {exc}") from exc
    return data.get("_class_name") or next(iter(data.get("architectures") or []), "")


def check_class(directory: Path, expected: str) -> Path:
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; expected a saved {expected}")
    found = config_class(config)
    if found != expected:
        raise ValueError(
            f"{config} describes a {found or 'model of unknown class'}, not the {expected} "
            "expected here: point the path at the right model directory"
        )
    return directory


def model_dir(path: str, subfolder: str, expected: str, where: str) -> Path:
    """The directory holding the `expected` class: `path` itself or `path/subfolder`."""
    if not path:
        raise ValueError(
            f"{where}.path is empty: set it to a local directory holding a {expected} "
            f"(a Hugging Face snapshot with {subfolder}/, or that folder itself)"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{where}.path {root} is not a directory: a {expected} loads from a local "
            "directory only (repo ids are never downloaded)"
        )
    for directory in (root, root / subfolder):
        if (directory / "config.json").is_file():
            return check_class(directory, expected)
    raise FileNotFoundError(
        f"{where}.path {root}: neither {root}/config.json nor {root}/{subfolder}/config.json "
        f"exists; expected a {expected} saved with save_pretrained"
    )


def load_frozen(
    cls: type, path: str, subfolder: str, dtype: str, device: str, where: str
) -> tuple[Any, Path]:
    """(model, its directory): a diffusers `cls` from a local snapshot, in `dtype` on `device`,
    in eval mode with gradients off (the codecs never train)."""
    directory = model_dir(path, subfolder, cls.__name__, where)
    model = cls.from_pretrained(
        directory, torch_dtype=torch_dtype(dtype, where), local_files_only=True
    )
    return model.to(torch.device(device)).eval().requires_grad_(False), directory

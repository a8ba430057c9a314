"""Checkpoints: safetensors weights + a JSON config, written atomically (temp, then rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from jointdit.config import from_dict
from jointdit.model.jointdit import JointDiT, JointDiTConfig
from jointdit.weights import load_weights

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(directory: Path, model: JointDiT, meta: dict[str, Any] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps({"model": model.cfg.to_dict(), "meta": meta or {}}, indent=2))
    os.replace(tmp, directory / CONFIG)


def load_checkpoint(directory: Path) -> tuple[JointDiT, dict[str, Any]]:
    """The model (eval mode) and the checkpoint's metadata; clear errors for missing files."""
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: not a checkpoint (missing {name})")
    config = json.loads((directory / CONFIG).read_text())
    model = JointDiT(from_dict(JointDiTConfig, config["model"], f"{directory / CONFIG}: model"))
    load_weights(model, directory / WEIGHTS)
    return model.eval(), config["meta"]

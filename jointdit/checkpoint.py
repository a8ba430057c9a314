"""Checkpoints: safetensors weights + a JSON config, written atomically (temp, then rename).

The config holds the SHA-256 of the weights and of its own content, so a checkpoint edited by
hand is refused rather than served as the model a run trained. Checkpoints written before the
checksums (no `sha256` key; models registered then) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from jointdit.config import from_dict
from jointdit.data.manifest import sha256_file
from jointdit.model.jointdit import JointDiT, JointDiTConfig
from jointdit.weights import load_weights

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(directory: Path, model: JointDiT, meta: dict[str, Any] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    config = {"model": model.cfg.to_dict(), "meta": meta or {}}
    config["sha256"] = {"weights": sha256_file(tmp)}
    config["sha256"]["config"] = _config_digest(config)
    os.replace(tmp, directory / WEIGHTS)
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, directory / CONFIG)


def _config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of the config other than its own digest."""
    content = {**config, "sha256": {"weights": config["sha256"].get("weights")}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def load_checkpoint(directory: Path) -> tuple[JointDiT, dict[str, Any]]:
    """The model (eval mode) and the checkpoint's metadata; clear errors for missing files."""
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: not a checkpoint (missing {name})")
    config = json.loads((directory / CONFIG).read_text())
    model = JointDiT(from_dict(JointDiTConfig, config["model"], f"{directory / CONFIG}: model"))
    load_weights(model, directory / WEIGHTS)  # first: its errors say what does not fit
    digests = config.get("sha256")
    if digests is not None:
        if digests.get("config") != _config_digest(config):
            raise ValueError(f"{directory / CONFIG}: edited after it was written (SHA-256 differs)")
        if digests.get("weights") != sha256_file(directory / WEIGHTS):
            raise ValueError(
                f"{directory / WEIGHTS}: edited or damaged after it was written (SHA-256 differs)"
            )
    return model.eval(), config["meta"]

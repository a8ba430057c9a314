"""Params profiles: named overlays of params.yaml (profiles/<name>.yaml), run as DVC experiments.

A profile changes settings, never the graph: `jointdit profile gpu` runs
`dvc exp run -S key=value ...` with every leaf of profiles/gpu.yaml, so params.yaml in git stays
the embedded default and DVC records the experiment's params and outputs as usual.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tasks.params import ParamsLoader, flatten

PROFILES = Path("profiles")


def load_profile(name: str, root: Path = PROFILES) -> dict[str, Any]:
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such profile; profiles: {known}")
    return yaml.load(path.read_text(), Loader=ParamsLoader) or {}


def overlay(params: dict[str, Any], profile: dict[str, Any], where: str = "") -> dict[str, Any]:
    """params with the profile's leaves set. A section params.yaml lacks is an error (a typo
    there would be ignored by every stage); keys inside a section may be new (a training
    switch left at its default in params.yaml): the section's config dataclass rejects
    unknown ones when the stage builds it."""
    out = copy.deepcopy(params)
    for key, value in profile.items():
        name = f"{where}{key}"
        if not where and key not in out:
            raise KeyError(f"profile sets section {name}, which params.yaml does not have")
        if isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = overlay(out[key], value, name + ".")
        else:
            out[key] = value
    return out


def set_params_args(profile: dict[str, Any]) -> list[str]:
    """`-S ++key=value` arguments for `dvc exp run`: Hydra's override grammar, where `++` sets
    a key whether or not params.yaml has it; values as JSON, which that grammar reads."""
    return [
        arg
        for key, value in flatten(profile).items()
        for arg in ("-S", f"++{key}={json.dumps(value)}")
    ]

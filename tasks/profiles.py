"""Params profiles: named overlays of params.yaml (profiles/<name>.yaml), run as DVC experiments.

A profile changes settings, never the graph: `jointdit profile gpu` runs
`dvc exp run -S key=value ...` with every leaf of profiles/gpu.yaml, so params.yaml in git stays
the embedded default and DVC records the experiment's params and outputs as usual.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tasks.common import flatten

PROFILES = Path("profiles")


def load_profile(name: str, root: Path = PROFILES) -> dict[str, Any]:
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such profile; profiles: {known}")
    return yaml.safe_load(path.read_text()) or {}


def overlay(params: dict[str, Any], profile: dict[str, Any], where: str = "") -> dict[str, Any]:
    """params with the profile's leaves replaced; a key params.yaml lacks is an error (a typo
    in a profile would otherwise be ignored by every stage)."""
    out = copy.deepcopy(params)
    for key, value in profile.items():
        name = f"{where}{key}"
        if key not in out:
            raise KeyError(f"profile sets {name}, which params.yaml does not have")
        if isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = overlay(out[key], value, name + ".")
        else:
            out[key] = value
    return out


def set_params_args(profile: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` (values in YAML flow style)."""
    args = []
    for key, value in flatten(profile).items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args

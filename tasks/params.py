"""params.yaml as the stages read it, and the command line every stage is run by."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from jointdit.config import from_dict
from jointdit.data.windows import ClipSpec


class ParamsLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: PyYAML (YAML 1.1) reads `2e-05` as a string, and DVC
    writes small floats that way (`dvc exp run -S stage_b.lr=0.00002`), as people do."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    with open(path) as f:
        return yaml.load(f, Loader=ParamsLoader)


def clip_spec(params: dict[str, Any]) -> ClipSpec:
    """params' `clip`, typed; a params file from before windows gets what it got then: one
    window per clip."""
    clip = params["clip"]
    legacy = {"hop_s": clip["duration_s"], "max_windows_per_clip": 1}
    return from_dict(ClipSpec, {**legacy, **clip}, "clip")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def cli(step: Callable[..., Any], *args_names: str) -> None:
    """`python -m tasks.X [ARG ...] [--params params.yaml]` for a step function."""
    parser = argparse.ArgumentParser(description=step.__doc__)
    for name in args_names:
        parser.add_argument(name)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    ns = parser.parse_args()
    params = load_params(ns.params)
    if params.get("torch_threads"):
        import torch

        torch.set_num_threads(params["torch_threads"])
    step(params, *(getattr(ns, n) for n in args_names))

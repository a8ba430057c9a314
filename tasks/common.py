"""What every pipeline step shares: params, paths, logging, MLflow, the model config."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from jointdit.codecs import Codec, CodecConfig, build_codec
from jointdit.conditioning import ConditioningConfig, conditioning_dims
from jointdit.config import from_dict
from jointdit.data.media import Clip, read_windows
from jointdit.model.joint import BackboneModelConfig, model_config_from_dict
from jointdit.model.jointdit import JointDiTConfig

RAW = Path("data/raw")
VALIDATED = Path("data/validated")
CACHE = Path("data/cache")
MODELS = Path("models")
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"


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


def get_logger() -> logging.Logger:
    """Steps log to stderr; under the Prefect `pipeline` flow that stream lands in the run log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logging.getLogger("jointdit")


def write_json(path: Path, obj: Any) -> None:
    """Atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve_tracking_uri(configured: str | None) -> str:
    """The MLflow tracking URI: $MLFLOW_TRACKING_URI wins over the configured one, so the same
    params.yaml and image log to SQLite on a laptop and to the team server in a cluster job
    (the GPU work pool sets the variable)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"


def check_tracking_server(uri: str, timeout_s: float = 3.0) -> None:
    """Fail now, naming the URI, when an http(s) tracking server does not answer.

    Without this a stage trains for an hour and dies at its first log call, or hangs in
    MLflow's own retries (minutes). Any HTTP answer counts as reachable (an auth error or a
    404 is the server's to report); only no answer at all (refused, DNS, timeout) fails.
    Local stores (sqlite, file paths) need no server.
    """
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    if urlsplit(uri).scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, or point "
            "mlflow.tracking_uri (params.yaml) / $MLFLOW_TRACKING_URI at a reachable one"
        ) from exc


def provenance_tags(root: Path = Path(".")) -> dict[str, str]:
    """Where a run's code and data came from, as MLflow tags; what cannot be found is left out.

    git_commit / git_dirty: HEAD of the repository at `root` and whether tracked files differ
    from it. data_cache_md5: the md5 DVC recorded for data/cache in dvc.lock (under `dvc repro`
    the cache stage has run and locked before any training stage reads the cache), and
    dvc_lock_sha256: the whole lock file, which pins every stage's inputs and outputs.
    """
    import hashlib
    import subprocess

    tags: dict[str, str] = {}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):  # no git, or a hung one
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        status = git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["git_dirty"] = str(bool(status)).lower()
    lock = root / "dvc.lock"
    if lock.is_file():
        data = lock.read_bytes()
        tags["dvc_lock_sha256"] = hashlib.sha256(data).hexdigest()
        try:
            outs = yaml.safe_load(data)["stages"]["cache"]["outs"]
            md5 = next(o["md5"] for o in outs if o["path"] == CACHE.as_posix())
            tags["data_cache_md5"] = str(md5)
        except (yaml.YAMLError, KeyError, TypeError, StopIteration):
            logging.getLogger("jointdit").warning("%s: no md5 of %s in it", lock, CACHE)
    return tags


@contextlib.contextmanager
def mlflow_run(params: dict[str, Any], stage: str, logged: dict[str, Any]) -> Iterator[Any]:
    """An MLflow run named after the stage: that stage's params logged (flat, as params, and
    whole as the artifact config/params.yaml), provenance tags (provenance_tags), and system
    metrics every mlflow.system_metrics_interval_s seconds (absent or 0: none)."""
    import mlflow

    uri = resolve_tracking_uri(params["mlflow"]["tracking_uri"])
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(params["mlflow"]["experiment"])
    interval = params["mlflow"].get("system_metrics_interval_s") or 0
    if interval:
        mlflow.set_system_metrics_sampling_interval(interval)
    tags = {"stage": stage, **provenance_tags()}
    with mlflow.start_run(run_name=stage, tags=tags, log_system_metrics=bool(interval)) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(logged).items()})
        # through JSON: tuples become lists, anything else its str(), so safe_dump takes it
        plain = json.loads(json.dumps(logged, default=str))
        mlflow.log_text(yaml.safe_dump(plain, sort_keys=False), "config/params.yaml")
        yield run


def codec_config(params: dict[str, Any]) -> CodecConfig:
    c = params["codec"]
    if "name" in c:
        raise ValueError(
            "codec.name was replaced by codec.video and codec.audio (e.g. video: patch, "
            "audio: patch); update params"
        )
    return from_dict(CodecConfig, c, "codec")


def codec_from(params: dict[str, Any]) -> Codec:
    """The codec pair of params.codec, for params.clip's sample rate (the served model builds
    the same one from the same section: tasks/pyfunc_model.py)."""
    return build_codec(codec_config(params), params["clip"]["sample_rate"])


def conditioning_from(params: dict[str, Any]) -> ConditioningConfig:
    # a params file from before the section gets what it got then: hashed word ids
    return from_dict(ConditioningConfig, params.get("conditioning"), "conditioning")


def model_config(
    params: dict[str, Any], codec: Codec
) -> JointDiTConfig | BackboneModelConfig:
    """params.model (`kind: dit`, our JointDiT, or `kind: backbones`, the pretrained UNets)
    plus what follows from the codec, the clip and the conditioning."""
    text_dim, image_dim = conditioning_dims(conditioning_from(params))
    model = params["model"]
    context = {"text_embed_dim": text_dim, "image_embed_dim": image_dim}
    latents = {"audio_channels": codec.audio_channels, "audio_bins": codec.audio_bins}
    if model.get("kind", "dit") == "backbones":
        b = model.get("backbones") or {}
        section = {
            **b,
            **context,
            **latents,
            # the context is the same in both kinds: what `cache` encoded
            "text_vocab": model["text_vocab"],
            "text_len": model["text_len"],
            "svd": {**b.get("svd", {}), "video_fps": params["clip"]["fps"]},
            "audioldm": {**b.get("audioldm", {}), "audio_frame_rate": codec.audio_frame_rate},
        }
        return model_config_from_dict({"kind": "backbones", "backbones": section})
    derived = {
        **context,
        **latents,
        "video_channels": codec.video_channels,
        "video_fps": params["clip"]["fps"],
        "audio_frame_rate": codec.audio_frame_rate,
    }
    return model_config_from_dict({**model, **derived})


def read_normalised(
    path: Path, params: dict[str, Any], starts: Sequence[float] = (0.0,)
) -> list[Clip]:
    """The windows of a clip starting at ``starts``, at the shape the model works at."""
    clip = params["clip"]
    return read_windows(
        path,
        starts,
        fps=clip["fps"],
        width=clip["width"],
        height=clip["height"],
        sample_rate=clip["sample_rate"],
        duration_s=clip["duration_s"],
    )


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

"""The stages' MLflow runs: which tracking server, failing fast when it is down, where a run's
code and data came from, and the run itself with the stage's params."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tasks.params import flatten
from tasks.paths import CACHE


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

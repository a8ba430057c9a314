"""A registered model + an image (+ prompt) -> MP4 with audio, WAV and PNG preview, logged as a
run of the `jointdit-samples` experiment.

Plain functions, no Prefect: `jointdit sample` calls `sample_clip` directly when no Prefect API
is configured; the Prefect `sample` flow (flows/sample.py) runs the same steps as its tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from jointdit.data.media import display_scale, write_clip, write_wav
from jointdit.sample_request import BadRequest
from jointdit.viz import log_mel, sample_sheet
from tasks.mlflow_runs import check_tracking_server, resolve_tracking_uri

DEFAULT_MODEL = "models:/jointdit@champion"


def load_model(model_uri: str, tracking_uri: str) -> Any:
    """The pyfunc at `model_uri`; LookupError naming it when it cannot be loaded."""
    check_tracking_server(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as e:
        raise LookupError(f"model {model_uri} (tracking URI {tracking_uri}): {e.message}") from e
    except OSError as e:  # a path or runs:/ URI without the files
        raise LookupError(f"model {model_uri} (tracking URI {tracking_uri}): {e}") from e


def generate_clip(model: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The model's answer for one row, as arrays; BadRequest with its message for bad input."""
    try:
        return model.predict(pd.DataFrame([request]), params={"output": "arrays"})[0]
    except MlflowException as e:
        raise BadRequest(e.message) from e


def write_outputs(result: dict[str, Any], out_dir: Path, stem: str, title: str) -> dict[str, str]:
    """`stem`.mp4 (H.264 + AAC), .wav and .png (frames above the spectrogram) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, audio = result["frames"], result["audio"]
    fps, sr = result["fps"], result["sample_rate"]
    paths = {
        "video": out_dir / f"{stem}.mp4",
        "audio": out_dir / f"{stem}.wav",
        "preview": out_dir / f"{stem}.png",
    }
    scale = display_scale(*frames.shape[1:3])
    write_clip(paths["video"], frames, fps, audio[None], sr, scale)
    write_wav(paths["audio"], audio, sr)
    sample_sheet(frames, log_mel(audio, sr), len(frames) / fps, paths["preview"], title)
    return {k: str(v) for k, v in paths.items()}


def log_sample(request: dict[str, Any], model_uri: str, paths: dict[str, str]) -> None:
    """One run of the `jointdit-samples` experiment: the request's parameters and the files."""
    mlflow.set_experiment("jointdit-samples")
    with mlflow.start_run(run_name="sample", tags={"stage": "sample", "model_uri": model_uri}):
        mlflow.log_params({**request, "model_uri": model_uri})
        for path in paths.values():
            mlflow.log_artifact(path)


def sample_clip(
    image: str,
    prompt: str = "",
    seed: int = 0,
    steps: int | None = None,
    guidance: str | None = None,
    sampler: str | None = None,
    model_uri: str = DEFAULT_MODEL,
    out_dir: str = "outputs",
    tracking_uri: str | None = None,
    step: Callable[[Callable], Callable] = lambda fn: fn,
) -> dict[str, str]:
    """Animate and sound `image`; steps/guidance/sampler default to the registered model's.

    `tracking_uri` unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db. `step` wraps each
    step before it is called (the Prefect flow passes `prefect.task`). Bad input raises
    BadRequest, FileNotFoundError or LookupError (an unknown model) with a message naming it.
    """
    if not Path(image).is_file():
        raise FileNotFoundError(f"image not found: {image}")
    request: dict[str, Any] = {"image": image, "prompt": prompt, "seed": seed}
    for name, value in (("steps", steps), ("guidance", guidance), ("sampler", sampler)):
        if value is not None:
            request[name] = value
    model = step(load_model)(model_uri, tracking_uri or resolve_tracking_uri(None))
    result = step(generate_clip)(model, request)
    stem = f"{Path(image).stem}_seed{seed}"
    paths = step(write_outputs)(result, Path(out_dir), stem, prompt or Path(image).name)
    step(log_sample)(request, model_uri, paths)
    logging.getLogger("jointdit").info("sample: wrote %s", paths)
    return paths

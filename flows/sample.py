"""The `sample` flow: a registered model + an image (+ prompt) -> MP4 with audio, WAV, PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task

from jointdit.data.media import display_scale, write_clip, write_wav
from jointdit.viz import log_mel, sample_sheet
from tasks.mlflow_runs import check_tracking_server, resolve_tracking_uri

DEFAULT_MODEL = "models:/jointdit@champion"


@task
def load_model(model_uri: str, tracking_uri: str) -> Any:
    import mlflow

    check_tracking_server(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri)


@task
def predict(model: Any, request: dict[str, Any]) -> dict[str, Any]:
    return model.predict(pd.DataFrame([request]))[0]


@task
def write_outputs(result: dict[str, Any], out_dir: Path, stem: str, title: str) -> dict[str, str]:
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


@flow(name="sample")
def sample(
    image: str,
    prompt: str = "",
    seed: int = 0,
    steps: int | None = None,
    guidance: str | None = None,
    sampler: str | None = None,
    model_uri: str = DEFAULT_MODEL,
    out_dir: str = "outputs",
    tracking_uri: str | None = None,
) -> dict[str, str]:
    """Animate and sound `image`; steps/guidance/sampler default to the registered model's.

    `tracking_uri` unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    import mlflow

    logger = get_run_logger()
    if not Path(image).is_file():
        raise FileNotFoundError(f"image not found: {image}")
    request: dict[str, Any] = {"image": image, "prompt": prompt, "seed": seed}
    if steps is not None:
        request["steps"] = steps
    if guidance is not None:
        request["guidance"] = guidance
    if sampler is not None:
        request["sampler"] = sampler
    uri = tracking_uri or resolve_tracking_uri(None)
    model = load_model(model_uri, uri)
    result = predict(model, request)
    stem = f"{Path(image).stem}_seed{seed}"
    paths = write_outputs(result, Path(out_dir), stem, prompt or Path(image).name)
    mlflow.set_experiment("jointdit-samples")
    with mlflow.start_run(run_name="sample", tags={"stage": "sample", "model_uri": model_uri}):
        mlflow.log_params({**request, "model_uri": model_uri})
        for path in paths.values():
            mlflow.log_artifact(path)
    logger.info("sample: wrote %s", paths)
    return paths

"""The `sample` flow: a registered model + an image (+ prompt) -> MP4 with audio, WAV, PNG.

The steps are tasks/sample_clip.py's, each run as a Prefect task (load_model, generate_clip,
write_outputs, log_sample), so the UI shows them and a bad input fails the run with its message.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from tasks.sample_clip import DEFAULT_MODEL, sample_clip


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
    paths = sample_clip(
        image, prompt, seed, steps, guidance, sampler, model_uri, out_dir, tracking_uri, step=task
    )
    get_run_logger().info("sample: wrote %s", paths)
    return paths

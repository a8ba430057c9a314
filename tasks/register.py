"""register: log the Stage B model as an MLflow pyfunc, alias `candidate`; gate `champion`.

The champion moves to the candidate when there is none yet, or when the candidate's sync
(AV-Align) is higher and neither Fréchet distance is worse than the champion's by more than
`register.fd_tolerance` (a fraction).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks.common import MODELS, REPORTS, cli, get_logger, mlflow_run, write_json

ROOT = Path(__file__).resolve().parent.parent
GATED = ("av_align", "fd_logmel", "fd_frames")


def gate(
    candidate: dict[str, float], champion: dict[str, float] | None, tol: float
) -> tuple[bool, str]:
    """(promote?, why) for the candidate's and the champion's joint metrics."""
    if champion is None:
        return True, "first version: no champion yet"
    if candidate["av_align"] <= champion["av_align"]:
        return False, (
            f"sync {candidate['av_align']:.4f} does not beat the champion's "
            f"{champion['av_align']:.4f}"
        )
    for key in ("fd_logmel", "fd_frames"):
        if candidate[key] > champion[key] * (1 + tol):
            return False, (
                f"{key} {candidate[key]:.4f} is worse than the champion's {champion[key]:.4f} "
                f"beyond the tolerance {tol:.0%}"
            )
    return True, (
        f"sync {candidate['av_align']:.4f} > {champion['av_align']:.4f} with Fréchet distances "
        f"within {tol:.0%}"
    )


def pip_requirements() -> list[str]:
    """The serving environment: pinned as installed here (no slow requirement inference)."""
    from importlib.metadata import version

    names = ("torch", "torchaudio", "numpy", "pandas", "pillow", "safetensors", "mlflow")
    return [f"{n}=={version(n)}" for n in names]


def register(params: dict[str, Any]) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    log = get_logger()
    cfg = params["register"]
    name = cfg["model_name"]
    metrics = json.loads((REPORTS / "metrics.json").read_text())
    candidate = {k: metrics["joint"][k] for k in GATED}
    serving = {
        "clip": params["clip"],
        "codec": params["codec"]["name"],
        "patch": {**params["codec"]["patch"], "sample_rate": params["clip"]["sample_rate"]},
        "sample": params["sample"],
    }
    with (
        mlflow_run(params, "register", {"register": cfg}) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        serving_path = Path(tmp) / "serving.json"
        serving_path.write_text(json.dumps(serving, indent=2))
        mlflow.log_metrics({f"joint_{k}": v for k, v in candidate.items()})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ROOT / "tasks" / "pyfunc_model.py"),
            artifacts={"checkpoint": str(MODELS / "stage_b"), "serving": str(serving_path)},
            code_paths=[str(ROOT / "jointdit")],
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
        client = MlflowClient()
        version = info.registered_model_version
        client.set_model_version_tag(name, version, "run_id", run.info.run_id)
        for k, v in candidate.items():
            client.set_model_version_tag(name, version, k, f"{v:.6f}")
        client.set_registered_model_alias(name, "candidate", version)
        try:
            current = client.get_model_version_by_alias(name, "champion")
            champion = {k: float(current.tags[k]) for k in GATED}
            champion_version = current.version
        except mlflow.exceptions.MlflowException:
            champion, champion_version = None, None
        promote, why = gate(candidate, champion, cfg["fd_tolerance"])
        if promote:
            client.set_registered_model_alias(name, "champion", version)
            champion_version = version
        log.info(
            "register: %s version %s %s: %s",
            name,
            version,
            "promoted to champion" if promote else "stays candidate",
            why,
        )
    record = {
        "model_name": name,
        "version": int(version),
        "candidate": int(version),
        "champion": int(champion_version),
        "promoted": promote,
        "reason": why,
        "metrics": candidate,
        "model_uri": f"models:/{name}@champion",
    }
    write_json(REPORTS / "registry.json", record)
    return record


if __name__ == "__main__":
    cli(register)

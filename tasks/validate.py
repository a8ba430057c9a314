"""validate: probe every raw clip; accepted (with a train/val split) or rejected with a reason."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import pandas as pd

from jointdit.config import from_dict
from jointdit.data.manifest import (
    RawManifest,
    RejectedManifest,
    ValidationConfig,
    read_manifest,
    validated_schema,
    write_manifest,
)
from jointdit.data.sources import FETCH_REJECTED_NAME, MANIFEST_NAME
from jointdit.data.validation import validate as validate_clips
from tasks.logs import get_logger
from tasks.mlflow_runs import mlflow_run
from tasks.params import cli, clip_spec
from tasks.paths import RAW, REPORTS, VALIDATED, write_json


def validation_config(params: dict[str, Any]) -> ValidationConfig:
    """params.validate, with clip.duration_s as the shortest acceptable clip at least: a clip
    shorter than one training window cannot fill one."""
    cfg = from_dict(ValidationConfig, params["validate"], "validate")
    return replace(cfg, min_duration_s=max(cfg.min_duration_s, clip_spec(params).duration_s))


def _fetch_rejected() -> pd.DataFrame | None:
    """What fetch refused without reading, when it wrote that file (every fetch source may)."""
    path = RAW / FETCH_REJECTED_NAME
    return read_manifest(path, RejectedManifest) if path.is_file() else None


def validate(params: dict[str, Any]) -> dict[str, Any]:
    cfg = validation_config(params)
    raw = read_manifest(RAW / MANIFEST_NAME, RawManifest)
    result = validate_clips(raw, RAW, cfg, _fetch_rejected())
    write_manifest(result.accepted, VALIDATED / "manifest.csv", validated_schema(cfg))
    write_manifest(result.rejected, VALIDATED / "rejected.csv", RejectedManifest)
    write_json(REPORTS / "validation.json", result.report)
    log = get_logger()
    log.info(
        "validate: %d accepted, %d rejected of %d",
        len(result.accepted),
        len(result.rejected),
        result.report["n_inputs"],
    )
    for row in result.rejected.itertuples():
        log.warning("rejected %s [%s]: %s", row.path, row.code, row.reason)
    with mlflow_run(params, "validate", {"validate": asdict(cfg)}):
        import mlflow

        mlflow.log_metrics(
            {
                "n_inputs": result.report["n_inputs"],
                "n_accepted": len(result.accepted),
                "n_rejected": len(result.rejected),
                "n_val": int((result.accepted["split"] == "val").sum()),
            }
        )
        mlflow.log_artifact(str(REPORTS / "validation.json"))
        mlflow.log_artifact(str(VALIDATED / "rejected.csv"))
    return result.report


if __name__ == "__main__":
    cli(validate)

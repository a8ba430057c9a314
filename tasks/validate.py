"""validate: probe every raw clip; accepted (with a train/val split) or rejected with a reason."""

from __future__ import annotations

from typing import Any

from jointdit.config import from_dict
from jointdit.data.manifest import (
    RawManifest,
    ValidationConfig,
    read_manifest,
    validated_schema,
    write_manifest,
)
from jointdit.data.validation import validate as validate_clips
from tasks.common import RAW, REPORTS, VALIDATED, cli, get_logger, mlflow_run, write_json


def validate(params: dict[str, Any]) -> dict[str, Any]:
    cfg = from_dict(ValidationConfig, params["validate"], "validate")
    raw = read_manifest(RAW / "manifest.csv", RawManifest)
    result = validate_clips(raw, RAW, cfg)
    VALIDATED.mkdir(parents=True, exist_ok=True)
    write_manifest(result.accepted, VALIDATED / "manifest.csv", validated_schema(cfg))
    tmp = VALIDATED / "rejected.csv.tmp"
    result.rejected.to_csv(tmp, index=False)
    tmp.replace(VALIDATED / "rejected.csv")
    write_json(REPORTS / "validation.json", result.report)
    log = get_logger()
    log.info(
        "validate: %d accepted, %d rejected of %d",
        len(result.accepted),
        len(result.rejected),
        len(raw),
    )
    for row in result.rejected.itertuples():
        log.warning("rejected %s [%s]: %s", row.path, row.code, row.reason)
    with mlflow_run(params, "validate", {"validate": params["validate"]}):
        import mlflow

        mlflow.log_metrics(
            {
                "n_inputs": len(raw),
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

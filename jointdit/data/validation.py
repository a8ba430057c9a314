"""The validate stage's library part: accept or reject every raw clip, with a reason.

Checks run cheapest first (path, file, checksum, duplicate, probe), then the probed properties
go through the pandera contract (`validated_schema`). pandera decides; Great Expectations only
reports, over every clip that could be probed, so the report describes the incoming data
including what was turned away.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from jointdit.data.manifest import (
    RawManifest,
    ValidatedManifest,
    ValidationConfig,
    resolve_inside,
    sha256_file,
    validated_schema,
)
from jointdit.data.media import MediaError, probe

REJECTED_COLUMNS = ["path", "code", "reason"]
PROBED_COLUMNS = [c for c in ValidatedManifest.to_schema().columns if c != "split"]


@dataclass
class ValidationResult:
    accepted: pd.DataFrame  # matches validated_schema(cfg), raw order
    rejected: pd.DataFrame  # REJECTED_COLUMNS, raw order
    report: dict[str, Any]  # JSON-serialisable


class _Rejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _probe_row(row: Any, raw_dir: Path, seen: dict[str, str]) -> dict[str, Any]:
    """Probed properties of one raw row, or _Rejected. Records the row's checksum in `seen`."""
    try:
        file = resolve_inside(raw_dir, row.path)
    except ValueError as err:
        raise _Rejected("path_escape", str(err)) from err
    if not file.is_file():
        raise _Rejected("missing_file", f"{row.path}: no such file under {raw_dir}")
    actual = sha256_file(file)
    if actual != row.sha256:
        raise _Rejected(
            "checksum_mismatch", f"{row.path}: sha256 is {actual}, the manifest says {row.sha256}"
        )
    if row.sha256 in seen:
        raise _Rejected("duplicate", f"{row.path}: same content as {seen[row.sha256]}")
    seen[row.sha256] = row.path
    try:
        info = probe(file)
    except MediaError as err:
        raise _Rejected(err.code, f"{row.path}: {err.message}") from err
    return {
        "path": row.path,
        "sha256": row.sha256,
        **asdict(info),
        "caption": row.caption,
        "events": row.events,
    }


def _schema_failures(table: pd.DataFrame, schema: pa.DataFrameSchema) -> dict[Any, str]:
    """Index label -> human reason, for each row of `table` that breaks `schema`."""
    try:
        schema.validate(table, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        if cases["index"].isna().any():
            # A failure that belongs to no row means the table itself is malformed: a bug here,
            # not a bad clip, so it must not be disguised as a rejection.
            raise RuntimeError(f"probed table breaks {schema.name} as a whole:\n{err}") from err
        reasons: dict[Any, list[str]] = {}
        for case in cases.itertuples(index=False):
            reasons.setdefault(case.index, []).append(
                f"{case.column} = {case.failure_case!r} fails {case.check}"
            )
        return {i: f"{table.at[i, 'path']}: " + "; ".join(r) for i, r in reasons.items()}
    return {}


def _split_key(path: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(paths: pd.Series, val_fraction: float, seed: int) -> pd.Series:
    """'train' or 'val' per clip, from a hash of its path (relative to the raw root) and the seed.

    Keyed by path, not content: regenerated synthetic clips are not byte-identical (x264 via
    PyAV differed in about 1 of 30 writes of the same frames), and a clip must not change sides
    when its file is rewritten. Each clip's side depends only on itself, so adding clips never
    moves existing ones. With two or more clips both sides are non-empty: the clip nearest the
    threshold is moved over.
    """
    keys = np.array([_split_key(s, seed) for s in paths], dtype=np.float64)
    split = np.where(keys < val_fraction, "val", "train").astype(object)
    if len(keys) >= 2:
        if not (split == "val").any():
            split[keys.argmin()] = "val"
        if not (split == "train").any():
            split[keys.argmax()] = "train"
    return pd.Series(split, index=paths.index, name="split", dtype=object)


def validate(raw: pd.DataFrame, raw_dir: Path, cfg: ValidationConfig) -> ValidationResult:
    """Accept or reject every row of a raw manifest; see the module docstring for the order.

    `raw` must match RawManifest (pandera's SchemaErrors otherwise): a malformed table is a
    fetch-stage bug, not a set of bad clips.
    """
    raw = RawManifest.validate(raw, lazy=True).reset_index(drop=True)
    raw_dir = Path(raw_dir)
    rejected: dict[int, dict[str, str]] = {}
    probed: dict[int, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for pos, row in enumerate(raw.itertuples(index=False)):
        try:
            probed[pos] = _probe_row(row, raw_dir, seen)
        except _Rejected as rej:
            rejected[pos] = {"path": row.path, "code": rej.code, "reason": rej.reason}

    table = pd.DataFrame.from_dict(probed, orient="index", columns=PROBED_COLUMNS)
    # astype: with nothing probed the column is empty and of object dtype, which `~` refuses.
    for pos in table.index[~table["has_audio"].astype(bool)]:
        path = table.at[pos, "path"]
        rejected[pos] = {"path": path, "code": "no_audio", "reason": f"{path}: no audio stream"}
    candidates = table.drop(index=list(rejected), errors="ignore")

    schema = validated_schema(cfg)
    failures = _schema_failures(candidates, schema.remove_columns(["split"]))
    for pos, reason in failures.items():
        rejected[pos] = {"path": candidates.at[pos, "path"], "code": "schema", "reason": reason}
    accepted = candidates.drop(index=list(failures))
    accepted = accepted.assign(
        split=assign_split(accepted["path"], cfg.val_fraction, cfg.split_seed)
    )
    accepted = schema.validate(accepted.sort_index().reset_index(drop=True))

    rejected_df = pd.DataFrame(
        [rejected[pos] for pos in sorted(rejected)], columns=REJECTED_COLUMNS
    )
    if sorted([*accepted["path"], *rejected_df["path"]]) != sorted(raw["path"]):
        raise RuntimeError(
            f"{len(raw)} inputs but {len(accepted)} accepted + {len(rejected_df)} rejected"
        )

    report = {
        "n_inputs": len(raw),
        "n_accepted": len(accepted),
        "n_rejected": len(rejected_df),
        "n_train": int((accepted["split"] == "train").sum()),
        "n_val": int((accepted["split"] == "val").sum()),
        "rejected_by_code": dict(sorted(Counter(rejected_df["code"]).items())),
        "gx": gx_report(table, cfg),
    }
    return ValidationResult(accepted=accepted, rejected=rejected_df, report=report)


def _jsonable(value: Any) -> Any:
    """GX results hold numpy scalars and NaN; turn them into strict-JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def gx_report(table: pd.DataFrame, cfg: ValidationConfig) -> dict[str, Any]:
    """Run the Great Expectations suite over a probed table; a JSON-serialisable summary.

    The expectations mirror the pandera thresholds, so over accepted clips they all pass and
    over probed inputs they show how much of the incoming data breaks each one.
    """
    # Imported here: GX takes seconds to import and only this report needs it.
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        ),
    )
    batch = (
        context.data_sources.add_pandas("validate")
        .add_dataframe_asset("probed")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": table})
    )
    ex = gx.expectations
    suite = gx.ExpectationSuite(
        name="clips",
        expectations=[
            ex.ExpectColumnValuesToBeBetween(
                column="fps", min_value=cfg.min_fps, max_value=cfg.max_fps
            ),
            ex.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width),
            ex.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height),
            ex.ExpectColumnValuesToBeBetween(column="duration_s", min_value=cfg.min_duration_s),
            ex.ExpectColumnValuesToBeBetween(column="sample_rate", min_value=cfg.min_sample_rate),
            ex.ExpectColumnValuesToBeInSet(column="has_audio", value_set=[True]),
            ex.ExpectColumnValuesToNotBeNull(column="caption"),
        ],
    )
    result = batch.validate(suite, result_format="SUMMARY")

    expectations = []
    for r in result.results:
        kwargs = dict(r.expectation_config.kwargs)
        summary = r.result or {}
        expectations.append(
            {
                "type": r.expectation_config.type,
                "column": kwargs.pop("column", None),
                "success": bool(r.success),
                "kwargs": {k: v for k, v in kwargs.items() if k != "batch_id"},
                "element_count": summary.get("element_count"),
                "unexpected_count": summary.get("unexpected_count"),
                "unexpected_percent": summary.get("unexpected_percent"),
                "partial_unexpected_list": summary.get("partial_unexpected_list", []),
                "exception": (r.exception_info or {}).get("exception_message"),
            }
        )
    return _jsonable(
        {
            "success": bool(result.success),
            "n_rows": len(table),
            "statistics": dict(result.statistics),
            "expectations": expectations,
        }
    )

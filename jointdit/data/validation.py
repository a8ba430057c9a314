"""The validate stage's library part: accept or reject every raw clip, with a reason.

Checks run cheapest first: path, file, checksum, duplicate, probe (demuxes, decodes a frame),
then the content checks (audio present, long enough, not silent: the only one that decodes
audio, and only a few bounded excerpts), then the probed properties go through the pandera
contract (`validated_schema`). Every rejection has a machine-readable code and a reason that
names the file, and accepted + rejected is checked to be exactly the inputs (the raw manifest
plus what fetch refused). pandera decides; Great Expectations only reports, over every clip
that could be probed, so the report describes the incoming data including what was turned away.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pandera.pandas as pa

from jointdit.data.manifest import (
    RawManifest,
    RejectedManifest,
    ValidatedManifest,
    ValidationConfig,
    rejected_frame,
    resolve_inside,
    sha256_file,
    validated_schema,
)
from jointdit.data.media import MediaError, probe

PROBED_COLUMNS = [c for c in ValidatedManifest.to_schema().columns if c != "split"]
# Measured for the report and the silence check, not part of the validated contract.
MEASURED_COLUMNS = ["loudness_dbfs", "loudness_s"]
# Digital silence has no finite level; a floor far below any threshold keeps reports strict JSON.
SILENCE_FLOOR_DBFS = -120.0


@dataclass
class ValidationResult:
    accepted: pd.DataFrame  # matches validated_schema(cfg), raw order
    rejected: pd.DataFrame  # RejectedManifest: refused at fetch first, then raw order
    report: dict[str, Any]  # JSON-serialisable


@dataclass(frozen=True)
class Loudness:
    dbfs: float  # RMS level of the loudest excerpt, dB relative to full scale
    seconds: float  # audio decoded to measure it (bounded by the excerpts, whatever the length)


class _Rejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def excerpt_windows(
    duration_s: float, excerpts: int, excerpt_s: float
) -> list[tuple[float, float]]:
    """(start, length) in seconds of the excerpts whose loudness stands for the clip's.

    A clip no longer than all excerpts together is measured whole; a longer one at `excerpts`
    windows spread evenly from its start to its end, so the cost does not grow with its length.
    """
    if duration_s <= excerpts * excerpt_s:
        return [(0.0, duration_s)]
    starts = np.linspace(0.0, duration_s - excerpt_s, excerpts)
    return [(float(start), excerpt_s) for start in starts]


def _excerpt_energy(
    container: av.container.InputContainer, stream: av.AudioStream, start: float, length: float
) -> tuple[float, int, float]:
    """(sum of squared samples, sample count, seconds decoded) of `length` s from `start` on."""
    # Planar float whatever the decoder's sample format, so every codec's samples are in [-1, 1].
    resampler = av.AudioResampler(format="fltp")
    energy, count, decoded, taken = 0.0, 0, 0.0, 0.0
    for packet in container.demux(stream):
        for frame in packet.decode():
            seconds = frame.samples / frame.sample_rate
            decoded += seconds
            if frame.time is not None and frame.time + seconds <= start:
                continue  # a seek lands on or before the excerpt's start
            for out in resampler.resample(frame):
                samples = out.to_ndarray().astype(np.float64)
                energy += float(np.square(samples).sum())
                count += samples.size
            taken += seconds
            if taken >= length:
                return energy, count, decoded
    return energy, count, decoded


def audio_loudness(path: Path, duration_s: float, excerpts: int, excerpt_s: float) -> Loudness:
    """The RMS level of the loudest excerpt of the first audio stream (see `excerpt_windows`).

    Only audio is decoded, and only the excerpts: a three-hour clip costs `excerpts *
    excerpt_s` seconds of audio, not three hours. The loudest excerpt, not the mean, decides,
    so a clip with sound in one part is not called silent.
    """
    levels, decoded = [], 0.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            # Timestamps need not start at 0 (MPEG-TS, cut recordings): excerpts are from the
            # stream's own start.
            origin = stream.start_time or 0
            for start, length in excerpt_windows(duration_s, excerpts, excerpt_s):
                if start > 0:
                    # Seek on the audio stream: its packets are all key frames, so the seek lands
                    # at the excerpt even when the video's key frames are minutes apart.
                    container.seek(origin + round(start / stream.time_base), stream=stream)
                at = float(origin * stream.time_base) + start
                energy, count, seconds = _excerpt_energy(container, stream, at, length)
                decoded += seconds
                if count:
                    levels.append(math.sqrt(energy / count))
    except av.FFmpegError as e:
        raise MediaError(Path(path), "decode_error", f"cannot decode the audio ({e})") from e
    loudest = max(levels, default=0.0)
    dbfs = 20.0 * math.log10(loudest) if loudest > 0 else -math.inf
    return Loudness(dbfs=max(dbfs, SILENCE_FLOOR_DBFS), seconds=decoded)


def _file_checks(row: Any, raw_dir: Path, seen: dict[str, str]) -> Path:
    """The row's file, after the checks that need no decoding. Records its checksum in `seen`."""
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
    return file


def _probe_row(row: Any, file: Path) -> dict[str, Any]:
    """Probed properties of one raw row (MediaError when it is not usable media)."""
    return {
        "path": row.path,
        "sha256": row.sha256,
        **asdict(probe(file)),
        "caption": row.caption,
        "events": row.events,
        "label": row.label,
    }


def _content_checks(record: dict[str, Any], file: Path, cfg: ValidationConfig) -> None:
    """Reject a probed clip without audio, too short for a training window, or silent.

    Fills the record's loudness columns when the silence check ran.
    """
    path = record["path"]
    if not record["has_audio"]:
        raise _Rejected("no_audio", f"{path}: no audio stream")
    if record["duration_s"] < cfg.min_duration_s:
        raise _Rejected(
            "too_short",
            f"{path}: {record['duration_s']:.3f} s long, shorter than the {cfg.min_duration_s} s "
            "minimum (validate.min_duration_s, at least clip.duration_s: one training window)",
        )
    loudness = audio_loudness(
        file, record["duration_s"], cfg.loudness_excerpts, cfg.loudness_excerpt_s
    )
    record.update(loudness_dbfs=loudness.dbfs, loudness_s=loudness.seconds)
    if loudness.dbfs < cfg.min_loudness_dbfs:
        raise _Rejected(
            "silent",
            f"{path}: audio is silent: its loudest excerpt is {loudness.dbfs:.1f} dBFS RMS, below "
            f"{cfg.min_loudness_dbfs} dBFS ({loudness.seconds:.1f} s of audio measured)",
        )


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


def _check_rows(
    raw: pd.DataFrame, raw_dir: Path, cfg: ValidationConfig
) -> tuple[pd.DataFrame, dict[int, dict[str, str]]]:
    """Every row through the file, probe and content checks.

    Returns the probed table (every row that could be probed, rejected later or not: the GX
    report describes them all) and the rejections by row position.
    """
    rejected: dict[int, dict[str, str]] = {}
    probed: dict[int, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for pos, row in enumerate(raw.itertuples(index=False)):
        try:
            file = _file_checks(row, raw_dir, seen)
            probed[pos] = _probe_row(row, file)
            _content_checks(probed[pos], file, cfg)
        except _Rejected as rej:
            rejected[pos] = {"path": row.path, "code": rej.code, "reason": rej.reason}
        except MediaError as err:
            rejected[pos] = {
                "path": row.path,
                "code": err.code,
                "reason": f"{row.path}: {err.message}",
            }
    columns = [*PROBED_COLUMNS, *MEASURED_COLUMNS]
    return pd.DataFrame.from_dict(probed, orient="index", columns=columns), rejected


def validate(
    raw: pd.DataFrame,
    raw_dir: Path,
    cfg: ValidationConfig,
    fetch_rejected: pd.DataFrame | None = None,
) -> ValidationResult:
    """Accept or reject every row of a raw manifest; see the module docstring for the order.

    `raw` must match RawManifest and `fetch_rejected` (inputs fetch refused without reading,
    reported first) RejectedManifest, pandera's SchemaErrors otherwise: a malformed table is a
    fetch-stage bug, not a set of bad clips.
    """
    raw = RawManifest.validate(raw, lazy=True).reset_index(drop=True)
    if "label" not in raw:
        raw = raw.assign(label="")
    refused = RejectedManifest.validate(
        rejected_frame([]) if fetch_rejected is None else fetch_rejected
    )
    table, rejected = _check_rows(raw, Path(raw_dir), cfg)
    candidates = table.drop(index=list(rejected), columns=MEASURED_COLUMNS, errors="ignore")

    schema = validated_schema(cfg)
    failures = _schema_failures(candidates, schema.remove_columns(["split"]))
    for pos, reason in failures.items():
        rejected[pos] = {"path": candidates.at[pos, "path"], "code": "schema", "reason": reason}
    accepted = candidates.drop(index=list(failures))
    accepted = accepted.assign(
        split=assign_split(accepted["path"], cfg.val_fraction, cfg.split_seed)
    )
    accepted = schema.validate(accepted.sort_index().reset_index(drop=True))

    rejected_df = pd.concat(
        [
            refused,
            rejected_frame([rejected[pos] for pos in sorted(rejected)]),
        ],
        ignore_index=True,
    )
    inputs = sorted([*raw["path"], *refused["path"]])
    if sorted([*accepted["path"], *rejected_df["path"]]) != inputs:
        raise RuntimeError(
            f"{len(inputs)} inputs but {len(accepted)} accepted + {len(rejected_df)} rejected"
        )

    report = {
        "n_inputs": len(inputs),
        "n_accepted": len(accepted),
        "n_rejected": len(rejected_df),
        "n_rejected_at_fetch": len(refused),
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

    `table` has PROBED_COLUMNS and MEASURED_COLUMNS (NaN where not measured). The expectations
    mirror the thresholds (frame rate, size, duration, sample rate, audio present and not
    silent) plus the share of captioned clips, so over accepted clips the thresholds all pass
    and over probed inputs they show how much of the incoming data breaks each one. `profile`
    adds the distributions a pass/fail summary hides.
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
            # Null (not measured: no audio, too short) rows are left out by GX.
            ex.ExpectColumnValuesToBeBetween(
                column="loudness_dbfs", min_value=cfg.min_loudness_dbfs
            ),
            ex.ExpectColumnValueLengthsToBeBetween(
                column="caption", min_value=1, mostly=cfg.min_caption_fraction
            ),
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
            "profile": _profile(table),
        }
    )


def _quantiles(values: pd.Series) -> dict[str, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return {}
    points = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "max": 1.0}
    return {name: float(values.quantile(q)) for name, q in points.items()}


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def _profile(table: pd.DataFrame) -> dict[str, Any]:
    """What the probed inputs look like: duration, frame and sample rates, loudness, captions."""
    return {
        "duration_s": {
            **_quantiles(table["duration_s"]),
            "total": float(table["duration_s"].sum()),
        },
        "fps": _counts(table["fps"]),
        "sample_rate": _counts(table["sample_rate"][table["has_audio"].astype(bool)]),
        "channels": _counts(table["channels"][table["has_audio"].astype(bool)]),
        "loudness_dbfs": _quantiles(table["loudness_dbfs"]),
        "caption_fraction": float((table["caption"] != "").mean()) if len(table) else None,
        "labels": _counts(table["label"][table["label"] != ""]),
    }

"""Manifest contracts: the pandera schemas every stage reads and writes, and safe file helpers.

A manifest is a CSV table with one row per clip. The raw manifest (fetch stage) lists files and
their checksums; the validated manifest (validate stage) adds the probed media properties and
the train/val split; the window table (cache stage) has one row per training window of a clip.
All are validated on read and on write, so a stage never consumes a table that breaks the
contract.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from jointdit.atomic import atomic_path

SPLITS = ("train", "val")

# Read as text whatever they look like: a hex digest can be all digits and a caption "1.0";
# pandas would otherwise turn them into numbers (and empty cells into NaN).
TEXT_COLUMNS = ("path", "sha256", "caption", "events", "source", "split", "label", "code", "reason")

_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest file does not match its schema; the message names the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class ValidationConfig:
    """Acceptance thresholds for the validate stage (the `validate` slice of params.yaml)."""

    min_duration_s: float = 1.0
    min_fps: float = 4.0
    max_fps: float = 120.0
    min_width: int = 16
    min_height: int = 16
    min_sample_rate: int = 8000
    val_fraction: float = 0.2
    split_seed: int = 0
    # Silence: the RMS level of the loudest of `loudness_excerpts` excerpts of
    # `loudness_excerpt_s` seconds, spread over the clip (a long clip is never decoded whole).
    min_loudness_dbfs: float = -60.0
    loudness_excerpts: int = 4
    loudness_excerpt_s: float = 1.0
    # Report only (Great Expectations): the share of clips that should have a caption.
    min_caption_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.loudness_excerpts < 1 or self.loudness_excerpt_s <= 0:
            raise ValueError("loudness_excerpts must be >= 1 and loudness_excerpt_s positive")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large clips never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sealed_digest(config: dict[str, Any], own: str) -> str:
    """SHA-256 of a JSON config less its own digest, `config["sha256"][own]`: stored there, it
    seals the config and the digests of the files beside it, so a hand edit of either shows."""
    digests = {k: v for k, v in config["sha256"].items() if k != own}
    content = {**config, "sha256": digests}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`; refuse anything that lands outside it.

    Manifests are inputs too: a row must not be able to point the pipeline at arbitrary files
    through an absolute path, `..` segments or a symlink that leaves the root.
    """
    if Path(relative).is_absolute():
        raise ValueError(f"{relative!r} is an absolute path; manifest paths are relative to {root}")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"{relative!r} resolves to {target}, outside {base}")
    return target


def _is_event_list(value: str) -> bool:
    if value == "":
        return True
    try:
        times = json.loads(value)
    except json.JSONDecodeError:
        return False
    return isinstance(times, list) and all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
        for t in times
    )


class RawManifest(pa.DataFrameModel):
    """What the fetch stage promises: files, their checksums and what is known about them."""

    path: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")
    size_bytes: Series[int] = pa.Field(ge=0)
    caption: Series[str]
    events: Series[str]
    source: Series[str]
    # The class a folder source takes from sub-folder names; optional so that manifests written
    # before it existed still read.
    label: Series[str] | None

    @pa.check("events", element_wise=True, name="json_list_of_times")
    def _events_are_times(cls, value: str) -> bool:
        return _is_event_list(value)

    class Config:
        name = "RawManifest"
        strict = True
        coerce = True


class ValidatedManifest(pa.DataFrameModel):
    """What the validate stage promises, minus the params-dependent thresholds.

    Readers that do not know the thresholds (the cache stage) validate against this class;
    the validate stage itself uses `validated_schema(cfg)`, which adds them.
    """

    path: Series[str] = pa.Field(unique=True, str_length={"min_value": 1})
    sha256: Series[str] = pa.Field(unique=True, str_matches=r"^[0-9a-f]{64}$")
    duration_s: Series[float] = pa.Field(gt=0)
    fps: Series[float] = pa.Field(gt=0)
    width: Series[int] = pa.Field(ge=1)
    height: Series[int] = pa.Field(ge=1)
    sample_rate: Series[int] = pa.Field(gt=0)
    channels: Series[int] = pa.Field(ge=1)
    has_audio: Series[bool] = pa.Field(isin=[True])
    caption: Series[str]
    events: Series[str]
    label: Series[str] | None
    split: Series[str] = pa.Field(isin=list(SPLITS))

    @pa.check("events", element_wise=True, name="json_list_of_times")
    def _events_are_times(cls, value: str) -> bool:
        return _is_event_list(value)

    class Config:
        name = "ValidatedManifest"
        strict = True
        coerce = True


class WindowManifest(ValidatedManifest):
    """What the cache stage trains on: one row per window of an accepted clip.

    A window is its clip's validated row (so its split is the clip's: windows of one clip never
    straddle train and val) plus its index within the clip and its start time; `events` are the
    window's own, in seconds from its start.
    """

    path: Series[str] = pa.Field(str_length={"min_value": 1})
    sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")
    window: Series[int] = pa.Field(ge=0)
    start_s: Series[float] = pa.Field(ge=0)

    @pa.dataframe_check(name="window_inside_clip")
    def _inside(cls, df: pd.DataFrame) -> Series[bool]:
        return df["start_s"] < df["duration_s"]

    @pa.dataframe_check(name="one_split_per_clip")
    def _one_split(cls, df: pd.DataFrame) -> Series[bool]:
        return df.groupby("path")["split"].transform("nunique") == 1

    class Config:
        name = "WindowManifest"
        strict = True
        coerce = True
        unique = ("path", "window")


class RejectedManifest(pa.DataFrameModel):
    """Inputs turned away: a machine-readable code and a human reason that names the file.

    Written by validate (data/validated/rejected.csv) and by fetch for what it refuses before
    reading a byte (data/raw/fetch_rejected.csv, merged into validate's table).
    """

    path: Series[str] = pa.Field(str_length={"min_value": 1})
    code: Series[str] = pa.Field(str_matches=r"^[a-z][a-z0-9_]*$")
    reason: Series[str] = pa.Field(str_length={"min_value": 1})

    class Config:
        name = "RejectedManifest"
        strict = True
        coerce = True


def rejected_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    """Rejected inputs (path, code, reason) as a RejectedManifest table, empty or not."""
    return pd.DataFrame(rows, columns=list(RejectedManifest.to_schema().columns))


def validated_schema(cfg: ValidationConfig) -> pa.DataFrameSchema:
    """ValidatedManifest tightened with the thresholds from params."""
    base = ValidatedManifest.to_schema()
    tighter = {
        "duration_s": pa.Check.ge(cfg.min_duration_s),
        "fps": pa.Check.in_range(cfg.min_fps, cfg.max_fps),
        "width": pa.Check.ge(cfg.min_width),
        "height": pa.Check.ge(cfg.min_height),
        "sample_rate": pa.Check.ge(cfg.min_sample_rate),
    }
    return base.update_columns(
        {name: {"checks": [*base.columns[name].checks, check]} for name, check in tighter.items()}
    )


Schema = pa.DataFrameSchema | type[pa.DataFrameModel]


def _as_schema(schema: Schema) -> pa.DataFrameSchema:
    return schema if isinstance(schema, pa.DataFrameSchema) else schema.to_schema()


def _check(df: pd.DataFrame, path: Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    try:
        return schema.validate(df, lazy=True)
    except (pa.errors.SchemaErrors, pa.errors.SchemaError) as err:
        raise ManifestError(path, f"does not match {schema.name}:\n{err}") from err


def read_manifest(path: Path, schema: Schema = RawManifest) -> pd.DataFrame:
    """Read a manifest CSV and validate it (coercing dtypes) against `schema`."""
    df = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str), keep_default_na=False)
    return _check(df, Path(path), _as_schema(schema))


def write_manifest(df: pd.DataFrame, path: Path, schema: Schema = RawManifest) -> None:
    """Validate `df` against `schema` and write it as CSV, atomically.

    Columns are written in schema order so that manifests diff cleanly under DVC/git; an optional
    column the table lacks is left out.
    """
    path = Path(path)
    resolved = _as_schema(schema)
    checked = _check(df, path, resolved)
    checked = checked[[c for c in resolved.columns if c in checked.columns]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        checked.to_csv(f, index=False)

"""The fetch stage's library part: put clips under a raw directory and list them.

Every file a folder holds is an input, whatever its name, except the captions (a `<stem>.txt`
beside another file of that stem, `captions.csv` at the root). Each input is either copied
(checksummed as it is written) and listed in the raw manifest, or refused with a code and a
reason naming it, in `fetch_rejected.csv`, which validate reports with its own rejections. What
fetch refuses is what is not a video file by its content (`media.check_video_file`: FFmpeg
does not read it, or reads a picture, text, subtitles or sound only; nothing is decoded), and a
path that leads outside the source folder (a symlink, a `captions.csv` row), which is never
read. Whether a video file is a usable clip (complete, decodable, long enough, with sound) is
the validate stage's question.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from jointdit.atomic import atomic_path
from jointdit.data.manifest import (
    RawManifest,
    RejectedManifest,
    rejected_frame,
    resolve_inside,
    sha256_file,
    write_manifest,
)
from jointdit.data.media import MediaError, check_video_file, write_clip
from jointdit.data.synthetic import SyntheticConfig, make_clip

CLIPS_DIR = "clips"
MANIFEST_NAME = "manifest.csv"
FETCH_REJECTED_NAME = "fetch_rejected.csv"
CAPTIONS_CSV = "captions.csv"
SIDECAR_SUFFIX = ".txt"

_CHUNK = 1 << 20


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    """Raw-manifest rows as a table, for every source."""
    # An explicit column list keeps the schema's columns even when no file was found; most
    # sources know no class, so the label defaults to empty.
    return pd.DataFrame(
        [{"label": "", **row} for row in rows], columns=list(RawManifest.to_schema().columns)
    )


@dataclass(frozen=True)
class Fetched:
    """What a fetch produced: the raw manifest and the inputs it refused without reading."""

    manifest: pd.DataFrame  # RawManifest rows
    rejected: pd.DataFrame = field(default_factory=lambda: rejected_frame([]))  # RejectedManifest


def fetch_synthetic(cfg: SyntheticConfig, raw_dir: Path) -> pd.DataFrame:
    """Render `cfg.num_clips` synthetic clips into raw_dir/clips/ and return their manifest rows.

    Clips are a pure function of (cfg, index), so re-running regenerates the same content.
    """
    clips_dir = Path(raw_dir) / CLIPS_DIR
    clips_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cfg.num_clips):
        clip = make_clip(cfg, i)
        target = clips_dir / f"synthetic_{i:05d}.mp4"
        write_clip(target, clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
        rows.append(
            {
                "path": f"{CLIPS_DIR}/{target.name}",
                "sha256": sha256_file(target),
                "size_bytes": target.stat().st_size,
                "caption": clip.caption,
                "events": json.dumps([impact.time_s for impact in clip.impacts]),
                "source": "synthetic",
            }
        )
    return manifest_frame(rows)


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy src to dst atomically (temp file, then rename) and return the copy's SHA-256.

    Hashing the bytes as they are written means the checksum describes the copy, in one read.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def _read_captions_csv(src_dir: Path) -> list[tuple[str, str]]:
    """(path as written, caption) rows of src_dir/captions.csv; none when there is no such file.

    A file without `path` and `caption` columns, or naming a path twice, is an error: silently
    ignoring it would train on missing or arbitrary captions.
    """
    csv = src_dir / CAPTIONS_CSV
    if not csv.is_file():
        return []
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"path", "caption"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv}: needs columns path, caption; {sorted(missing)} missing")
    repeated = sorted(set(table["path"][table["path"].duplicated()]))
    if repeated:
        raise ValueError(f"{csv}: paths listed more than once: {repeated}")
    return list(zip(table["path"], table["caption"].str.strip(), strict=True))


def _label(relative: Path) -> str:
    """The clip's class: the name of the folder holding it, empty for a clip at the root.

    The immediate parent rather than the top folder, so `root/<class>/x.mp4` and
    `root/train/<class>/x.mp4` (AVSync15, Landscape) both give the class.
    """
    return relative.parent.name


def _caption(own: str | None, listed: str, label: str, label_captions: bool) -> str:
    """The sidecar's caption, else the captions.csv one; an empty caption becomes
    "a video of <label>" (underscores read as spaces) when label_captions is on."""
    caption = own or listed
    if not caption and label and label_captions:
        caption = f"a video of {label.replace('_', ' ')}"
    return caption


def _sidecars(files: list[Path]) -> set[Path]:
    """The caption sidecars among files: a `<stem>.txt` beside another file of that stem."""
    stems = {(f.parent, f.stem) for f in files if f.suffix != SIDECAR_SUFFIX}
    return {f for f in files if f.suffix == SIDECAR_SUFFIX and (f.parent, f.stem) in stems}


def fetch_folder(src_dir: Path, raw_dir: Path, label_captions: bool = True) -> Fetched:
    """Copy every video file under src_dir (recursively) into raw_dir/clips/, keeping its
    relative path; return the manifest rows and the refused inputs.

    Every file is an input but the captions: a sidecar `<stem>.txt` next to a file, else a row
    of `captions.csv` at the root (columns path, caption; paths relative to src_dir). A video
    file is one FFmpeg reads as a container with a moving picture (`check_video_file`), decided
    by content, never by the name; any other file is refused with the code that says why
    (`empty_file`, `unreadable`, `still_image`, `no_video`). The `label` column is the name of
    the sub-folder a clip sits in, and with `label_captions` a clip without a caption is
    captioned "a video of <label>". A file, sidecar or captions.csv row whose path resolves
    outside src_dir (symlink, `..`, absolute path) is never read: it is refused as
    `path_escape` (a refused sidecar leaves its clip uncaptioned by it); a captions.csv row
    naming no video file is refused as `missing_file`.
    """
    src_dir = Path(src_dir)
    clips_dir = Path(raw_dir) / CLIPS_DIR
    refused: list[dict[str, str]] = []

    def inside(relative: str, where: str = "") -> Path | None:
        try:
            return resolve_inside(src_dir, relative)
        except ValueError as err:
            refused.append({"path": relative, "code": "path_escape", "reason": f"{where}{err}"})
            return None

    listed: dict[Path, tuple[str, str]] = {}  # resolved file -> (path as written, caption)
    for number, (relative, caption) in enumerate(_read_captions_csv(src_dir), start=1):
        target = inside(relative, f"{CAPTIONS_CSV} row {number}: ")
        if target is not None:
            listed[target] = (relative, caption)
    files = sorted(p for p in src_dir.rglob("*") if p.is_file())
    sidecars = _sidecars(files)
    rows = []
    for src in files:
        if src == src_dir / CAPTIONS_CSV or src in sidecars:
            continue
        relative = src.relative_to(src_dir)
        resolved = inside(relative.as_posix())
        if resolved is None:
            continue
        try:
            check_video_file(resolved)
        except MediaError as err:
            reason = f"{relative}: {err.message}"
            refused.append({"path": relative.as_posix(), "code": err.code, "reason": reason})
            listed.pop(resolved, None)  # its caption row goes with it
            continue
        sidecar = src.with_suffix(SIDECAR_SUFFIX)
        own = None
        if sidecar.is_file() and inside(sidecar.relative_to(src_dir).as_posix()) is not None:
            own = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        target = clips_dir / relative
        label = _label(relative)
        rows.append(
            {
                "path": f"{CLIPS_DIR}/{relative.as_posix()}",
                "sha256": _copy_hashed(src, target),
                "size_bytes": target.stat().st_size,
                "caption": _caption(own, listed.pop(resolved, ("", ""))[1], label, label_captions),
                "events": "",
                "source": "folder",
                "label": label,
            }
        )
    for relative, _ in listed.values():
        reason = f"{CAPTIONS_CSV} names {relative!r}, which is not a file in {src_dir}"
        refused.append({"path": relative, "code": "missing_file", "reason": reason})
    return Fetched(manifest=manifest_frame(rows), rejected=rejected_frame(refused))


def write_raw(df: pd.DataFrame, raw_dir: Path, rejected: pd.DataFrame | None = None) -> Path:
    """Write the raw manifest to raw_dir/manifest.csv and the refused inputs to
    raw_dir/fetch_rejected.csv (both schema-checked, atomic); return the manifest's path.

    The rejected file is written even when empty, so none from an earlier fetch lingers.
    """
    raw_dir = Path(raw_dir)
    write_manifest(
        rejected_frame([]) if rejected is None else rejected,
        raw_dir / FETCH_REJECTED_NAME,
        RejectedManifest,
    )
    path = raw_dir / MANIFEST_NAME
    write_manifest(df, path, RawManifest)
    return path

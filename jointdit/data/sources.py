"""The fetch stage's library part: put clips under a raw directory and list them.

Fetching only copies and checksums. Whether a file is usable media is the validate stage's
question, so every matching file is listed here, broken or not, and validate accepts or rejects
each one with a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from jointdit.data.manifest import RawManifest, sha256_file, write_manifest
from jointdit.data.media import write_clip
from jointdit.data.synthetic import SyntheticConfig, make_clip

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
CLIPS_DIR = "clips"
MANIFEST_NAME = "manifest.csv"

_CHUNK = 1 << 20


def _rows(rows: list[dict]) -> pd.DataFrame:
    # An explicit column list keeps the schema's columns even when no file was found.
    return pd.DataFrame(rows, columns=list(RawManifest.to_schema().columns))


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
    return _rows(rows)


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy src to dst atomically (temp file, then rename) and return the copy's SHA-256.

    Hashing the bytes as they are written means the checksum describes the copy, in one read.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                fout.write(chunk)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def fetch_folder(
    src_dir: Path, raw_dir: Path, extensions: Iterable[str] = VIDEO_EXTENSIONS
) -> pd.DataFrame:
    """Copy every video file under src_dir (recursively) into raw_dir/clips/, keeping its
    relative path, and return the manifest rows.

    Matching is on the extension, case-insensitively; files are not opened as media here. A
    caption comes from a sidecar `<stem>.txt` next to the clip when there is one.
    """
    src_dir = Path(src_dir)
    clips_dir = Path(raw_dir) / CLIPS_DIR
    wanted = {ext.lower() for ext in extensions}
    sources = sorted(p for p in src_dir.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    rows = []
    for src in sources:
        relative = src.relative_to(src_dir)
        target = clips_dir / relative
        sha256 = _copy_hashed(src, target)
        sidecar = src.with_suffix(".txt")
        caption = (
            sidecar.read_text(encoding="utf-8", errors="replace").strip()
            if sidecar.is_file()
            else ""
        )
        rows.append(
            {
                "path": f"{CLIPS_DIR}/{relative.as_posix()}",
                "sha256": sha256,
                "size_bytes": target.stat().st_size,
                "caption": caption,
                "events": "",
                "source": "folder",
            }
        )
    return _rows(rows)


def write_raw(df: pd.DataFrame, raw_dir: Path) -> Path:
    """Write the raw manifest to raw_dir/manifest.csv (schema-checked, atomic); return its path."""
    path = Path(raw_dir) / MANIFEST_NAME
    write_manifest(df, path, RawManifest)
    return path

"""fetch: bring raw clips into data/raw/ with a manifest (synthetic or a local folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jointdit.config import from_dict
from jointdit.data.sources import fetch_folder, fetch_synthetic, write_raw
from jointdit.data.synthetic import SyntheticConfig
from tasks.common import RAW, cli, get_logger


def fetch(params: dict[str, Any]) -> Path:
    """Write data/raw/clips/* and data/raw/manifest.csv for params.data.source."""
    data = params["data"]
    log = get_logger()
    if data["source"] == "synthetic":
        df = fetch_synthetic(from_dict(SyntheticConfig, data["synthetic"], "data.synthetic"), RAW)
    elif data["source"] == "folder":
        if not data.get("folder"):
            raise ValueError("params.yaml: data.source is 'folder' but data.folder is not set")
        df = fetch_folder(Path(data["folder"]), RAW)
    else:
        raise ValueError(f"params.yaml: unknown data.source {data['source']!r} (synthetic, folder)")
    manifest = write_raw(df, RAW)
    log.info("fetch: %d clips from %s -> %s", len(df), data["source"], manifest)
    return manifest


if __name__ == "__main__":
    cli(fetch)

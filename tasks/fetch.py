"""fetch: bring raw clips into data/raw/ with a manifest (synthetic, a local folder, URLs).

Inputs refused at fetch (paths leading outside the folder, downloads that fail or do not match
their checksum) go to data/raw/fetch_rejected.csv, which validate merges into its rejected
table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jointdit.config import from_dict
from jointdit.data.download import DownloadConfig, fetch_urls
from jointdit.data.sources import Fetched, fetch_folder, fetch_synthetic, write_raw
from jointdit.data.synthetic import SyntheticConfig
from tasks.logs import get_logger
from tasks.params import cli
from tasks.paths import RAW


def _fetched(data: dict[str, Any]) -> Fetched:
    if data["source"] == "synthetic":
        cfg = from_dict(SyntheticConfig, data["synthetic"], "data.synthetic")
        return Fetched(manifest=fetch_synthetic(cfg, RAW))
    if data["source"] == "folder":
        if not data.get("folder"):
            raise ValueError("params.yaml: data.source is 'folder' but data.folder is not set")
        return fetch_folder(
            Path(data["folder"]), RAW, label_captions=data.get("label_captions", True)
        )
    if data["source"] == "urls":
        if not data.get("urls"):
            raise ValueError("params.yaml: data.source is 'urls' but data.urls is not set")
        cfg = from_dict(DownloadConfig, data.get("download"), "data.download")
        return Fetched(*fetch_urls(Path(data["urls"]), RAW, cfg))
    raise ValueError(
        f"params.yaml: unknown data.source {data['source']!r} (synthetic, folder, urls)"
    )


def fetch(params: dict[str, Any]) -> Path:
    """Write data/raw/clips/*, data/raw/manifest.csv and data/raw/fetch_rejected.csv for
    params.data.source."""
    log = get_logger()
    fetched = _fetched(params["data"])
    manifest = write_raw(fetched.manifest, RAW, fetched.rejected)
    log.info(
        "fetch: %d clips from %s -> %s", len(fetched.manifest), params["data"]["source"], manifest
    )
    for row in fetched.rejected.itertuples():
        log.warning("refused %s [%s]: %s", row.path, row.code, row.reason)
    return manifest


if __name__ == "__main__":
    cli(fetch)

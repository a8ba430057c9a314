"""The fetch stage's `urls` source: download clips listed in a CSV of `url, sha256[, caption]`.

Downloads are meant to survive flaky servers and never leave a wrong file behind:

- Each file streams into a hidden partial file next to its final name and is renamed into place
  only once its SHA-256 matches, so the final name never holds a partial or wrong file.
- Transient failures (timeouts, dropped connections, 5xx, 429, bodies cut short) are retried with
  exponential backoff, resuming the partial file with an HTTP Range request. Permanent ones (other
  4xx, a wrong checksum, a file over the size cap, a non-http URL) fail at once.
- One bad row does not stop a fetch: it is rejected with a machine-readable code, like the
  validate stage's rejections, and the other rows go on.

Only the standard library's urllib is used, so the pipeline needs no HTTP client dependency.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from itertools import chain, count
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
from tqdm.auto import tqdm

from jointdit.data.manifest import rejected_frame, resolve_inside, sha256_file
from jointdit.data.sources import CLIPS_DIR, manifest_frame

SCHEMES = ("http", "https")
CSV_COLUMNS = ("url", "sha256", "caption")

_CHUNK = 1 << 20
_MAX_BACKOFF_S = 60.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Well under the 255-byte limit of common file systems, leaving room for a checksum prefix and
# the partial file's dot and suffix.
_MAX_NAME = 200


class DownloadError(Exception):
    """A download that failed. ``code`` is machine-readable; ``status`` is set for HTTP errors."""

    def __init__(self, url: str, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class DownloadConfig:
    """How hard a download tries, and what it accepts.

    ``retries`` counts the attempts after the first one; the wait before retry k (from 1) is
    ``backoff_s * 2**(k-1)``, at most a minute. ``timeout_s`` bounds the connection and each
    read, not the whole download.
    """

    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0
    max_bytes: int = 2 * 1024**3
    user_agent: str = "jointdit-fetch"

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.retries >= 0 and self.backoff_s >= 0):
            raise ValueError("DownloadConfig: need timeout_s > 0, retries >= 0, backoff_s >= 0")
        if self.max_bytes <= 0:
            raise ValueError("DownloadConfig: max_bytes must be positive")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib follows redirects to ftp:// too; a server must not be able to send us elsewhere
    # than where a URL in the CSV could.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            fp.close()
            raise DownloadError(req.full_url, "bad_url", f"redirect to {newurl!r} refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _retryable(err: DownloadError) -> bool:
    if err.code == "http_error":
        # 416 answers a Range past the end: the partial file was stale and is gone, start over.
        return err.status in (416, 429) or err.status >= 500
    return err.code in ("timeout", "connection_error", "truncated")


def _fetch_once(
    opener: urllib.request.OpenerDirector, url: str, part: Path, cfg: DownloadConfig
) -> bool:
    """One request, its body written to `part` or appended to it; True when it appended."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=cfg.timeout_s) as r:
            # Only a 206 continues the partial file; a server that ignores Range sends all of it.
            start = offset if r.status == 206 else 0
            length = r.headers.get("Content-Length", "")
            expected = start + int(length) if length.isdigit() else None
            if expected is not None and expected > cfg.max_bytes:
                raise DownloadError(url, "too_large", f"{expected} bytes, over {cfg.max_bytes}")
            size = start
            with open(part, "ab" if start else "wb") as f:
                while chunk := r.read(_CHUNK):
                    size += len(chunk)
                    if size > cfg.max_bytes:
                        raise DownloadError(url, "too_large", f"over {cfg.max_bytes} bytes")
                    f.write(chunk)
                # urllib returns a short body without complaint when the connection closes early.
                if expected is not None and size < expected:
                    raise DownloadError(url, "truncated", f"body ended at {size} of {expected}")
                # On disk before the rename can make it visible under the final name.
                f.flush()
                os.fsync(f.fileno())
            return start > 0
    except urllib.error.HTTPError as e:
        if e.code == 416:
            part.unlink(missing_ok=True)
        raise DownloadError(url, "http_error", f"HTTP {e.code} {e.reason}", e.code) from e
    except TimeoutError as e:
        raise DownloadError(url, "timeout", f"no data for {cfg.timeout_s} s") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise DownloadError(url, "timeout", f"no answer in {cfg.timeout_s} s") from e
        raise DownloadError(url, "connection_error", str(e.reason)) from e
    except http.client.IncompleteRead as e:
        raise DownloadError(url, "truncated", str(e)) from e
    except (ConnectionError, http.client.HTTPException) as e:
        raise DownloadError(url, "connection_error", repr(e)) from e


def download(url: str, target: Path, sha256: str, cfg: DownloadConfig) -> int:
    """Download `url` to `target` if its content has SHA-256 `sha256`; return its size in bytes.

    A partial file left by an interrupted run (`.<name>.part` beside `target`) is resumed. Any
    DownloadError leaves neither `target` (an earlier file there stays as it was) nor the partial
    file; other exceptions, such as a full disk or Ctrl-C, keep the partial file to resume.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise DownloadError(
            url, "bad_url", "only http:// and https:// URLs with a host are fetched"
        )
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    opener.addheaders = [("User-Agent", cfg.user_agent)]
    attempt = 0
    try:
        while True:
            try:
                resumed = _fetch_once(opener, url, part, cfg)
            except DownloadError as err:
                if attempt == cfg.retries or not _retryable(err):
                    raise
            else:
                actual = sha256_file(part)
                if actual == sha256:
                    size = part.stat().st_size
                    os.replace(part, target)
                    return size
                part.unlink()
                # A file joined from several responses may splice two versions of a file that
                # changed on the server (or a stale partial file): worth one more try from zero.
                # A file sent whole and wrong stays wrong.
                if attempt == cfg.retries or not resumed:
                    raise DownloadError(url, "checksum_mismatch", f"SHA-256 {actual}, not {sha256}")
            attempt += 1
            time.sleep(min(cfg.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S))
    except DownloadError:
        part.unlink(missing_ok=True)
        raise


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{path}: empty; expected a header url,sha256[,caption]") from e
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in CSV_COLUMNS[:2] if c not in table.columns]
    unknown = [c for c in table.columns if c not in CSV_COLUMNS]
    if missing or unknown:
        raise ValueError(
            f"{path}: columns must be url, sha256 and optionally caption; "
            f"missing {missing}, unknown {unknown}"
        )
    table = table.reindex(columns=list(CSV_COLUMNS), fill_value="")
    table = table.apply(lambda column: column.str.strip())
    # Row numbers count from 1 after the header. An empty URL would leave its rejection nameless.
    no_url = [i + 1 for i, url in enumerate(table["url"]) if not url]
    if no_url:
        raise ValueError(f"{path}: url is empty in data row(s) {no_url[:10]}")
    bad = [i + 1 for i, ok in enumerate(table["sha256"].str.fullmatch(_SHA256.pattern)) if not ok]
    if bad:
        raise ValueError(f"{path}: sha256 is not 64 lowercase hex digits in data row(s) {bad[:10]}")
    return table


def _clip_name(url: str, sha256: str, taken: set[str]) -> str:
    """The URL path's basename when it is a safe and unused file name, else a variant of it
    prefixed with the checksum (distinct per row: repeated checksums never get this far)."""
    basename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    safe = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", basename))
    # No leading dot: no hidden files, no clash with the partial files' names.
    safe = safe[-_MAX_NAME:].lstrip(".")
    prefixed = (f"{sha256[:8]}_{i}_" if i else f"{sha256[:8]}_" for i in count())
    candidates = chain(
        [safe] if safe and safe == basename else [],
        (prefix + (safe or "download") for prefix in prefixed),
    )
    # Case-insensitively unused, so names stay distinct on macOS and Windows file systems too.
    return next(name for name in candidates if name.casefold() not in taken)


def fetch_urls(
    csv_path: Path, raw_dir: Path, cfg: DownloadConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Download every row of a `url, sha256[, caption]` CSV into raw_dir/clips/.

    Returns (raw manifest rows of the files kept, rejected rows with columns path (the URL),
    code and reason). A file already in place with the right checksum is not downloaded again.
    A row whose checksum an earlier row already has is rejected as `duplicate`. Names depend on
    the CSV alone, not on which downloads succeed, so a re-run finds the files of the last one.
    """
    table = _read_csv(Path(csv_path))
    raw_dir = Path(raw_dir)
    kept: list[dict] = []
    rejected: list[dict] = []
    first_url: dict[str, str] = {}
    taken: set[str] = set()
    bar = tqdm(table.itertuples(index=False), total=len(table), desc="fetch", unit="file")
    for row in bar:
        try:
            if row.sha256 in first_url:
                raise DownloadError(row.url, "duplicate", f"same sha256 as {first_url[row.sha256]}")
            first_url[row.sha256] = row.url
            name = _clip_name(row.url, row.sha256, taken)
            taken.add(name.casefold())
            target = resolve_inside(raw_dir, f"{CLIPS_DIR}/{name}")
            if target.is_file() and sha256_file(target) == row.sha256:
                size = target.stat().st_size
            else:
                size = download(row.url, target, row.sha256, cfg)
        except DownloadError as err:
            rejected.append({"path": row.url, "code": err.code, "reason": str(err)})
            bar.set_postfix(rejected=len(rejected))
            continue
        kept.append(
            {
                "path": f"{CLIPS_DIR}/{name}",
                "sha256": row.sha256,
                "size_bytes": size,
                "caption": row.caption,
                "events": "",
                "source": "urls",
            }
        )
    return manifest_frame(kept), rejected_frame(rejected)

"""download.py against a real HTTP server on 127.0.0.1 that misbehaves on purpose, per path."""

import hashlib
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pandas as pd
import pytest

from jointdit.data import download as download_module
from jointdit.data.download import DownloadConfig, DownloadError, download, fetch_urls
from jointdit.data.manifest import RawManifest, RejectedManifest, sha256_file

CFG = DownloadConfig(timeout_s=5.0, retries=2, backoff_s=0.01, max_bytes=1 << 20)
FLAKY_FAILURES = 2
SLOW_S = 3.0
CUT_AT = 1000


def blob(path: str) -> bytes:
    """The content the server sends for a path: different for every path, the same every time."""
    return random.Random(path).randbytes(30_000)


def sha(path: str) -> str:
    return hashlib.sha256(blob(path)).hexdigest()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        route = urlsplit(self.path).path
        with server.lock:
            server.log.append(
                (self.path, self.headers.get("Range"), self.headers.get("User-Agent"))
            )
            n = sum(path == self.path for path, _, _ in server.log)  # this path's request number
        data = blob(route)
        if (route == "/flaky.mp4" and n <= FLAKY_FAILURES) or route == "/down.mp4":
            self.send_error(500)
        elif route == "/busy.mp4" and n == 1:
            self.send_error(429)
        elif route == "/missing.mp4":
            self.send_error(404)
        elif route == "/redirect.mp4":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:9/x.mp4")
            self.end_headers()
        elif route == "/slow.mp4":
            time.sleep(SLOW_S)
            self.send_body(data)
        elif route in ("/truncated.mp4", "/norange.mp4") and n == 1:
            self.send_body(data, cut=len(data) // 2)
        elif route == "/norange.mp4":
            self.send_body(data, ranges=False)
        elif route == "/cut-always.mp4":
            self.send_body(data, cut=CUT_AT)
        elif route == "/big.mp4":
            # The announced length alone must be refused: the body is short, not too large.
            self.send_body(bytes(2 * CFG.max_bytes), cut=CUT_AT)
        elif route == "/big-stream.mp4":
            self.send_body(bytes(2 * CFG.max_bytes), length=False)
        else:
            self.send_body(data)

    def send_body(self, data: bytes, ranges=True, cut=None, length=True):
        """Send data, from the Range start if asked and `ranges`; with `cut`, announce the full
        length but send only `cut` bytes and close the connection."""
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if ranges and match:
            start = int(match[1])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if length:
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str | None, str | None]] = []  # path, Range, User-Agent

    def handle_error(self, request, client_address):
        # Clients that time out or refuse a body hang up while a handler writes: expected here.
        pass

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each request for `path`, in order (None: no Range)."""
        with self.lock:
            return [r for p, r, _ in self.log if p == path]


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment must not stand between the client and 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield srv
    srv.shutdown()
    thread.join()
    srv.server_close()


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_download_writes_the_file_and_returns_its_size(server, tmp_path):
    target = tmp_path / "clips" / "a.mp4"
    size = download(server.url("/good.mp4"), target, sha("/good.mp4"), CFG)

    assert size == len(blob("/good.mp4"))
    assert target.read_bytes() == blob("/good.mp4")
    assert files_under(tmp_path) == ["clips/a.mp4"]  # no partial file left
    assert server.log == [("/good.mp4", None, "jointdit-fetch")]


@pytest.mark.parametrize(
    ("path", "requests"), [("/flaky.mp4", FLAKY_FAILURES + 1), ("/busy.mp4", 2)]
)
def test_5xx_and_429_are_retried_until_the_file_comes(server, tmp_path, path, requests):
    target = tmp_path / "a.mp4"
    download(server.url(path), target, sha(path), CFG)

    assert target.read_bytes() == blob(path)
    assert server.ranges(path) == [None] * requests


def test_persistent_5xx_fails_after_every_retry_with_capped_backoff(server, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(download_module.time, "sleep", sleeps.append)
    cfg = DownloadConfig(retries=3, backoff_s=0.01)
    with pytest.raises(DownloadError) as err:
        download(server.url("/down.mp4"), tmp_path / "a.mp4", sha("/down.mp4"), cfg)

    assert (err.value.code, err.value.status) == ("http_error", 500)
    assert len(server.ranges("/down.mp4")) == 1 + cfg.retries
    assert sleeps == [0.01, 0.02, 0.04]
    assert files_under(tmp_path) == []

    sleeps.clear()
    slow_cfg = DownloadConfig(retries=3, backoff_s=40.0)
    with pytest.raises(DownloadError):
        download(server.url("/down.mp4"), tmp_path / "a.mp4", sha("/down.mp4"), slow_cfg)
    assert sleeps == [40.0, 60.0, 60.0]


def test_client_errors_fail_without_retry(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(server.url("/missing.mp4"), tmp_path / "a.mp4", sha("/missing.mp4"), CFG)

    assert (err.value.code, err.value.status) == ("http_error", 404)
    assert len(server.ranges("/missing.mp4")) == 1


def test_a_silent_server_times_out(server, tmp_path):
    cfg = DownloadConfig(timeout_s=0.5, retries=1, backoff_s=0.01)
    began = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(server.url("/slow.mp4"), tmp_path / "a.mp4", sha("/slow.mp4"), cfg)

    assert err.value.code == "timeout"
    assert len(server.ranges("/slow.mp4")) == 2
    # Two waits of timeout_s, well before the server would have answered.
    assert time.monotonic() - began < SLOW_S - 0.5
    assert files_under(tmp_path) == []


def test_a_wrong_checksum_leaves_no_file_and_is_not_retried(server, tmp_path):
    target = tmp_path / "a.mp4"
    with pytest.raises(DownloadError) as err:
        download(server.url("/good.mp4"), target, sha("/other.mp4"), CFG)

    assert err.value.code == "checksum_mismatch"
    assert files_under(tmp_path) == []  # neither the final name nor the partial file
    assert len(server.ranges("/good.mp4")) == 1

    # An earlier file under the final name survives a failed download.
    target.write_bytes(b"earlier")
    with pytest.raises(DownloadError):
        download(server.url("/good.mp4"), target, sha("/other.mp4"), CFG)
    assert files_under(tmp_path) == ["a.mp4"]
    assert target.read_bytes() == b"earlier"


@pytest.mark.parametrize(
    "path",
    [
        "/truncated.mp4",  # a cut body, resumed from where it stopped (206)
        # a server ignoring Range: its 200 replaces the partial file instead of extending it
        "/norange.mp4",
    ],
)
def test_a_cut_body_is_fetched_again_with_a_range_request(server, tmp_path, path):
    target = tmp_path / "a.mp4"
    download(server.url(path), target, sha(path), CFG)

    assert target.read_bytes() == blob(path)
    half = len(blob(path)) // 2
    assert server.ranges(path) == [None, f"bytes={half}-"]


def test_bodies_cut_every_time_fail_as_truncated(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(server.url("/cut-always.mp4"), tmp_path / "a.mp4", sha("/cut-always.mp4"), CFG)

    assert err.value.code == "truncated"
    assert server.ranges("/cut-always.mp4") == [None, f"bytes={CUT_AT}-", f"bytes={2 * CUT_AT}-"]
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("leftover", "expected_ranges"),
    [
        (blob("/good.mp4")[:20_000], ["bytes=20000-"]),
        # Resumed but wrong: maybe a splice of two versions, so one more try from zero.
        (bytes(20_000), ["bytes=20000-", None]),
        # Longer than the file: the server answers 416, and the partial file is dropped.
        (blob("/good.mp4") + b"tail", ["bytes=30004-", None]),
    ],
    ids=["prefix", "garbage", "too-long"],
)
def test_a_partial_file_from_an_earlier_run(server, tmp_path, leftover, expected_ranges):
    target = tmp_path / "a.mp4"
    (tmp_path / ".a.mp4.part").write_bytes(leftover)
    download(server.url("/good.mp4"), target, sha("/good.mp4"), CFG)

    assert target.read_bytes() == blob("/good.mp4")
    assert server.ranges("/good.mp4") == expected_ranges
    assert files_under(tmp_path) == ["a.mp4"]


@pytest.mark.parametrize("path", ["/big.mp4", "/big-stream.mp4"], ids=["announced", "streamed"])
def test_files_over_the_size_cap_are_refused(server, tmp_path, path):
    with pytest.raises(DownloadError) as err:
        download(server.url(path), tmp_path / "a.mp4", sha(path), CFG)

    assert err.value.code == "too_large"
    assert len(server.ranges(path)) == 1
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/a.mp4", "http:///a.mp4", "not a url", ""]
)
def test_only_http_urls_are_fetched(tmp_path, url):
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "a.mp4", sha("/good.mp4"), CFG)

    assert err.value.code == "bad_url"
    assert files_under(tmp_path) == []


def test_redirects_away_from_http_are_refused(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(server.url("/redirect.mp4"), tmp_path / "a.mp4", sha("/redirect.mp4"), CFG)

    assert err.value.code == "bad_url"
    assert len(server.ranges("/redirect.mp4")) == 1


def test_an_unreachable_server_is_a_connection_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(DownloadError) as err:
        download(f"http://127.0.0.1:{port}/a.mp4", tmp_path / "a.mp4", sha("/a.mp4"), CFG)

    assert err.value.code == "connection_error"


@pytest.mark.parametrize(
    "kwargs", [{"timeout_s": 0}, {"retries": -1}, {"backoff_s": -1.0}, {"max_bytes": 0}]
)
def test_config_refuses_impossible_values(kwargs):
    with pytest.raises(ValueError):
        DownloadConfig(**kwargs)


def write_csv(path, rows, header="url,sha256,caption"):
    path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")
    return path


def test_fetch_urls_keeps_good_rows_and_rejects_the_rest_with_a_code(server, tmp_path):
    kept_paths = ["/good.mp4", "/flaky.mp4", "/truncated.mp4", "/norange.mp4"]
    rows = [(server.url(p), sha(p), f"caption of {p}") for p in kept_paths]
    expected_codes = {
        server.url("/down.mp4"): "http_error",
        server.url("/missing.mp4"): "http_error",
        server.url("/slow.mp4"): "timeout",
        server.url("/big.mp4"): "too_large",
        "file:///etc/passwd": "bad_url",
        server.url("/good.mp4?mirror"): "duplicate",
    }
    rows += [(url, sha(urlsplit(url).path), "") for url in expected_codes]
    rows.append((server.url("/wrong.mp4"), sha("/other.mp4"), ""))
    expected_codes[server.url("/wrong.mp4")] = "checksum_mismatch"
    csv = write_csv(tmp_path / "urls.csv", rows)
    raw_dir = tmp_path / "raw"
    cfg = DownloadConfig(timeout_s=0.5, retries=FLAKY_FAILURES, backoff_s=0.01, max_bytes=1 << 20)

    kept, rejected = fetch_urls(csv, raw_dir, cfg)

    assert len(kept) + len(rejected) == len(rows)
    assert dict(zip(rejected["path"], rejected["code"], strict=True)) == expected_codes
    assert all(row.path in row.reason for row in rejected.itertuples())
    RawManifest.validate(kept)
    RejectedManifest.validate(rejected)
    assert list(kept["sha256"]) == [sha(p) for p in kept_paths]
    assert list(kept["path"]) == [f"clips{p}" for p in kept_paths]
    assert list(kept["caption"]) == [f"caption of {p}" for p in kept_paths]
    assert set(kept["source"]) == {"urls"} and set(kept["events"]) == {""}
    for row in kept.itertuples():
        assert sha256_file(raw_dir / row.path) == row.sha256
        assert row.size_bytes == (raw_dir / row.path).stat().st_size
    assert files_under(raw_dir) == sorted(kept["path"])

    # A second fetch finds the kept files in place and asks the server for none of them.
    before = {p: len(server.ranges(p)) for p in kept_paths}
    kept_again, rejected_again = fetch_urls(csv, raw_dir, cfg)
    assert {p: len(server.ranges(p)) for p in kept_paths} == before
    assert kept_again.equals(kept)
    assert list(rejected_again["code"]) == list(rejected["code"])


def test_fetch_urls_names_stay_inside_raw_dir(server, tmp_path):
    paths = [
        "/trap/..",
        "/trap/%2e%2e",
        "/trap/..%2F..%2Fetc%2Fpasswd",
        "/trap/..%5C..%5Cevil.mp4",
        "/trap/.hidden.mp4",
        "/trap/",
        "/good.mp4",
        "/other/good.mp4",
        "/other/GOOD.mp4",
    ]
    csv = write_csv(tmp_path / "urls.csv", [(server.url(p), sha(p)) for p in paths], "url,sha256")
    raw_dir = tmp_path / "raw"

    kept, rejected = fetch_urls(csv, raw_dir, CFG)

    assert rejected.empty
    names = [path.removeprefix("clips/") for path in kept["path"]]
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name
        assert not name.startswith(".")
    # The first good.mp4 keeps its name; a name taken before, whatever its case, gets a prefix.
    assert names[6:] == [
        "good.mp4",
        f"{sha(paths[7])[:8]}_good.mp4",
        f"{sha(paths[8])[:8]}_GOOD.mp4",
    ]
    assert names[5] == f"{sha('/trap/')[:8]}_download"
    for path, row in zip(paths, kept.itertuples(), strict=True):
        assert (raw_dir / row.path).read_bytes() == blob(path)
    assert set(kept["caption"]) == {""}
    # Nothing was written anywhere but raw_dir/clips/.
    assert files_under(tmp_path) == sorted(["urls.csv", *(f"raw/{p}" for p in kept["path"])])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url,caption\nhttp://h/a.mp4,c\n", r"missing \['sha256'\]"),
        (f"url,sha256,captions\nhttp://h/a.mp4,{'0' * 64},c\n", r"unknown \['captions'\]"),
        (f"url,sha256\nhttp://h/a.mp4,{'0' * 64}\nhttp://h/b.mp4,{'A' * 64}\n", r"row\(s\) \[2\]"),
        ("url,sha256\nhttp://h/a.mp4,abc\n", "64 lowercase hex"),
        (
            f"url,sha256\nhttp://h/a.mp4,{'0' * 64}\n,{'1' * 64}\n",
            r"url is empty in data row\(s\) \[2\]",
        ),
        ("", "empty"),
    ],
    ids=["missing-column", "unknown-column", "uppercase-sha", "short-sha", "no-url", "empty-file"],
)
def test_fetch_urls_refuses_a_malformed_csv(tmp_path, text, message):
    csv = tmp_path / "urls.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        fetch_urls(csv, tmp_path / "raw", CFG)
    assert str(csv) in str(err.value)


def test_fetch_urls_of_a_header_only_csv_is_empty_and_valid(tmp_path):
    csv = tmp_path / "urls.csv"
    csv.write_text("url, sha256\n")
    kept, rejected = fetch_urls(csv, tmp_path / "raw", CFG)

    assert kept.empty and rejected.empty
    assert list(kept.columns) == list(RawManifest.to_schema().columns)
    assert list(rejected.columns) == ["path", "code", "reason"]
    RawManifest.validate(kept)
    RejectedManifest.validate(rejected)


def test_the_fetch_task_takes_a_url_list_from_params(server, tmp_path, monkeypatch):
    from tasks.fetch import fetch

    monkeypatch.chdir(tmp_path)  # the task writes data/raw/ under the working directory
    (tmp_path / "list.csv").write_text(
        "url,sha256,caption\n"
        f"{server.url('/good.mp4')},{sha('/good.mp4')},a good clip\n"
        f"{server.url('/missing.mp4')},{sha('/missing.mp4')},\n"
    )
    settings = {"timeout_s": 5.0, "retries": 0, "backoff_s": 0.01, "max_bytes": 1 << 20}
    fetch({"data": {"source": "urls", "urls": "list.csv", "download": settings}})

    manifest = pd.read_csv(tmp_path / "data/raw/manifest.csv")
    rejected = pd.read_csv(tmp_path / "data/raw/fetch_rejected.csv")
    assert list(manifest["caption"]) == ["a good clip"] and set(manifest["source"]) == {"urls"}
    assert list(rejected["code"]) == ["http_error"]
    assert (tmp_path / "data/raw" / manifest["path"][0]).read_bytes() == blob("/good.mp4")

"""MLflow: buffered metrics through a real tracking-server outage, and the provenance of a run
(resolved config, git commit, dvc.lock hashes, system metrics)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tasks.mlflow_runs import mlflow_run, provenance_tags
from tasks.tracking import MetricBuffer

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1:port over a SQLite file, in its own process group."""

    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300.0) -> None:
        command = [
            str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.db}",
            "--default-artifact-root", str(self.db.parent / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server not healthy after {timeout_s:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()[-5000:]

    def stop(self) -> None:
        """SIGKILL, as a crash: the server and its workers, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def fast_failing_client(monkeypatch):
    """MLflow's HTTP client retries a refused connection for minutes by default."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_metrics_survive_a_server_outage(tmp_path, fast_failing_client, caplog):
    from mlflow import MlflowClient

    server = Server(tmp_path / "m.db", free_port(), tmp_path / "server.log")
    server.start()
    try:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        spill = tmp_path / "unsent.jsonl"
        buffer = MetricBuffer(run_id, spill, client, flush_every=2, backoff_s=0.2, max_backoff_s=1)
        with caplog.at_level(logging.INFO, logger="jointdit"):
            for step in range(1, 5):
                buffer.log(step, {"loss": 1.0 / step, "lr": 0.1})
            wait_until(lambda: buffer.pending == 0)  # sent while the server is up

            server.stop()
            for step in range(5, 11):
                buffer.log(step, {"loss": 1.0 / step, "lr": 0.1})  # never raises, never blocks
            wait_until(lambda: buffer._failures >= 3)  # several retries failed meanwhile
            assert buffer.pending == 12
            warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING

            server.start()
            assert buffer.close() is None
        assert "reachable again" in caplog.text
        assert not spill.exists()
        history = client.get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in range(1, 11)]
        assert len(client.get_metric_history(run_id, "lr")) == 10
    finally:
        server.stop()


def test_metrics_that_cannot_be_sent_are_written_locally(tmp_path, fast_failing_client, caplog):
    from mlflow import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    spill = tmp_path / "reports" / "stage.unsent_metrics.jsonl"
    buffer = MetricBuffer("run123", spill, client, flush_every=1, backoff_s=0.01)
    for step in (1, 2, 3):
        buffer.log(step, {"loss": float(step)})
    with caplog.at_level(logging.ERROR, logger="jointdit"):
        assert buffer.close(attempts=2) == spill
    rows = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [(r["run_id"], r["key"], r["step"], r["value"]) for r in rows] == [
        ("run123", "loss", s, float(s)) for s in (1, 2, 3)
    ]
    assert all(isinstance(r["timestamp"], int) for r in rows)
    assert str(spill) in caplog.text and "3 metrics" in caplog.text


LOCK = """schema: '2.0'
stages:
  cache:
    cmd: python -m tasks.cache
    outs:
    - path: data/cache
      hash: md5
      md5: 6513fe37804ba82f5f84bbc90eee8f37.dir
      size: 10857059
      nfiles: 5
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.usefixtures("restore_tracking_uri")
def test_a_run_records_config_code_and_data_provenance(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # restored after
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text(LOCK)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "dvc.lock")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    head = git(tmp_path, "rev-parse", "HEAD")
    # absolute: MLflow caches a store per URI, so a relative one would reach another test's db
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = {
        "mlflow": {
            "tracking_uri": uri,
            "experiment": "x",
            "system_metrics_interval_s": 0.5,
        }
    }
    logged = {"stage_a": {"steps": 3, "trainable": ["blocks.*"]}, "flow": {"p_hold": 0.1}}
    with mlflow_run(params, "stage_a", logged) as run:
        time.sleep(2)  # a few system-metrics samples
    client = MlflowClient(uri)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["git_commit"] == head and tags["git_dirty"] == "false"
    assert tags["data_cache_md5"] == "6513fe37804ba82f5f84bbc90eee8f37.dir"
    assert tags["dvc_lock_sha256"] == hashlib.sha256(LOCK.encode()).hexdigest()
    config = Path(client.download_artifacts(run.info.run_id, "config/params.yaml", tmp_path))
    assert yaml.safe_load(config.read_text()) == logged
    metrics = client.get_run(run.info.run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)

    (tmp_path / "dvc.lock").write_text(LOCK + "\n")  # a tracked file changed: dirty
    assert provenance_tags(tmp_path)["git_dirty"] == "true"


def test_provenance_tags_are_absent_without_git_or_dvc_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no enclosing repo
    assert provenance_tags(tmp_path) == {}
    (tmp_path / "dvc.lock").write_text("stages: {}\n")  # a lock without the cache stage
    tags = provenance_tags(tmp_path)
    assert tags == {"dvc_lock_sha256": hashlib.sha256(b"stages: {}\n").hexdigest()}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert "git_commit" not in provenance_tags(tmp_path)

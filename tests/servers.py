"""Real servers on 127.0.0.1 for the tests: PostgreSQL, MLflow on it (or on SQLite), a Prefect
server and a process worker, each on a free port with its own temporary directory and log file.

A server that does not come up fails the test with the reason and the tail of its log: these
tests exist to show the servers work here, so they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from jointdit.checkpoint import save_checkpoint
from jointdit.model.jointdit import JointDiT
from tasks.encoding import codec_from
from tasks.model_config import model_config
from tests.conftest import randomize
from tests.tiny_project import tiny_params

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def pg_bin() -> Path:
    """The newest Debian PostgreSQL's binaries (the version follows the release)."""
    found = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    found = sorted(found, key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL is missing (no /usr/lib/postgresql/*/bin/initdb): run .ci/run")
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment's binaries first, one thread per process, analytics off."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def check(cmd: list[str], what: str, log: Path | None = None, **kwargs) -> str:
    """Run a command to completion; a failure fails the test with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        tail = f"\n--- {log} ---\n{log_tail(log)}" if log else ""
        pytest.fail(
            f"{what}: {' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}{tail}"
        )
    return proc.stdout


class Server:
    """A process started in its own session, its output in `log`; stopped with its children."""

    def __init__(self, name: str, cmd: list[str], log: Path, **kwargs) -> None:
        self.name, self.log = name, log
        self._out = open(log, "w")  # noqa: SIM115 (open for the server's lifetime)
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )

    def fail(self, reason: str) -> None:
        pytest.fail(f"{self.name}: {reason}\n--- {self.log} ---\n{log_tail(self.log)}")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.proc.poll() is not None:
                self.fail(f"exited with {self.proc.returncode} before {what}")
            if time.monotonic() > deadline:
                self.stop()
                self.fail(f"not {what} after {timeout_s:.0f} s")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill does: no shutdown of any kind."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def answers(url: str) -> bool:
    """True once `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# -- PostgreSQL and MLflow --------------------------------------------------------------------


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster on a free port with an empty database `mlflow`; its URL."""
    bin_dir = pg_bin()
    # not under pytest's private (0700) temp root: the `postgres` user must reach it
    root = Path(tempfile.mkdtemp(prefix="jointdit-pg-"))
    data, log = root / "data", root / "postgres.log"
    data.mkdir()
    if os.geteuid() == 0:
        root.chmod(0o755)
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        check(as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                           "-A", "trust", "--no-sync"]), "initdb")  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
        check(as_postgres([*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"]),
              "pg_ctl start", log)  # fmt: skip
        check(as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                           "-U", "postgres", "mlflow"]), "createdb", log)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres([*pg_ctl, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def start_mlflow(root: Path, port: int, backend: str) -> tuple[Server, str]:
    """`mlflow server` on `backend`, artifacts under `root`, up and answering; (server, URL)."""
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", backend,
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    log = root / "mlflow.log"
    server = Server("mlflow server", cmd, log, cwd=root, env=child_env())
    url = f"http://127.0.0.1:{port}"
    server.wait_until(lambda: answers(url + "/health"), "answering /health")
    return server, url


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on the PostgreSQL backend, artifacts in a local directory; its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the driver installed is psycopg2
    backend = postgres.replace("postgresql://", "postgresql+psycopg2://", 1)
    server, url = start_mlflow(root, free_port(), backend)
    try:
        yield url
    finally:
        server.stop()


# -- Prefect ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`prefect server start` with its own PREFECT_HOME (SQLite there); a client environment."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = child_env(PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    # the UI's API address (its default is port 4200, whatever port the server listens on), and
    # runs queued behind a deployment's concurrency limit retried every second, not every 30 s
    env.update(PREFECT_UI_API_URL=url, PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1")
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = Server("prefect server", cmd, home / "server.log", env=env)
    try:
        # a loaded machine has taken minutes to start it
        server.wait_until(lambda: answers(url + "/health"), "answering /api/health", 600)
        yield {**env, "PREFECT_API_URL": url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    finally:
        server.stop()


def start_worker(env: dict[str, str], pool: str, log: Path) -> Server:
    """A process worker on `pool`, up once the server has seen it."""
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    worker = Server("prefect worker", cmd, log, env=env)
    worker.wait_until(lambda: "started!" in log_tail(log, 100_000), "started")
    return worker


# -- a registered tiny model ------------------------------------------------------------------


def tiny_workspace(root: Path, primary: float = 0.5, params: dict | None = None) -> Path:
    """A workspace the `register` step accepts: params (default: tiny ones), a random Stage B
    checkpoint of their model, metrics. The tiny model's weights are all randomized (so its
    zero-initialised gates hide nothing); a model of given params keeps its own initialisation
    (randomizing a deep one makes its activations overflow to NaN).

    Stands in for `dvc repro` up to evaluate (what test_pipeline_e2e runs, minutes) when only
    the registry is under test.
    """
    tiny = params is None
    if tiny:
        params = tiny_params()
        params["sample"]["steps"] = 2
    (root / "models").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    torch.manual_seed(0)
    model = JointDiT(model_config(params, codec_from(params)))
    if tiny:
        randomize(model)
    save_checkpoint(root / "models" / "stage_b", model)
    gate = params["register"]["gate"]
    row = {gate["primary"]: primary, **dict.fromkeys(gate["guards"], 1.0)}
    metrics = {"default_system": "joint-jointcfg", "protocol": "p1",
               "systems": {"joint-jointcfg": row}}  # fmt: skip
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))
    return root


def register_cmd() -> list[str]:
    return [sys.executable, "-m", "tasks.register"]


def register_env(tracking_uri: str) -> dict[str, str]:
    """The real register step from this checkout, logging to `tracking_uri`."""
    return child_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=tracking_uri)

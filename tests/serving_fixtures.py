"""A tiny model registered by the real `register` step, shared by the serving tests (the served
model in-process and over HTTP, the demo, the CLI, the sample flow)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    BIN,
    Server,
    answers,
    child_env,
    free_port,
    register_cmd,
    register_env,
    tiny_workspace,
)
from tests.serving_inputs import png_bytes


class Registered:
    """A workspace whose mlflow.db holds `jointdit` version 1 as champion and candidate."""

    def __init__(self, root: Path, register_log: str) -> None:
        self.root = root
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.register_log = register_log
        self.image = root / "images" / "drawn.png"
        self.image.parent.mkdir()
        self.image.write_bytes(png_bytes())

    def model_dir(self) -> Path:
        """The registered version's files (loading them sets no global tracking URI)."""
        from mlflow import MlflowClient

        uri = MlflowClient(self.tracking_uri).get_model_version_download_uri("jointdit", "1")
        return Path(uri.removeprefix("file://"))

    def load(self) -> Any:
        import mlflow

        return mlflow.pyfunc.load_model(str(self.model_dir()))

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(MLFLOW_TRACKING_URI=self.tracking_uri, **extra)


@pytest.fixture(scope="session")
def registered(tmp_path_factory) -> Registered:
    root = tiny_workspace(tmp_path_factory.mktemp("served") / "ws")
    env = register_env(f"sqlite:///{root / 'mlflow.db'}")
    proc = subprocess.run(register_cmd(), cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"register failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return Registered(root, proc.stdout + proc.stderr)


@contextlib.contextmanager
def serving(name: str, cmd: list[str], log: Path, ready: str, **popen) -> Iterator[None]:
    """The server `cmd` runs until the block ends; the block starts once `ready` answers 200."""
    server = Server(name, cmd, log, **popen)
    try:
        server.wait_until(lambda: answers(ready), f"answering {ready}", timeout_s=600)
        yield
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_server(registered, tmp_path_factory) -> Iterator[str]:
    """`mlflow models serve` of the champion, 2 workers, image paths confined to images/."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/jointdit@champion",
           "--env-manager", "local", "--workers", "2", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    log = tmp_path_factory.mktemp("model-server") / "serve.log"
    env = registered.env(JOINTDIT_IMAGE_ROOT=str(registered.image.parent))
    url = f"http://127.0.0.1:{port}"
    with serving("mlflow models serve", cmd, log, url + "/ping", cwd=registered.root, env=env):
        yield url

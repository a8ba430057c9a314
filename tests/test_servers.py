"""The pipeline against real servers on 127.0.0.1, started here (see tests/servers.py):
MLflow on PostgreSQL registering and serving a model, and a Prefect server whose process
worker runs the `sample` deployment of prefect.yaml."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import av
import mlflow
import numpy as np
import pandas as pd
import psycopg2
from mlflow import MlflowClient
from PIL import Image

from jointdit.data.media import probe
from tests.servers import (
    BIN,
    check,
    deploy,
    register_cmd,
    register_env,
    start_worker,
    tiny_workspace,
)
from tests.test_pipeline_e2e import TINY_CLIP

pytest_plugins = ("tests.servers",)  # the server fixtures


def drawn_image(path):
    canvas = np.zeros((40, 40, 3), dtype=np.uint8)
    canvas[30:, :] = 128
    canvas[5:13, 16:24] = (230, 40, 40)
    Image.fromarray(canvas).save(path)
    return path


def test_mlflow_on_postgres_registers_and_serves_a_model(
    mlflow_server, postgres, tmp_path, monkeypatch
):
    started = time.monotonic()
    ws = tiny_workspace(tmp_path / "ws")
    check(register_cmd(), "register", cwd=ws, env=register_env(mlflow_server))
    record = json.loads((ws / "reports/registry.json").read_text())
    assert record["version"] == 1 and record["champion"] == 1 and record["promoted"]

    # the registry lives in PostgreSQL, not in some local fallback store
    with psycopg2.connect(postgres) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, version FROM model_versions")
        assert cur.fetchall() == [("jointdit", 1)]
        cur.execute("SELECT alias, version FROM registered_model_aliases ORDER BY alias")
        assert cur.fetchall() == [("candidate", 1), ("champion", 1)]

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias("jointdit", "champion")
    assert version.version == "1" and version.tags["av_align"] == "0.500000"
    # set_tracking_uri also exports $MLFLOW_TRACKING_URI (for subprocesses): setenv first, so
    # that monkeypatch puts the variable back as it was and later tests' steps log where
    # they mean to
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model("models:/jointdit@champion")
    finally:
        mlflow.set_tracking_uri(None)
    image = drawn_image(tmp_path / "drawn.png")
    request = pd.DataFrame([{"image": str(image), "seed": 1, "steps": 2}])
    out = model.predict(request, params={"output": "arrays"})[0]
    n_frames = round(TINY_CLIP["duration_s"] * TINY_CLIP["fps"])
    size = (TINY_CLIP["height"], TINY_CLIP["width"], 3)
    assert out["frames"].shape == (n_frames, *size) and out["frames"].dtype == np.uint8
    assert out["audio"].shape == (TINY_CLIP["sample_rate"],) and np.isfinite(out["audio"]).all()
    print(f"MLflow on PostgreSQL round trip: {time.monotonic() - started:.1f} s")


def test_prefect_worker_runs_the_sample_deployment(prefect_server, tmp_path):
    started = time.monotonic()
    env = prefect_server
    ws = tiny_workspace(tmp_path / "ws")
    tracking = f"sqlite:///{ws / 'mlflow.db'}"
    check(register_cmd(), "register", cwd=ws, env=register_env(tracking))
    # the flow logs its outputs to this experiment: keep them in the workspace, not the checkout
    MlflowClient(tracking).create_experiment("jointdit-samples", str(ws / "sample-runs"))

    prefect = str(BIN / "prefect")
    check([prefect, "work-pool", "create", "local", "--type", "process"], "pool", env=env)
    deploy(env, "sample-local")  # as prefect.yaml declares it; working directory: this checkout
    worker = start_worker(env, "local", tmp_path / "worker.log")
    try:
        params = {
            "image": str(drawn_image(tmp_path / "drawn.png")),
            "prompt": "a red ball",
            "seed": 2,
            "steps": 2,
            "tracking_uri": tracking,
            "out_dir": str(tmp_path / "outputs"),
        }
        proc = subprocess.run(
            [prefect, "deployment", "run", "sample/sample-local", "--params", json.dumps(params),
             "--watch", "--watch-interval", "2", "--watch-timeout", "300"],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout)
        assert run_id, f"no flow run id in:\n{proc.stdout}\n{proc.stderr}"
        state = subprocess.run(
            [sys.executable, "-c", STATE_SCRIPT, run_id.group(1)],
            capture_output=True, text=True, env=env, check=True,
        ).stdout.strip()  # fmt: skip
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert state == "COMPLETED", f"flow run {state}\n{proc.stdout}\n{log[-4000:]}"
    finally:
        worker.stop()
    video = tmp_path / "outputs" / "drawn_seed2.mp4"
    with av.open(str(video)) as container:
        streams = [s.type for s in container.streams]
    assert sorted(streams) == ["audio", "video"]
    info = probe(video)
    assert info.has_audio and info.fps == TINY_CLIP["fps"]
    assert (info.width, info.height) == (TINY_CLIP["width"], TINY_CLIP["height"])
    print(f"Prefect server + worker + sample deployment run: {time.monotonic() - started:.1f} s")


# the flow run's final state type, read from the server by a client of its own
STATE_SCRIPT = """
import sys
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    print(client.read_flow_run(sys.argv[1]).state.type.value)
"""

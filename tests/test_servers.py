"""The registry against a real server on 127.0.0.1, started here (see tests/servers.py): MLflow
on PostgreSQL registering and serving a model. (Prefect's server, CLI and UI: test_prefect.py.)"""

from __future__ import annotations

import json
import time

import mlflow
import numpy as np
import pandas as pd
import psycopg2
from mlflow import MlflowClient

from tests.servers import (
    check,
    register_cmd,
    register_env,
    tiny_workspace,
)
from tests.serving_inputs import drawn_image
from tests.tiny_project import TINY_CLIP, tiny_params

pytest_plugins = ("tests.servers",)  # the server fixtures


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
    primary = tiny_params()["register"]["gate"]["primary"]
    assert version.version == "1" and version.tags[primary] == "0.500000"
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

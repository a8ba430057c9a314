"""Faults production sees, each on the real code path: a cache step SIGKILLed mid-write, a
pipeline stage failing once, DVC's lock held by a `dvc repro` started by hand, the tracking
server killed during a stage's final upload, two registrations at once, a full disk under a
checkpoint, a model checkpoint edited by hand (resume checkpoints: tests/test_resume.py).

(A training run SIGKILLed and resumed: tests/test_resume.py.)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from prefect import flow
from safetensors.torch import load_file, save_file

from flows.pipeline import lock_holder, run_stage
from jointdit.checkpoint import load_checkpoint, save_checkpoint
from jointdit.data.manifest import ValidatedManifest, write_manifest
from jointdit.data.shards import shard_clips
from jointdit.model.jointdit import JointDiT
from tasks.params import load_params
from tests.conftest import TINY, randomize
from tests.raw_clips import make_raw
from tests.servers import (
    REPO,
    child_env,
    free_port,
    register_cmd,
    register_env,
    start_mlflow,
    tiny_workspace,
)
from tests.tiny_training import (
    TINY_TRAIN,
    Stop,
    assert_same_model,
    run_tiny,
    tiny_stage_workspace,
)

# -- SIGKILL during cache ---------------------------------------------------------------------

# The cache step as `python -m tasks.cache` runs it, each shard write held open 0.3 s between
# writing the temporary file and its sync + rename, so that the test can kill it inside a write.
SLOW_CACHE = """
import runpy, time
import jointdit.data.shards as shards
write = shards.save_file
def slow(*args, **kwargs):
    write(*args, **kwargs)
    time.sleep(0.3)
shards.save_file = slow
runpy.run_module("tasks.cache", run_name="__main__")
"""


def cache_workspace(root: Path) -> tuple[Path, int]:
    """Three 4 s clips (one in val) -> 9 windows, one per shard; (root, number of shards)."""
    root.mkdir()
    params = load_params(REPO / "params.yaml")
    params["torch_threads"] = 1
    params["clip"].update(duration_s=2.0, hop_s=1.0, max_windows_per_clip=8, width=16, height=16)
    params["codec"]["shard_size"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rows = make_raw(root, [4.0, 4.0, 4.0])
    rows[2]["split"] = "val"
    write_manifest(pd.DataFrame(rows), root / "data/validated/manifest.csv", ValidatedManifest)
    return root, 9


def cache_proc(ws: Path, slow: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SLOW_CACHE] if slow else [sys.executable, "-m", "tasks.cache"]
    env = child_env(PYTHONPATH=str(REPO))
    return subprocess.Popen(cmd, cwd=ws, env=env, stderr=subprocess.PIPE, text=True)


def test_cache_sigkilled_mid_write_leaves_no_partial_shard_and_reruns_identically(tmp_path):
    unbroken_ws, n_shards = cache_workspace(tmp_path / "unbroken")
    killed_ws, _ = cache_workspace(tmp_path / "killed")
    unbroken = cache_proc(unbroken_ws)
    killed = cache_proc(killed_ws, slow=True)
    cache = killed_ws / "data/cache"
    deadline = time.monotonic() + 120
    # kill once a shard is complete and the next one is being written
    while not (list(cache.glob("*.safetensors")) and list(cache.glob(".*.part"))):
        assert killed.poll() is None, f"cache exited early:\n{killed.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no shard written in 120 s"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    killed.stderr.close()

    assert list(cache.glob(".*.part"))  # the interrupted write's temporary file
    written = sorted(cache.glob("*.safetensors"))
    assert 0 < len(written) < n_shards and not (cache / "index.json").exists()
    for shard in written:  # under a final name only whole shards, each with its one window
        clips = shard_clips(shard)
        assert clips is not None and len(clips) == 1, shard
        assert load_file(shard)["video"].shape[0] == 1

    rerun = cache_proc(killed_ws)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    _, err = unbroken.communicate(timeout=300)
    assert unbroken.returncode == 0, err[-3000:]
    expected = unbroken_ws / "data/cache"
    # the same files (no leftover temporary either: the directory is a DVC output)
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in expected.iterdir())
    assert json.loads((cache / "index.json").read_text()) == json.loads(
        (expected / "index.json").read_text()
    )
    assert len(list(cache.glob("*.safetensors"))) == n_shards
    for shard in expected.glob("*.safetensors"):
        a, b = load_file(shard), load_file(cache / shard.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), shard.name
        assert shard_clips(shard) == shard_clips(cache / shard.name)


# -- a pipeline stage failing once ------------------------------------------------------------

FLAKY = """
from pathlib import Path
attempts = Path("attempts.log")
attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
if len(attempts.read_text()) == 1:
    raise SystemExit("flaky: the first attempt fails")
Path("out.txt").write_text("done")
"""


def test_a_stage_failing_once_is_retried_and_the_flow_completes(
    prefect_harness, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    (tmp_path / "flaky.py").write_text(FLAKY)
    stage = {"cmd": "python flaky.py", "deps": ["flaky.py"], "outs": ["out.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"flaky": stage}}))

    @flow
    def one_stage() -> str:
        # the pipeline's own task and retry count; no 5 s wait between the attempts here
        state = run_stage.with_options(retry_delay_seconds=0)("flaky", return_state=True)
        return str(state.state_details.task_run_id)

    state = one_stage(return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.result())
    assert task_run.state.is_completed() and task_run.run_count == 2
    assert (tmp_path / "attempts.log").read_text() == "xx"
    assert (tmp_path / "out.txt").read_text() == "done" and (tmp_path / "dvc.lock").is_file()


# -- DVC's lock held by a `dvc repro` started by hand -------------------------------------------

SLOW = "import pathlib, time; pathlib.Path('started').touch(); time.sleep(5)"


def test_a_pipeline_stage_waits_for_a_dvc_repro_started_by_hand_then_runs(
    prefect_harness, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    stages = {
        "by_hand": {"cmd": f'python -c "{SLOW}" && echo by-hand > by_hand.txt',
                    "outs": ["by_hand.txt"]},
        "flow": {"cmd": "echo flow > flow.txt", "outs": ["flow.txt"]},
    }  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env = child_env()
    by_hand = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "by_hand"], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():  # its stage runs from here on
        assert by_hand.poll() is None and time.monotonic() < deadline, by_hand.stderr.read()
        time.sleep(0.05)
    holder = lock_holder()
    assert holder is not None and f"pid {by_hand.pid} " in holder and "repro by_hand" in holder

    @flow
    def one_stage() -> None:
        run_stage("flow")

    state = one_stage(return_state=True)
    assert state.is_completed()
    assert by_hand.wait(timeout=60) == 0  # undisturbed
    # the flow's stage ran once the hand-started one had finished, and said why it waited
    done = {p: (tmp_path / f"{p}.txt").stat().st_mtime_ns for p in stages}
    assert done["flow"] >= done["by_hand"]
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    log = "\n".join(entry.message for entry in logs)
    assert f"DVC is busy here: pid {by_hand.pid} " in log, log
    assert "waits until it is released" in log
    assert lock_holder() is None


# -- the tracking server killed during a stage's final upload ----------------------------------

# The `experts` stage as DVC runs it (`python -m tasks.train experts`), its final upload held
# until the test says go: it touches `uploading`, then waits for a file `go`.
HELD_UPLOAD = """
import runpy, sys, time
from pathlib import Path
import mlflow
upload = mlflow.log_artifacts
def held(*args, **kwargs):
    Path("uploading").touch()
    while not Path("go").exists():
        time.sleep(0.05)
    return upload(*args, **kwargs)
mlflow.log_artifacts = held
sys.argv = ["tasks.train", "experts"]
runpy.run_module("tasks.train", run_name="__main__")
"""


def test_tracking_server_killed_during_the_final_upload_loses_neither_model_nor_checkpoints(
    tmp_path,
):
    ws = tmp_path / "ws"
    params = tiny_stage_workspace(ws)
    params["torch_threads"] = 1
    # 4 steps, checkpoints every 3: the step-4 checkpoint is the one written at the end
    params["experts"].update(checkpoint_every=3)
    root = tmp_path / "mlflow"
    root.mkdir()
    port, backend = free_port(), f"sqlite:///{root / 'mlflow.db'}"
    server, url = start_mlflow(root, port, backend)
    params["mlflow"] = {"tracking_uri": url, "experiment": "faults"}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    # MLflow's client would retry a refused connection for minutes; once is the point here
    env = child_env(
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=url,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    stage = subprocess.Popen(
        [sys.executable, "-c", HELD_UPLOAD], cwd=ws, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 600
        while not (ws / "uploading").exists():
            assert stage.poll() is None, f"the stage exited early:\n{stage.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the stage never reached its upload"
            time.sleep(0.1)
        server.kill()
        (ws / "go").touch()
        _, err = stage.communicate(timeout=300)
    finally:
        server.stop()
    assert stage.returncode != 0, err[-3000:]
    # the trained model is on disk and the resume checkpoints, the final step's included, kept
    trained = load_file(ws / "models/experts/model.safetensors")
    resume = ws / "models/.resume/experts"
    assert (resume / "step-00000004.json").is_file(), sorted(p.name for p in resume.iterdir())

    (ws / "models/experts/model.safetensors").unlink()  # as DVC does before it reruns a stage
    server, url = start_mlflow(root, port, backend)  # the server is back
    try:
        rerun = subprocess.run([sys.executable, "-m", "tasks.train", "experts"], cwd=ws, env=env,
                               capture_output=True, text=True, timeout=600)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("faults").experiment_id
        runs = client.search_runs([experiment], order_by=["attribute.start_time ASC"])
        # the first never learned it failed: the server was down when it ended
        assert [r.info.status for r in runs] == ["RUNNING", "FINISHED"]
        first, retry = (r.info.run_id for r in runs)
        # the retry resumed at the last step: it trained nothing, and uploaded the model
        # the first run's 4 steps: sent, or (the server gone at the end) spilled to a file
        spill = ws / "reports/experts.unsent_metrics.jsonl"
        spilled = [json.loads(r) for r in spill.read_text().splitlines()] if spill.exists() else []
        sent = client.get_metric_history(first, "train_loss")
        assert len(sent) + sum(r["key"] == "train_loss" for r in spilled) == 4
        assert client.get_metric_history(retry, "train_loss") == []
        assert "final_val_loss" in client.get_run(retry).data.metrics
        uploaded = {a.path for a in client.list_artifacts(retry, "checkpoint")}
        assert uploaded == {"checkpoint/model.safetensors", "checkpoint/config.json"}
    finally:
        server.stop()
    again = load_file(ws / "models/experts/model.safetensors")
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in again)
    assert not resume.exists()  # deleted only once the upload went through


# -- two registrations at once ----------------------------------------------------------------


# On a fresh store, unserialised runs both migrate the schema and one dies (seen 3 times in 3);
# the alias read-then-set race needs the two gates to interleave: repeated, and on a store
# that already exists.
@pytest.mark.parametrize("fresh_store", [True, True, False], ids=["fresh", "fresh2", "existing"])
def test_two_register_runs_at_once_keep_the_aliases_consistent(tmp_path, fresh_store):
    ws = tiny_workspace(tmp_path / "ws")
    tracking = f"sqlite:///{ws / 'mlflow.db'}"
    if not fresh_store:
        MlflowClient(tracking).search_experiments()  # creates the schema
    procs = [
        subprocess.Popen(
            register_cmd(), cwd=ws, env=register_env(tracking), stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]
    decisions = sorted(
        line.split("jointdit version ")[1] for log in logs for line in log.splitlines()
        if "register: jointdit version" in line
    )  # fmt: skip
    # one saw no champion and was promoted; the other was gated against it (equal numbers)
    assert [d.split(" ", 1)[1][:8] for d in decisions] in (
        ["promoted", "refused,"],
        ["refused,", "promoted"],
    ), decisions
    assert sum("first version" in d for d in decisions) == 1, decisions

    client = MlflowClient(tracking)
    versions = {int(v.version) for v in client.search_model_versions("name='jointdit'")}
    assert versions == {1, 2}
    champion = int(client.get_model_version_by_alias("jointdit", "champion").version)
    candidate = int(client.get_model_version_by_alias("jointdit", "candidate").version)
    registry = json.loads((ws / "reports/registry.json").read_text())
    assert (registry["champion"], registry["candidate"]) == (champion, candidate) == (1, 2)
    assert registry["version"] == 2 and not registry["promoted"]  # the later run's record


# -- a full disk under a checkpoint -----------------------------------------------------------


@pytest.mark.parametrize("failing", ["tensors", "json"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, failing
):
    cfg = dataclasses.replace(TINY_TRAIN, steps=6, checkpoint_every=3)
    unbroken, _ = run_tiny(None, cfg)
    with pytest.raises(Stop):
        run_tiny(tmp_path, cfg, stop_after=4)  # the step-3 checkpoint is on disk
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "tensors":
        monkeypatch.setattr(
            "jointdit.train_state.save_file",
            lambda tensors, name: full(Path(name), b"\0" * 4096),
        )
    else:
        real = Path.write_text
        monkeypatch.setattr(
            Path,
            "write_text",
            lambda self, text, *a, **k: full(self, text.encode())
            if self.name.startswith(".step-")
            else real(self, text, *a, **k),
        )
    with pytest.raises(OSError, match="No space left on device") as err:
        run_tiny(tmp_path, cfg)
    message = str(err.value)
    assert "step-00000006.json" in message and "step 3 is still the newest" in message
    assert err.value.errno == errno.ENOSPC
    # nothing of step 6 is left, the step-3 files are byte for byte what they were
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()

    logged: list[int] = []
    model, _ = run_tiny(tmp_path, cfg, log=lambda step, rec: logged.append(step))
    assert logged == [4, 5, 6]  # resumed from step 3
    assert_same_model(model, unbroken)


# -- a model checkpoint edited by hand --------------------------------------------------------


def test_hand_edited_model_checkpoints_are_refused(tmp_path):
    """Well-formed edits (other numbers, another setting) are caught by the checksums."""
    model = randomize(JointDiT(TINY))
    for case in ("weights", "config"):
        d = tmp_path / case
        save_checkpoint(d, model, {"stage": "b"})
        torch.testing.assert_close(load_checkpoint(d)[0].state_dict(), model.state_dict())
        if case == "weights":
            tensors = load_file(d / "model.safetensors")
            tensors["video_output.linear.bias"] += 1e-3
            save_file(tensors, d / "model.safetensors")
        else:  # same shapes, another computation
            config = json.loads((d / "config.json").read_text())
            config["model"]["heads"] = 1
            (d / "config.json").write_text(json.dumps(config))
        name = "model.safetensors" if case == "weights" else "config.json"
        with pytest.raises(ValueError, match=f"{d / name}: edited"):
            load_checkpoint(d)
    # a checkpoint from before the checksums still loads
    save_checkpoint(tmp_path / "old", model)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["sha256"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(tmp_path / "old")[1] == {}

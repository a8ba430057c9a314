"""DDP: two processes (torchrun, gloo on CPU) reach the weights of one process.

Also run as a script under torchrun (`python -m tests.test_ddp OUT GRAD_ACCUM [STOP_AFTER]`):
each rank trains the tiny model with resume checkpoints in OUT/resume and writes its final
weights to OUT/weights-<rank>.safetensors and every log call it gets to OUT/log-<rank>.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jointdit.distributed import process_group
from jointdit.flow import FlowConfig
from jointdit.model.jointdit import JointDiT
from jointdit.training import TrainConfig, train
from tasks.train import launch_command, train_stage
from tests.conftest import TINY, randomize, tiny_batch
from tests.tiny_training import tiny_stage_workspace

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
CFG = TrainConfig(
    steps=4, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=2, checkpoint_every=2,
    ema_decay=0.9,
)  # fmt: skip


class Stop(Exception):
    """Raised from rank 0's log callback: the run dies there, like a crash."""


def _train(cfg: TrainConfig, resume_dir: Path | None, log=lambda step, rec: None):
    torch.manual_seed(0)
    model = randomize(JointDiT(TINY))
    history = train(model, tiny_batch(), tiny_batch(), cfg, FlowConfig(), log, False, resume_dir)
    return model, history


def _launch(out: Path, grad_accums: str, stop_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2",
        "-m", "tests.test_ddp", str(out), grad_accums, str(stop_after),
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gradients train() leaves behind: its last step's, all-reduced and clipped."""
    return {n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}


def _logged(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = _launch(out, "1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_reach_the_weights_of_one(two_processes, grad_accum):
    out = two_processes / f"ga{grad_accum}"
    cfg = dataclasses.replace(CFG, grad_accum=grad_accum)

    # one step from the same start: the summed gradient is the single-process one
    single, _ = _train(dataclasses.replace(cfg, steps=1), None)
    grads = [load_file(str(out / f"grads-{rank}.safetensors")) for rank in (0, 1)]
    assert _max_abs_diff(grads[0], grads[1]) == 0.0
    grad_diff = _max_abs_diff(grads[0], _grads(single))
    scale = max(g.abs().max().item() for g in grads[0].values())
    print(f"grad_accum={grad_accum}: max |grad 2 processes - 1 process| = {grad_diff:.1e}")
    # float32 summation order alone: one process with grad_accum 2 instead of 1 moves these
    # (clipped) gradients by 3e-7. A wrong share or scale shows in grad_norm, checked below.
    assert grad_diff < 1e-5 * scale

    single, single_history = _train(cfg, None)
    rank0 = load_file(str(out / "weights-0.safetensors"))
    rank1 = load_file(str(out / "weights-1.safetensors"))
    # the ranks hold one model (EMA weights included: they are the final weights)
    assert _max_abs_diff(rank0, rank1) == 0.0
    diff = _max_abs_diff(rank0, single.state_dict())
    print(f"grad_accum={grad_accum}: max |weights 2 processes - 1 process| = {diff:.1e}")
    # AdamW's early updates are ~lr * sign(g): float summation-order noise in near-zero
    # gradient entries moves those weights by up to a few % of lr (a single process with
    # grad_accum 2 instead of 1 differs from itself by 9e-5 here); a bug is a whole lr
    assert diff < 0.1 * CFG.lr
    torch.manual_seed(0)
    start = randomize(JointDiT(TINY)).state_dict()
    assert _max_abs_diff(rank0, start) > CFG.lr  # the weights did move, by more than the noise

    # only rank 0 logs and checkpoints; its history is the single-process one
    assert not (out / "log-1.jsonl").exists()
    logged = _logged(out / "log-0.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert [r["step"] for r in logged if "val_loss" in r] == [2, 4]
    for ddp_record, record in zip(logged, single_history, strict=True):
        assert ddp_record.keys() == record.keys()
        for k in record:
            assert ddp_record[k] == pytest.approx(record[k], rel=1e-3), k
    assert logged[0]["train_loss"] == pytest.approx(single_history[0]["train_loss"], rel=1e-6)
    assert logged[0]["grad_norm"] == pytest.approx(single_history[0]["grad_norm"], rel=1e-6)
    assert sorted(p.name for p in (out / "resume").iterdir()) == [
        "step-00000002.json", "step-00000002.safetensors",
        "step-00000004.json", "step-00000004.safetensors",
    ]  # fmt: skip


def test_killed_two_process_run_resumes_to_the_unbroken_weights(two_processes, tmp_path):
    crashed = _launch(tmp_path, "2", stop_after=3)
    assert crashed.returncode != 0 and "stopped after step 3" in crashed.stderr
    assert not (tmp_path / "ga2" / "weights-0.safetensors").exists()
    resumed = _launch(tmp_path, "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # resumed from the checkpoint of step 2: rank 0 logs steps 3 and 4 again
    assert [r["step"] for r in _logged(tmp_path / "ga2" / "log-0.jsonl")] == [1, 2, 3, 3, 4]
    for rank in (0, 1):
        a = load_file(str(two_processes / "ga2" / f"weights-{rank}.safetensors"))
        b = load_file(str(tmp_path / "ga2" / f"weights-{rank}.safetensors"))
        assert _max_abs_diff(a, b) == 0.0


def test_the_launch_command_reruns_the_stage_under_torchrun():
    command = launch_command("stage_a", Path("/tmp/p.yaml"), 4)
    assert Path(command[0]).name == "torchrun" and Path(command[0]).is_file()
    assert command[1:] == [
        "--standalone", "--nproc_per_node=4", "-m", "tasks.train", "stage_a",
        "--params", "/tmp/p.yaml",
    ]  # fmt: skip


@pytest.mark.usefixtures("restore_tracking_uri")
def test_a_stage_with_two_processes_trains_the_one_process_model(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the torchrun processes import tasks.train
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = tiny_stage_workspace(tmp_path)
    # absolute: MLflow caches a store per URI, so a relative one would reach another test's db
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params["mlflow"]["tracking_uri"] = uri
    single = train_stage(params, "experts")
    single_weights = load_file("models/experts/model.safetensors")
    shutil.rmtree("models")

    report = train_stage({**params, "train_launch": {"nproc_per_node": 2}}, "experts")
    assert report.keys() == single.keys()
    assert report["val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)
    weights = load_file("models/experts/model.safetensors")
    diff = _max_abs_diff(weights, single_weights)
    print(f"experts stage: max |weights 2 processes - 1 process| = {diff:.1e}")
    assert diff < 0.1 * params["experts"]["lr"]
    assert not Path("models/.resume/experts").exists()
    # one MLflow run per stage run: rank 1 opened none
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert sorted(run.data.tags["world_size"] for run in runs) == ["1", "2"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]
        assert run.data.metrics["final_val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)


def main(root: Path, grad_accums: list[int], stop_after: int) -> None:
    torch.set_num_threads(1)
    with process_group() as place:
        assert place.world_size == 2
        for grad_accum in grad_accums:
            out = root / f"ga{grad_accum}"
            out.mkdir(parents=True, exist_ok=True)
            cfg = dataclasses.replace(CFG, grad_accum=grad_accum)

            def on_step(step: int, record: dict[str, float], out: Path = out) -> None:
                with open(out / f"log-{place.rank}.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if step == stop_after:
                    raise Stop(f"stopped after step {step}")

            if not stop_after:
                model, _ = _train(dataclasses.replace(cfg, steps=1), None)
                save_file(_grads(model), str(out / f"grads-{place.rank}.safetensors"))
            model, _ = _train(cfg, out / "resume", on_step)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(out / f"weights-{place.rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(k) for k in sys.argv[2].split(",")], int(sys.argv[3]))

"""Exact resume: a stopped or SIGKILLed run continues to the same weights as an unbroken one.

Also run as a script (`python -m tests.test_resume RESUME_DIR OUT [SLEEP_S]`) by the SIGKILL
test: it trains the tiny model with checkpoints and writes the final weights to OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from jointdit.model.jointdit import JointDiT
from jointdit.train_state import restore_state
from tests.conftest import TINY
from tests.tiny_training import TINY_TRAIN, Stop, assert_same_model, run_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unbroken() -> tuple[JointDiT, list[dict[str, float]]]:
    return run_tiny(None)


# before the first checkpoint, at one, just after and between checkpoints (every 3 steps)
@pytest.mark.parametrize(("crash_at", "resumed_at"), [(2, 0), (3, 3), (4, 3), (5, 3), (6, 6)])
def test_stopped_run_resumes_to_the_same_weights(tmp_path, unbroken, crash_at, resumed_at):
    with pytest.raises(Stop):
        run_tiny(tmp_path, stop_after=crash_at)
    logged: list[int] = []
    model, history = run_tiny(tmp_path, log=lambda step, rec: logged.append(step))
    assert logged == list(range(resumed_at + 1, TINY_TRAIN.steps + 1))
    assert_same_model(model, unbroken[0])  # EMA weights: they are the final model
    assert history == unbroken[1]


def test_checkpoint_holds_the_uninterrupted_optimizer_and_ema_state(tmp_path):
    """Checkpoints of a resumed run equal those of an unbroken run, tensor for tensor."""
    unbroken_dir, resumed_dir = tmp_path / "a", tmp_path / "b"
    run_tiny(unbroken_dir)
    with pytest.raises(Stop):
        run_tiny(resumed_dir, stop_after=4)
    run_tiny(resumed_dir)
    name = "step-00000006.safetensors"
    assert sorted(p.name for p in resumed_dir.iterdir()) == sorted(
        p.name for p in unbroken_dir.iterdir()
    )  # only the newest keep_checkpoints = 2
    a, b = load_file(unbroken_dir / name), load_file(resumed_dir / name)
    assert a.keys() == b.keys() and any(k.startswith("ema/") for k in a)
    assert any(k.endswith("/exp_avg_sq") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpointing_changes_nothing(tmp_path, unbroken):
    model, history = run_tiny(tmp_path)
    assert_same_model(model, unbroken[0])
    assert history == unbroken[1]


def _restore(directory: Path) -> tuple[int, list[dict[str, float]]] | None:
    model = JointDiT(TINY)
    opt = torch.optim.AdamW(model.parameters())
    return restore_state(directory, "k", model, {}, opt, torch.Generator())


def test_hand_edited_checkpoints_are_refused(tmp_path):
    cfg = dataclasses.replace(TINY_TRAIN, steps=3, ema_decay=0.0)
    run_tiny(tmp_path / "ok", cfg)
    src = tmp_path / "ok"
    # broken files, and well-formed ones with other numbers (caught by the checksums)
    for case in ("header", "shape", "json", "tensor value", "json value"):
        d = tmp_path / case
        d.mkdir()
        for p in src.iterdir():
            (d / p.name).write_bytes(p.read_bytes())
        weights, state = d / "step-00000003.safetensors", d / "step-00000003.json"
        if case == "header":
            weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header" + b"\0" * 64)
        elif case == "shape":
            tensors = load_file(weights)
            key = next(k for k in tensors if k.startswith("optim/") and tensors[k].dim() == 2)
            tensors[key] = torch.zeros(3, 3)
            save_file(tensors, weights)
        elif case == "tensor value":
            tensors = load_file(weights)
            tensors["model/video_output.linear.bias"] += 1e-3
            save_file(tensors, weights)
        elif case == "json value":
            meta = json.loads(state.read_text())
            meta["param_groups"][0]["lr"] *= 10
            state.write_text(json.dumps(meta))
        else:
            state.write_text(state.read_text()[:-20])
        with pytest.raises(ValueError, match="step-00000003") as err:
            run_tiny(d, cfg)
        assert ("not a readable" if case == "json" else "damaged") in str(err.value)
        if case.endswith("value"):
            assert "edited" in str(err.value)


def test_leftover_temporary_file_is_ignored_and_removed(tmp_path, unbroken):
    with pytest.raises(Stop):
        run_tiny(tmp_path, stop_after=4)
    # a run killed while writing the step-6 checkpoint leaves this behind
    part = tmp_path / ".step-00000006.json.0123abcd.part"
    part.write_text('{"step": 6, "trunc')
    model, _ = run_tiny(tmp_path)
    assert_same_model(model, unbroken[0])
    assert not part.exists()


def test_checkpoints_of_another_run_are_discarded(tmp_path):
    with pytest.raises(Stop):
        run_tiny(tmp_path, stop_after=4)
    logged: list[int] = []
    other = dataclasses.replace(TINY_TRAIN, lr=1e-3)
    run_tiny(tmp_path, other, log=lambda step, rec: logged.append(step))
    assert logged[0] == 1  # started over: a resumed lr=3e-3 run is not an lr=1e-3 run
    # the new run's own: every 3 steps and the last one, the newest two kept
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "step-00000006.json",
        "step-00000007.json",
    ]


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert _restore(tmp_path / "missing") is None


def test_gradient_accumulation_gives_the_same_update():
    """Two and four micro-batches of a batch of 4: the same steps as the whole batch at once."""
    cfg = dataclasses.replace(TINY_TRAIN, steps=3, ema_decay=0.0)
    whole, history = run_tiny(None, cfg)
    for accum in (2, 4):
        split, split_history = run_tiny(None, dataclasses.replace(cfg, grad_accum=accum))
        for (name, x), y in zip(
            whole.state_dict().items(), split.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
        for h, s in zip(history, split_history, strict=True):
            assert s["train_loss"] == pytest.approx(h["train_loss"], rel=1e-5)


def _script(resume: Path, out: Path, sleep_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.test_resume", str(resume), str(out), str(sleep_s)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    resume = tmp_path / "resume"
    unbroken = _script(tmp_path / "unbroken", tmp_path / "unbroken.safetensors", 0.0)
    killed = _script(resume, tmp_path / "never.safetensors", 0.3)
    deadline = time.monotonic() + 60
    while not list(resume.glob("step-*.json")):
        assert killed.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)
    time.sleep(0.1)  # somewhere in the steps after the checkpoint
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (tmp_path / "never.safetensors").exists()
    resumed = _script(resume, tmp_path / "resumed.safetensors", 0.0)
    assert resumed.wait(timeout=60) == 0 and unbroken.wait(timeout=60) == 0
    with safe_open(tmp_path / "resumed.safetensors", "pt") as f:
        assert int(f.metadata()["first_step"]) > 2  # it did resume, from step 2 or later
    a = load_file(tmp_path / "unbroken.safetensors")
    b = load_file(tmp_path / "resumed.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def main(resume: str, out: str, sleep_s: str) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cfg = dataclasses.replace(TINY_TRAIN, steps=12, checkpoint_every=2)
    logged: list[int] = []

    def on_step(step: int, record: dict[str, float]) -> None:
        logged.append(step)
        time.sleep(float(sleep_s))

    model, _ = run_tiny(Path(resume), cfg, log=on_step)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, out, {"first_step": str(logged[0])})


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The tiny project the end-to-end and server tests run: params that train in seconds, a folder
of clips in several states (good, silent, corrupt, empty), and a command runner that shows a
failing command's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from jointdit.data.media import write_clip
from jointdit.data.synthetic import SyntheticConfig, make_clip

REPO = Path(__file__).resolve().parent.parent
TINY_CLIP = {"duration_s": 1.0, "fps": 4.0, "width": 16, "height": 16, "sample_rate": 16000}


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["torch_threads"] = 1
    params["data"] = {
        "source": "folder",
        "folder": "incoming",
        "synthetic": params["data"]["synthetic"],
    }
    # split_seed 1 puts 2 of the 6 good clips in val (the split hashes paths; seed 0 puts 5)
    params["validate"].update(
        min_duration_s=0.5, min_width=8, min_height=8, val_fraction=0.34, split_seed=1
    )
    params["clip"] = dict(TINY_CLIP)
    params["codec"]["patch"]["griffin_lim_iters"] = 4
    params["model"].update(dim=32, depth=1, heads=2, text_vocab=64, text_len=6)
    for stage in ("experts", "stage_a", "stage_b"):
        params[stage].update(steps=4, batch_size=2, warmup_steps=1, eval_every=2)
    params["sample"]["steps"] = 2
    params["evaluate"].update(num_samples=2, num_media=1, num_sheets=1)
    return params


def make_folder(folder: Path) -> None:
    cfg = SyntheticConfig(duration_s=1.0, fps=4.0, width=16, height=16)
    folder.mkdir()
    for i in range(6):
        clip = make_clip(cfg, i)
        write_clip(folder / f"ball{i}.mp4", clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
        (folder / f"ball{i}.txt").write_text(clip.caption)
    silent = make_clip(cfg, 99)
    write_clip(folder / "no_audio.mp4", silent.frames, cfg.fps, None, cfg.sample_rate)
    (folder / "corrupt.mp4").write_bytes(os.urandom(4096))
    (folder / "empty.mp4").write_bytes(b"")


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc

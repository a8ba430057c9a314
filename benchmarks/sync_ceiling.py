"""How much of the audio's timing a network can learn from the video of a cache's clips.

The joint model must find, from the video alone, when a sound starts. This measures that part on
its own, outside the generative model: a small detector reads the clean video latents of the
training split and predicts, per audio token, whether the clean audio has an onset there (its
positive spectral flux). It is the frame sync's representation (per-position features, their
spatial moments per frame, convolutions over frames, interpolation to the audio tokens'
centres) with an onset logit on top. Its peaks on the validation clips are scored against the
simulator's impact times (the manifest's `events`) at the oracle's tolerance, half a video
frame. Real sound against its own video scores about 0.81 on the oracle: the gap between that
and this detector is what the data set leaves learnable at all.

    python benchmarks/sync_ceiling.py [--cache data/cache] [--steps 800] [--seeds 3]

A cache of more clips (e.g. `dvc exp run -S data.synthetic.num_clips=480 cache`, which runs the
pipeline up to the cache stage) shows what more data buys.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import find_peaks
from torch import Tensor, nn

from jointdit.data.shards import load_split
from jointdit.metrics.oracle import TOLERANCE_FRAMES
from jointdit.metrics.sync import onset_f1
from jointdit.model.jointdit import FrameSync, JointDiTConfig, _moment_basis

# normalised log-mel units: silence's flux is about 0.03, a knock's 0.3-0.8
FLUX_FLOOR, FLUX_SCALE = 0.1, 0.3


def onset_targets(audio: Tensor, patch_t: int) -> Tensor:
    """(B, tokens) in [0, 1]: the largest positive spectral flux among each token's mel frames."""
    flux = (audio[..., 1:] - audio[..., :-1]).clamp_min(0).mean((1, 2))
    flux = F.pad(flux, (1, -(flux.shape[-1] + 1) % patch_t))
    return ((flux.unflatten(-1, (-1, patch_t)).amax(-1) - FLUX_FLOOR) / FLUX_SCALE).clamp(0, 1)


class Detector(nn.Module):
    """`to_tokens`: the (frames, audio tokens) interpolation weights of the model's frame sync."""

    def __init__(
        self, cfg: JointDiTConfig, to_tokens: Tensor, features: int = 32, width: int = 128
    ):
        super().__init__()
        self.register_buffer("to_tokens", to_tokens)
        self.pixels = nn.Linear(cfg.video_channels, features)
        self.motion = nn.Conv1d(features * FrameSync.MOMENTS, width, 5, padding=2)
        self.mix = nn.Conv1d(width, width, 3, padding=1)
        self.out = nn.Conv1d(width, 1, 3, padding=1)

    def forward(self, video: Tensor) -> Tensor:
        h, w = video.shape[3], video.shape[4]
        f = F.gelu(self.pixels(video.flatten(3).transpose(2, 3)))
        # the model's basis sums to 1 over positions; scaled back so the moments are O(1)
        m = torch.einsum("btnf,nm->btfm", f, _moment_basis(h, w, video) * (h * w))
        x = F.gelu(self.mix(F.gelu(self.motion(m.flatten(2).transpose(1, 2)))))
        return self.out(x @ self.to_tokens)[:, 0]


def event_f1(probs: np.ndarray, clips: list[dict], cfg: JointDiTConfig) -> list[float]:
    """Per clip: F1 of the peaks above 0.3 against the clip's impact times."""
    token_s = cfg.audio_patch_t / cfg.audio_frame_rate
    scores = []
    for p, clip in zip(probs, clips, strict=True):
        peaks, _ = find_peaks(p, height=0.3)
        times = (peaks + 0.5) * token_s - 0.5 / cfg.audio_frame_rate
        events = np.array(json.loads(clip["events"] or "[]")) - clip["start_s"]
        events = events[(events >= 0) & (events < clip["duration_s"])]
        scores.append(onset_f1(times, events, TOLERANCE_FRAMES / cfg.video_fps)["f1"])
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, val = load_split(args.cache, "train"), load_split(args.cache, "val")
    cfg = JointDiTConfig(video_channels=train.batch.video.shape[2])
    targets = onset_targets(train.batch.audio, cfg.audio_patch_t)
    # the model's own frame-to-token weights; FrameSync is built only to compute them
    to_tokens = FrameSync(cfg)._frames_to_tokens(
        train.batch.video.shape[1], targets.shape[1], train.batch.video
    )
    print(f"{len(train.clips)} training clips, {len(val.clips)} validation clips, "
          f"{args.steps} steps of {args.batch}")
    means = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        det = Detector(cfg, to_tokens)
        opt = torch.optim.AdamW(det.parameters(), 1e-3)
        for _ in range(args.steps):
            idx = torch.randint(len(train.clips), (args.batch,))
            logits = det(train.batch.video[idx])
            loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            probs = torch.sigmoid(det(val.batch.video)).numpy()
        scores = event_f1(probs, val.clips, cfg)
        means.append(float(np.mean(scores)))
        se = np.std(scores, ddof=1) / np.sqrt(len(scores))
        print(f"seed {seed}: event F1 {means[-1]:.3f} ± {se:.3f} over {len(scores)} clips")
    print(f"mean over seeds: {np.mean(means):.3f} (seed-to-seed sd {np.std(means, ddof=1):.3f})")


if __name__ == "__main__":
    main()

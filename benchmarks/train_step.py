"""Training throughput of the default model (params.yaml) vs the machine's matmul peak.

Prints samples/s, FLOPs per step (torch's FlopCounterMode over forward + backward), achieved
FLOP/s and the fp32 matmul peak measured in the same run, for the plain step and with the
training switches (gradient checkpointing, bf16 autocast).

    python benchmarks/train_step.py [--batch 8] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from jointdit.flow import Batch, FlowConfig, flow_loss, sample_t
from jointdit.model.jointdit import JointDiT
from tasks.encoding import codec_from
from tasks.model_config import model_config
from tasks.params import load_params


def matmul_peak(device: str, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - t0)


def batch_for(params: dict, codec, size: int, device: str) -> Batch:
    clip = params["clip"]
    f = params["codec"]["patch"]["video_factor"]
    frames = round(clip["duration_s"] * clip["fps"])
    audio_frames = round(clip["duration_s"] * codec.audio_frame_rate)
    c, h, w = codec.video_channels, clip["height"] // f, clip["width"] // f
    return Batch(
        video=torch.randn(size, frames, c, h, w, device=device),
        audio=torch.randn(
            size, codec.audio_channels, codec.audio_bins, audio_frames, device=device
        ),
        image=torch.randn(size, c, h, w, device=device),
        text=torch.randint(
            1, params["model"]["text_vocab"], (size, params["model"]["text_len"]), device=device
        ),
    )


def run(model: JointDiT, batch: Batch, steps: int, bf16: bool) -> tuple[float, float]:
    """(seconds per step, FLOPs per step) of forward + backward + AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    device = batch.video.device.type

    def step() -> None:
        t_v, t_a = sample_t(len(batch), FlowConfig(), g)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = flow_loss(model, batch, t_v.to(device), t_a.to(device), g, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    params = load_params(args.params)
    codec = codec_from(params)
    cfg = model_config(params, codec)
    batch = batch_for(params, codec, args.batch, args.device)
    peak = matmul_peak(args.device)
    print(
        f"default model: {sum(p.numel() for p in JointDiT(cfg).parameters()) / 1e6:.2f} M "
        f"parameters, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"device {args.device}"
    )
    print(f"fp32 matmul peak (2048^3, this run): {peak / 1e9:.1f} GFLOP/s\n")
    print(
        f"{'variant':<22} {'s/step':>7} {'samples/s':>10} {'GFLOP/step':>11} "
        f"{'GFLOP/s':>8} {'of peak':>8}"
    )
    for name, checkpointing, bf16 in (
        ("plain", False, False),
        ("grad checkpointing", True, False),
        ("bf16 autocast", False, True),
    ):
        torch.manual_seed(0)
        model = JointDiT(cfg).to(args.device).train()
        model.grad_checkpointing = checkpointing
        seconds, flops = run(model, batch, args.steps, bf16)
        print(
            f"{name:<22} {seconds:7.3f} {args.batch / seconds:10.1f} {flops / 1e9:11.1f} "
            f"{flops / seconds / 1e9:8.1f} {flops / seconds / peak:8.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()

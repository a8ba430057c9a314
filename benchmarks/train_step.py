"""Training throughput of the default model vs the machine's matmul peak, in one run.

The model and data shapes are params.yaml's, with the configuration that ships: bf16 autocast
and full-spectrum audio tokens (model.audio_patch_f: 32); each variant switches one thing.
Each step is `jointdit.training.train`'s own (batch drawing, condition dropout, noise,
forward, backward, gradient clipping, fused AdamW), every parameter trained. FLOPs per step
are counted by torch's FlopCounterMode over one eager step; the ceiling is an fp32 2048^3
matmul at the same thread count, timed before every variant and the best kept (bf16 is
compared to that fp32 peak too). On a machine others load, each figure is the best of its
steps, and the peak the best of its measurements: the ratio holds when the times do not.
Under heavy load a multi-second step rarely runs undisturbed while a short matmul does, so
`--clock cpu --threads 1` times both by this process's CPU time instead of the wall clock.

`--profile` adds where the shipped step's time goes: torch.profiler's self CPU time of every
operator over the timed steps, summed into kinds (matmuls, softmax, norms, element-wise work,
copies and layout changes, the optimizer, the rest).

    python benchmarks/train_step.py [--batch 8] [--steps 5] [--warmup 2] [--threads N]
        [--device cpu] [--clock wall|cpu] [--variants ships compile fp32 checkpointing]
        [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from jointdit.flow import Batch, FlowConfig
from jointdit.model.jointdit import JointDiT, JointDiTConfig
from jointdit.training import TrainConfig, train
from tasks.encoding import codec_from
from tasks.model_config import model_config
from tasks.params import load_params

# what ships beside params.yaml's model (the model-quality issue's settled configuration)
SHIPPED_MODEL = {"audio_patch_f": 32}


def matmul_peak(
    device: str, clock: Callable[[], float], n: int = 2048, seconds: float = 1.0
) -> float:
    """The best FLOP/s of one fp32 n^3 matmul over `seconds`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = clock()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / max(clock() - t0, 1e-9))
    return best


def random_latents(params: dict, codec, size: int, device: str, seed: int) -> Batch:
    clip = params["clip"]
    f = params["codec"]["patch"]["video_factor"]
    frames = round(clip["duration_s"] * clip["fps"])
    audio_frames = round(clip["duration_s"] * codec.audio_frame_rate)
    c, h, w = codec.video_channels, clip["height"] // f, clip["width"] // f
    g = torch.Generator().manual_seed(seed)
    return Batch(
        video=torch.randn(size, frames, c, h, w, generator=g).to(device),
        audio=torch.randn(
            size, codec.audio_channels, codec.audio_bins, audio_frames, generator=g
        ).to(device),
        image=torch.randn(size, c, h, w, generator=g).to(device),
        text=torch.randint(
            1, params["model"]["text_vocab"], (size, params["model"]["text_len"]), generator=g
        ).to(device),
    )


class _Enough(Exception):
    """Raised from train()'s log callback once the steps wanted are done: the run stops before
    its last step, which would validate."""


def _train_until(
    cfg: JointDiTConfig, data: Batch, train_cfg: TrainConfig, steps: int, on_step: Callable
) -> None:
    """Run `steps` of train()'s steps (of a run planned one longer), calling on_step after each."""
    torch.manual_seed(0)
    model = JointDiT(cfg).to(data.video.device)

    def log(step: int, record: dict) -> None:
        on_step()
        if step == steps:
            raise _Enough

    with contextlib.suppress(_Enough):
        train(model, data, data, replace(train_cfg, steps=steps + 1), FlowConfig(), log, False)


def step_seconds(
    cfg: JointDiTConfig,
    data: Batch,
    train_cfg: TrainConfig,
    warmup: int,
    steps: int,
    clock: Callable[[], float],
) -> list[float]:
    """Seconds of each of `steps` training steps after `warmup` untimed ones, timed between
    train()'s per-step log calls."""
    stamps: list[float] = []
    _train_until(cfg, data, train_cfg, warmup + steps, lambda: stamps.append(clock()))
    return [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]


def step_flops(cfg: JointDiTConfig, data: Batch, train_cfg: TrainConfig) -> float:
    """FLOPs of one eager training step (forward, backward, optimizer)."""
    counted: list[float] = []
    with FlopCounterMode(display=False) as counter:
        _train_until(
            cfg,
            data,
            replace(train_cfg, compile=False),
            1,
            lambda: counted.append(counter.get_total_flops()),
        )
    return counted[0]


# Operator name fragments -> the kind of work they are (first match wins; RoPE is element-wise
# multiplies and adds plus a concatenation, so it falls in those kinds).
OP_KINDS = (
    ("optimizer (fused AdamW)", ("adam",)),
    ("matmuls", ("mm", "matmul", "linear", "conv")),
    ("softmax", ("softmax",)),
    ("norms", ("layer_norm",)),
    (
        "copies, casts, layout",
        ("copy", "cat", "clone", "contiguous", "stack", "index", "repeat", "fill"),
    ),
    ("element-wise", ("mul", "add", "sub", "div", "gelu", "silu", "exp", "neg", "where", "pow",
                      "sum", "mean", "sqrt", "rsqrt", "clamp", "norm", "sigmoid", "sin", "cos")),
)  # fmt: skip


def op_kind(name: str) -> str:
    """The kind (OP_KINDS) of an aten operator name, or "other"."""
    op = name.removeprefix("aten::").lower()
    for kind, fragments in OP_KINDS:
        if any(f in op for f in fragments):
            return kind
    return "other"


def profile_step(
    cfg: JointDiTConfig, data: Batch, train_cfg: TrainConfig, warmup: int, steps: int
) -> dict[str, float]:
    """Self CPU seconds per operator kind over `steps` training steps after `warmup`."""
    seen = [0]
    prof = profile(activities=[ProfilerActivity.CPU])

    def on_step() -> None:
        seen[0] += 1
        if seen[0] == warmup:
            prof.start()

    _train_until(cfg, data, train_cfg, warmup + steps, on_step)
    prof.stop()
    kinds: dict[str, float] = {}
    for event in prof.key_averages():
        kind = op_kind(event.key)
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6 / steps
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compile: more)")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time, which others' load does not stretch (use with "
        "--threads 1: idle threads' spinning would count)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=("ships", "compile", "fp32", "checkpointing"),
        default=["ships", "compile", "fp32", "checkpointing"],
    )
    parser.add_argument("--profile", action="store_true", help="where the shipped step's time goes")
    args = parser.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times CPU work; a GPU's needs the wall clock")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    params["model"].update(SHIPPED_MODEL)
    codec = codec_from(params)
    cfg = model_config(params, codec)
    data = random_latents(params, codec, 4 * args.batch, args.device, seed=0)
    base = TrainConfig(batch_size=args.batch, eval_every=10**9, bf16=True)
    variants = {
        "ships": ("bf16 autocast (ships)", base, args.warmup),
        "compile": ("bf16 + torch.compile", replace(base, compile=True), args.warmup + 3),
        "fp32": ("fp32", replace(base, bf16=False), args.warmup),
        "checkpointing": (
            "bf16 + grad checkpointing",
            replace(base, grad_checkpointing=True),
            args.warmup,
        ),
    }
    variants = [variants[v] for v in args.variants]
    # bf16, fp32 and compiled steps count the same FLOPs; checkpointing recomputes forwards
    flops = {
        ckpt: step_flops(cfg, data, replace(base, grad_checkpointing=ckpt))
        for ckpt in {tc.grad_checkpointing for _, tc, _ in variants}
    }
    print(
        f"default model (params.yaml, {SHIPPED_MODEL}): "
        f"{sum(p.numel() for p in JointDiT(cfg).parameters()) / 1e6:.2f} M parameters, "
        f"batch {args.batch}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.clock} clock; "
        f"best of {args.steps} steps after {args.warmup} (compile: +3)",
        flush=True,
    )
    peak = 0.0
    rows = []
    for name, train_cfg, warmup in variants:
        peak = max(peak, matmul_peak(args.device, clock))
        seconds = min(step_seconds(cfg, data, train_cfg, warmup, args.steps, clock))
        rows.append((name, seconds, flops[train_cfg.grad_checkpointing]))
    peak = max(peak, matmul_peak(args.device, clock))
    print(f"fp32 matmul peak (2048^3, best in this run): {peak / 1e9:.1f} GFLOP/s\n")
    print(
        f"{'variant':<28} {'s/step':>7} {'samples/s':>10} {'GFLOP/step':>11} "
        f"{'GFLOP/s':>8} {'of peak':>8}"
    )
    for name, seconds, count in rows:
        print(
            f"{name:<28} {seconds:7.3f} {args.batch / seconds:10.1f} {count / 1e9:11.1f} "
            f"{count / seconds / 1e9:8.1f} {count / seconds / peak:8.1%}"
        )
    if args.profile:
        kinds = profile_step(cfg, data, base, args.warmup, args.steps)
        total = sum(kinds.values())
        print(
            "\nwhere a shipped step's time goes (self CPU time, "
            f"{total:.3f} s/step under the profiler, its per-operator overhead included):"
        )
        for kind, seconds in kinds.items():
            print(f"{kind:<28} {seconds:7.3f} s {seconds / total:7.1%}")


if __name__ == "__main__":
    main()

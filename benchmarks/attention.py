"""Joint attention cost: this implementation vs a naive one that materialises the scores.

One JointLayer (joint attention over [video; audio] + V-FF / A-FF) forward + backward, at
growing token counts up to the paper's scale (14 frames of a 72x40 latent at patch 2 = 10,080
video tokens, plus 2 s of AudioLDM2 latents at 16x4 patches ~ 1,000 audio tokens: ~11k).

  (a) fused: torch's scaled_dot_product_attention (what the model uses)
  (b) naive: softmax(q k^T / sqrt(d)) v with the N x N scores in memory, queries in chunks of
      1,024 (the seed repos' approach); autograd still keeps every chunk's scores.

Each configuration runs in a fresh subprocess, so its peak memory is its own (max RSS on CPU,
max allocated on CUDA). Configurations whose naive scores would not fit in --mem-budget-gib
are skipped with the reason printed.

    python benchmarks/attention.py                      # CPU, dim 512, heads 8
    python benchmarks/attention.py --device cuda --dim 1024 --heads 16
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

TOKENS = (512, 1024, 2048, 4096, 8192, 11088)
# the model's memory knobs (query_chunk, kv_downsample), measured against plain "fused"
KNOBS = {"query_chunk=1024": (1024, 1), "kv_downsample=4": (0, 4)}
AUDIO_SHARE = 1 / 11  # ~1,008 of the paper's ~11k tokens are audio


NAIVE_CHUNK = 1024


def naive_attend(q, k, v, *_model_knobs):
    import torch

    scale = 1 / math.sqrt(q.shape[-1])
    outs = []
    for c in q.split(NAIVE_CHUNK, dim=2):
        scores = torch.softmax((c @ k.transpose(-1, -2)) * scale, dim=-1)
        outs.append(scores @ v)
    return torch.cat(outs, dim=2)


def measure(impl: str, tokens: int, dim: int, heads: int, device: str, repeats: int) -> dict:
    import torch

    import jointdit.model.jointdit as jd

    if impl == "naive":
        jd.attend = naive_attend  # the JointLayer looks `attend` up at call time
    torch.manual_seed(0)
    layer = jd.JointLayer(dim, heads, ff_mult=2, knobs=KNOBS.get(impl, (0, 1))).to(device)
    for p in layer.parameters():  # open the zero-initialised gates: measure the real work
        torch.nn.init.normal_(p, std=0.02)
    n_audio = round(tokens * AUDIO_SHARE)
    n_video = tokens - n_audio
    xv = torch.randn(1, n_video, dim, device=device, requires_grad=True)
    xa = torch.randn(1, n_audio, dim, device=device, requires_grad=True)
    cv, ca = torch.randn(1, dim, device=device), torch.randn(1, dim, device=device)
    head_dim = dim // heads
    angles_v = torch.zeros(n_video, head_dim // 2, device=device)
    angles_a = torch.zeros(n_audio, head_dim // 2, device=device)
    iso = torch.zeros(1, dtype=torch.bool, device=device)

    def step() -> None:
        out_v, out_a = layer(xv, xa, cv, ca, angles_v, angles_a, None, iso)
        (out_v.square().mean() + out_a.square().mean()).backward()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 2**10
    return {"ms": 1000 * statistics.median(times), "peak_mib": peak}


def naive_score_gib(tokens: int, heads: int) -> float:
    # autograd keeps the scores and the softmax output of every chunk: 2 x H x N x N floats
    return 2 * heads * tokens * tokens * 4 / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=max(TOKENS))
    parser.add_argument("--mem-budget-gib", type=float, default=12.0)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # impl tokens (subprocess)
    args = parser.parse_args()
    if args.one:
        result = measure(
            args.one[0], int(args.one[1]), args.dim, args.heads, args.device, args.repeats
        )
        print(json.dumps(result))
        return

    print(
        f"JointLayer forward+backward, batch 1, dim {args.dim}, heads {args.heads}, "
        f"device {args.device}, median of {args.repeats}"
    )
    print(
        f"{'tokens':>7} | {'fused ms':>9} {'fused MiB':>10} | {'naive ms':>9} "
        f"{'naive MiB':>10} | {'speed-up':>8} {'mem ratio':>9}"
    )
    for tokens in (t for t in TOKENS if t <= args.max_tokens):
        row: dict[str, dict | str] = {}
        for impl in ("fused", "naive"):
            need = naive_score_gib(tokens, args.heads)
            if impl == "naive" and need > args.mem_budget_gib:
                row[impl] = f"skipped: scores {need:.0f} GiB"
                continue
            cmd = [sys.executable, __file__, "--one", impl, str(tokens)]
            for flag in ("dim", "heads", "device", "repeats"):
                cmd += [f"--{flag}", str(getattr(args, flag))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode == 0:
                row[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                row[impl] = "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:30]
        f, n = row["fused"], row["naive"]
        cells = [
            f"{r['ms']:9.1f} {r['peak_mib']:10.0f}" if isinstance(r, dict) else f"{r:>20}"
            for r in (f, n)
        ]
        if isinstance(f, dict) and isinstance(n, dict):
            ratio = f"{n['ms'] / f['ms']:7.2f}x {n['peak_mib'] / max(f['peak_mib'], 1):8.1f}x"
        else:
            ratio = f"{'-':>8} {'-':>9}"
        print(f"{tokens:7d} | {cells[0]} | {cells[1]} | {ratio}", flush=True)

    print("\nMemory knobs of the fused path (JointDiTConfig.query_chunk / kv_downsample)")
    print(f"{'tokens':>7} | {'knob':<18} {'ms':>9} {'MiB':>8}")
    for tokens in (t for t in (4096, max(TOKENS)) if t <= args.max_tokens):
        for impl in KNOBS:
            cmd = [sys.executable, __file__, "--one", impl, str(tokens)]
            for flag in ("dim", "heads", "device", "repeats"):
                cmd += [f"--{flag}", str(getattr(args, flag))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{tokens:7d} | {impl:<18} {r['ms']:9.1f} {r['peak_mib']:8.0f}", flush=True)


if __name__ == "__main__":
    main()

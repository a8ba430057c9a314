"""The cache stage in one process against the same stage on a local Dask cluster.

Writes test files (default: 6 files of 40 s, 640x360 at 30 fps, H.264 + AAC stereo, as
`cache_throughput.py` does), runs the real fetch and validate stages on them (params.yaml,
`data.source: folder`), then the real cache stage with `cache.workers` 0 (one process) and N
(Dask), in rounds that alternate them so that a loaded machine slows both alike; the best round
of each is kept. The Dask figure includes starting and stopping the cluster, as a user's run
pays it. The ceiling is N times the one-process rate (N workers, no overhead).

    python benchmarks/cache_workers.py [--files 6] [--seconds 40] [--workers 2] [--shard-size 16]
        [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmarks.cache_throughput: the same test files

from benchmarks.cache_throughput import write_test_file  # noqa: E402
from tasks.cache import CacheRun, cache, dask_client  # noqa: E402
from tasks.fetch import fetch  # noqa: E402
from tasks.params import load_params  # noqa: E402
from tasks.paths import CACHE  # noqa: E402
from tasks.validate import validate  # noqa: E402


def timed_cache(params: dict, workers: int) -> tuple[float, dict]:
    """Seconds of a cache run that encodes every shard (none is left from an earlier run)."""
    shutil.rmtree(CACHE, ignore_errors=True)
    start = time.perf_counter()
    index = cache({**params, "cache": {"workers": workers, "scheduler": ""}})
    return time.perf_counter() - start, index


def cluster_overhead(workers: int) -> float:
    """Seconds to start and stop a local cluster of `workers` processes that do no work."""
    start = time.perf_counter()
    with dask_client(CacheRun(workers=workers)) as client:
        client.wait_for_workers(workers)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each Dask worker runs (one thread per process)
    params = load_params(REPO / "params.yaml")
    params["data"].update(source="folder", folder="clips", label_captions=False)
    params["clip"]["max_windows_per_clip"] = 1000  # every whole window of each file
    params["codec"]["shard_size"] = args.shard_size

    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        Path("clips").mkdir()
        for i in range(args.files):
            write_test_file(Path("clips") / f"test{i}.mp4", args.seconds, seed=i)
        fetch(params)
        validate(params)
        indexes = {}
        for _ in range(args.rounds):
            for workers in (0, args.workers):
                seconds, indexes[workers] = timed_cache(params, workers)
                best[workers] = min(best.get(workers, float("inf")), seconds)
        overhead = min(cluster_overhead(args.workers) for _ in range(args.rounds))
    assert indexes[0] == indexes[args.workers]  # the same shards, listed alike
    n, shards = indexes[0]["windows"], len(indexes[0]["shards"])

    print(
        f"\n{args.files} files x {args.seconds:g} s, 640x360 30 fps H.264 + AAC -> {n} windows "
        f"in {shards} shards of {args.shard_size}; {os.cpu_count()} cores; "
        f"best of {args.rounds} rounds\n"
    )
    print(f"{'cache stage':<34}{'seconds':>9}{'windows/s':>11}{'speed-up':>10}")
    one = best[0]
    rows = [
        ("one process (workers 0)", one),
        (f"Dask, {args.workers} worker processes", best[args.workers]),
        (f"ceiling: {args.workers} x one process", one / args.workers),
    ]
    for name, seconds in rows:
        print(f"{name:<34}{seconds:9.2f}{n / seconds:11.1f}{one / seconds:9.2f}x")
    print(
        f"\nstarting and stopping the cluster alone: {overhead:.2f} s; the Dask run less that: "
        f"{best[args.workers] - overhead:.2f} s ({one / (best[args.workers] - overhead):.2f}x)"
    )


if __name__ == "__main__":
    main()

"""A bounded load test of the HTTP API: `mlflow models serve` (2 workers) on 127.0.0.1 and a
few concurrent clients for a fixed time, each sending one-row requests (a base64 PNG, its own
seed) back to back.

Prints requests served, errors (0 expected), latency p50 / p95 / max beside the baseline (the
same one-row predict in this process, no server, measured after the load), throughput, and the
memory (RSS) of the server's processes after a warm-up, at half time and after the load
(allocators settle during the first half; growth in the second half would be a leak). With
more clients than workers a request waits for a free worker, so p50 near clients / workers x
the baseline means the server adds little of its own.

The model is a randomly initialised one of params.yaml's size (the trained
one does the same arithmetic; `--tiny` for the tests' tiny one), registered by the real
`register` step in a temporary store.

    python benchmarks/serve_load.py [--clients 4] [--seconds 60] [--workers 2] [--tiny]

Absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.servers: the registered workspace the tests use

from tests.servers import free_port, register_cmd, register_env, tiny_workspace  # noqa: E402
from tests.serving_inputs import png_bytes  # noqa: E402

BIN = Path(sys.executable).parent


def post(url: str, row: dict) -> int:
    body = json.dumps({"dataframe_records": [row]}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
            assert base64.b64decode(answer["predictions"][0]["mp4_base64"])[4:8] == b"ftyp"
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def rss_mib(root: psutil.Process) -> dict[str, float]:
    """RSS of the server and its children, by pid (the CLI, uvicorn's manager, the workers)."""
    procs = [root, *root.children(recursive=True)]
    return {f"{p.pid} {p.name()}": p.memory_info().rss / 2**20 for p in procs if p.is_running()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    args = parser.parse_args()

    from tasks.params import load_params

    params = None if args.tiny else load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="jointdit-load-") as tmp:
        ws = tiny_workspace(Path(tmp) / "ws", params=params)
        tracking = f"sqlite:///{ws / 'mlflow.db'}"
        subprocess.run(register_cmd(), cwd=ws, env=register_env(tracking), check=True,
                       capture_output=True)  # fmt: skip
        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,
               "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
        cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/jointdit@champion",
               "--env-manager", "local", "--workers", str(args.workers), "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
        with open(Path(tmp) / "serve.log", "w") as log:
            server = subprocess.Popen(cmd, cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
        try:
            report = load(server, f"http://127.0.0.1:{port}", args)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        print(report)
        print(baseline(tracking, {"image": base64.b64encode(png_bytes()).decode(), "seed": 0}))


def baseline(tracking: str, row: dict, runs: int = 3) -> str:
    """The same request's predict in this process: what a request costs without the server."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model("models:/jointdit@champion")
    model.predict(pd.DataFrame([row]))  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.predict(pd.DataFrame([row]))
        times.append(time.perf_counter() - started)
    return (
        f"baseline: predict in process (MP4 answer), median of {runs}: "
        f"{statistics.median(times):.2f} s"
    )


def load(server: subprocess.Popen, url: str, args: argparse.Namespace) -> str:
    deadline = time.monotonic() + 600
    while True:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the model server did not come up")
            time.sleep(1)
    image = base64.b64encode(png_bytes()).decode("ascii")
    for seed in range(2 * args.workers):  # warm-up: every worker has likely generated
        post(url + "/invocations", {"image": image, "seed": seed})
    root = psutil.Process(server.pid)
    before = rss_mib(root)

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def client(k: int) -> None:
        seed = 1000 * (k + 1)
        while time.monotonic() < stop:
            started = time.monotonic()
            status = post(url + "/invocations", {"image": image, "seed": seed})
            with lock:
                latencies.append(time.monotonic() - started)
                statuses[status] = statuses.get(status, 0) + 1
            seed += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    # Allocators keep growing for the first requests after a warm-up; a leak keeps growing
    # after that too: the second half of the load is the figure to read.
    time.sleep(args.seconds / 2)
    half = rss_mib(root)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    after = rss_mib(root)

    served = statuses.get(200, 0)
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    lines = [
        f"{args.clients} clients x {args.seconds:.0f} s against {args.workers} workers "
        f"({'tiny' if args.tiny else 'default-size'} model): {elapsed:.1f} s",
        f"requests served {served}, errors {len(latencies) - served} {statuses}",
        f"latency p50 {statistics.median(latencies):.2f} s, p95 {q[18]:.2f} s, "
        f"max {max(latencies):.2f} s; {served / elapsed:.2f} requests/s",
        "memory (RSS, MiB)        after warm-up   half time   after load",
    ]
    nan = float("nan")
    for key in sorted(before):
        then, mid, end = before[key], half.get(key, nan), after.get(key, nan)
        lines.append(f"  {key:<24} {then:10.1f} {mid:11.1f} {end:12.1f}")
    lines.append(
        f"  {'total':<24} {sum(before.values()):10.1f} {sum(half.values()):11.1f} "
        f"{sum(after.values()):12.1f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

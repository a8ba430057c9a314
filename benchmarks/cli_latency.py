"""`jointdit sample` latency beside the model's own compute, for a model of params.yaml's size.

A randomly initialised model of the default size (the trained one does the same arithmetic) is
registered by the real `register` step in a temporary store. Then, each in a fresh process
with the same threads:
- compute: the served model's predict for one image (generate + decode), after a warm-up;
- CLI: `jointdit sample`'s time (process start, imports, model load, predict, MP4 + WAV +
  PNG, the MLflow run), without a Prefect API, as a user runs it;
- before: `jointdit sample --prefect`, the flow under a temporary Prefect server (what the CLI
  always did), once;
- where the CLI's time goes: one `jointdit sample` (its `main`) with each step timed, from the
  process's start to its exit; the rows add up to that run's time.

    python benchmarks/cli_latency.py [--runs 3] [--steps 16] [--clock wall|cpu]

Absolute times depend on the machine and its load; the ratio is measured within one run.
`--clock cpu` times each process by its CPU time (user + system) instead of the wall clock:
others' load, which comes and goes between the figures of one run, does not stretch it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.servers: the registered workspace the tests use

from tests.servers import register_cmd, register_env, tiny_workspace  # noqa: E402
from tests.serving_inputs import png_bytes  # noqa: E402

BIN = Path(sys.executable).parent
COMPUTE = """
import json, sys, time, pandas as pd, mlflow
clock = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/jointdit@champion")
row = pd.DataFrame([{"image": sys.argv[2], "seed": 0}])
model.predict(row, params={"output": "arrays"})  # warm-up
times = []
for _ in range(int(sys.argv[3])):
    t = clock(); model.predict(row, params={"output": "arrays"})
    times.append(clock() - t)
print(json.dumps(times))
"""
PHASES = """
import contextlib, io, json, sys, time
# seconds since this process started: its CPU time, or the wall clock since argv[5] (when the
# parent started it)
now = time.process_time if sys.argv[4] == "cpu" else lambda: time.time() - float(sys.argv[5])
t0 = now()
from flows import cli
from tasks import sample_clip as s
steps = {"load model": "load_model", "predict": "generate_clip",
         "MP4 + WAV + PNG": "write_outputs", "MLflow run": "log_sample"}
spent = {"python start": t0, "imports": now() - t0}
def timer(name, fn):
    def timed_step(*args):
        t = now(); out = fn(*args); spent[name] = now() - t
        return out
    return timed_step
for name, fn in steps.items():  # sample_clip calls each step by its module-level name
    setattr(s, fn, timer(name, getattr(s, fn)))
t1 = now()
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["sample", "--image", sys.argv[2], "--out-dir", sys.argv[3]])
spent["rest of main"] = now() - t1 - sum(spent[name] for name in steps)
print(json.dumps({"ended": now(), "spent": spent}))
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str], clock: str) -> tuple[float, str]:
    """`cmd`'s seconds by `clock` (wall, or cpu: its CPU time and its children's) and stdout."""
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = children_cpu() - cpu if clock == "cpu" else time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def children_cpu() -> float:
    """CPU seconds (user + system) of the child processes that have ended so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, help="sample.steps (default: params.yaml's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()

    from tasks.params import load_params

    params = load_params(REPO / "params.yaml")
    if args.steps:
        params["sample"]["steps"] = args.steps
    with tempfile.TemporaryDirectory(prefix="jointdit-cli-bench-") as tmp:
        ws = tiny_workspace(Path(tmp) / "ws", params=params)
        tracking = f"sqlite:///{ws / 'mlflow.db'}"
        timed(register_cmd(), ws, register_env(tracking), args.clock)
        image = ws / "drawn.png"
        image.write_bytes(png_bytes())
        # a loaded machine can take longer than Prefect's 20 s to start the temporary server
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,
               "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        py = [sys.executable, "-c"]
        # each figure is printed as soon as it is measured: on a loaded machine a run is long
        print(f"model: params.yaml's size, {params['sample']['steps']} steps "
              f"{params['sample']['guidance']}, {params['clip']['width']}x"
              f"{params['clip']['height']} x {params['clip']['duration_s']} s; median of "
              f"{args.runs}; {args.clock} clock", flush=True)  # fmt: skip
        run = [*py, COMPUTE, tracking, str(image), str(args.runs), args.clock]
        compute = json.loads(timed(run, ws, env, args.clock)[1])
        c = statistics.median(compute)
        row("model compute (predict, in process)", c, c)
        sample = [str(BIN / "jointdit"), "sample", "--image", str(image)]
        cli = [timed(sample, ws, env, args.clock)[0] for _ in range(args.runs)]
        row("jointdit sample (no Prefect API)", statistics.median(cli), c)
        row("jointdit sample --prefect (temporary server)",
            timed([*sample, "--prefect"], ws, env, args.clock)[0], c, "  (once)")  # fmt: skip
        run = [*py, PHASES, tracking, str(image), tmp, args.clock, str(time.time())]
        total, out = timed(run, ws, env, args.clock)
        phases = json.loads(out)
    # after main returns: atexit handlers and the interpreter's teardown
    spent = {**phases["spent"], "exit": total - phases["ended"]}
    print("where `jointdit sample` spends its time (one process):")
    for name, seconds in spent.items():
        print(f"  {name:<20} {seconds:7.2f} s")
    print(f"  {'total':<20} {total:7.2f} s", flush=True)


def row(name: str, seconds: float, compute: float, note: str = "") -> None:
    print(f"{name:<44} {seconds:7.2f} s   {seconds / compute:.2f}x{note}", flush=True)


if __name__ == "__main__":
    main()

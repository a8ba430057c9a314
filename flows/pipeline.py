"""The `pipeline` flow: the DVC stages in order, each a Prefect task with retries and logs.

DVC decides what is stale and records what was built (dvc.lock); Prefect runs, retries and
shows it. A stage that is up to date is a fast no-op. Two runs never overlap: the deployment
takes one run at a time (prefect.yaml), and a stage waits for DVC's lock when someone else's
`dvc repro` holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from tasks.paths import REPORTS
from tasks.summary import summary

DVC_FILE = Path("dvc.yaml")
DVC_LOCK = Path(".dvc/tmp/lock")
# DVC lets go of its repository lock while a stage's command runs (so that the command may call
# dvc itself); what marks a running stage then is its entry in this file, which DVC only reads
# to refuse overlapping outputs, never to wait.
DVC_RWLOCK = Path(".dvc/tmp/rwlock")
POLL_S = 1.0


def dvc_stages(dvc_file: Path = DVC_FILE) -> list[str]:
    """The stages of dvc.yaml in the order it lists them, which is the order they depend on
    each other: the graph has one home, and the flow runs what it says."""
    return list(yaml.safe_load(dvc_file.read_text())["stages"])


def _command(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, ValueError):
        return "command line unknown"


def lock_holder(lock: Path = DVC_LOCK, rwlock: Path = DVC_RWLOCK) -> str | None:
    """Another live DVC process at work here, as "pid N (its command line)"; None when none is.

    Either it holds the repository lock, or one of its stages is running (DVC's rwlock).
    """
    import psutil
    import zc.lockfile  # DVC's own lock implementation: the same test DVC makes

    if lock.is_file():
        try:
            zc.lockfile.LockFile(str(lock)).close()
        except zc.lockfile.LockError:
            pid = lock.read_text().strip()  # the holder wrote its pid there
            return f"pid {pid} ({_command(pid)})"
    try:
        entries = json.loads(rwlock.read_text())
    except (OSError, ValueError):
        return None
    infos = list(entries.get("write", {}).values())
    infos += [info for readers in entries.get("read", {}).values() for info in readers]
    for info in infos:
        pid = info.get("pid")
        if pid != os.getpid() and isinstance(pid, int) and psutil.pid_exists(pid):
            return f"pid {pid} ({_command(pid)})"
    return None


def wait_for_dvc(stage: str, logger) -> None:
    """Block while another DVC process is at work in this repository, saying so once."""
    holder = lock_holder()
    if holder is None:
        return
    logger.warning(
        "[%s] DVC is busy here: %s, e.g. a `dvc repro` started by hand (its lock %s or a "
        "running stage in %s): this stage waits until it is released, then runs",
        stage,
        holder,
        DVC_LOCK,
        DVC_RWLOCK,
    )
    while lock_holder() is not None:
        time.sleep(POLL_S)
    logger.info("[%s] DVC is free: running", stage)


@task(retries=1, retry_delay_seconds=5)
def run_stage(stage: str, force: bool = False) -> None:
    """`dvc repro --single-item STAGE`, its output streamed into the Prefect log."""
    logger = get_run_logger()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        # stage commands say `python`: make it this environment's, activated or not
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        # progress bars become periodic log lines instead of a flood of redraws
        "TQDM_MININTERVAL": "10",
    }
    wait_for_dvc(stage, logger)
    # --wait-for-lock: queue behind another DVC process instead of failing at once
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage]
    if force:
        cmd.append("--force")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        for part in line.replace("\r", "\n").splitlines():
            if part.strip():
                logger.info("[%s] %s", stage, part)
    if proc.wait():
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}); see the log above")


@flow(name="pipeline")
def pipeline(stages: list[str] | None = None, force: bool = False) -> dict:
    """Run the given stages (default: all, in order); returns reports/metrics.json if present."""
    known = dvc_stages()
    chosen = list(stages or known)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {known}")
    for stage in sorted(chosen, key=known.index):
        run_stage.with_options(name=f"dvc-{stage}")(stage, force)
    metrics = REPORTS / "metrics.json"
    if not metrics.exists():
        return {}
    get_run_logger().info("%s", summary())
    return json.loads(metrics.read_text())


if __name__ == "__main__":
    pipeline()

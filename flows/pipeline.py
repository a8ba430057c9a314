"""The `pipeline` flow: the DVC stages in order, each a Prefect task with retries and logs.

DVC decides what is stale and records what was built (dvc.lock); Prefect runs, retries and
shows it. A stage that is up to date is a fast no-op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

STAGES = ("fetch", "validate", "cache", "experts", "stage_a", "stage_b", "evaluate", "register")


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
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
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
    chosen = list(stages or STAGES)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {list(STAGES)}")
    for stage in sorted(chosen, key=STAGES.index):
        run_stage.with_options(name=f"dvc-{stage}")(stage, force)
    metrics = Path("reports/metrics.json")
    return json.loads(metrics.read_text()) if metrics.exists() else {}


if __name__ == "__main__":
    pipeline()

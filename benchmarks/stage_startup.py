"""Each stage's start-up, here and at a baseline commit, side by side.

A stage's start-up is what its process pays before its first line of work: the interpreter
and the imports of its module (reading params.yaml is milliseconds). A stage that DVC reruns
only to find everything done pays it in full. For every stage of dvc.yaml (the module its
`cmd` runs), in a fresh process each time, the wall time of `python -c "import tasks.X"`, in
rounds that alternate the two checkouts so that a loaded machine slows both alike; the best
round of each is kept. The baseline is a git worktree of `--baseline` (default: the commit
before this session's start-up work), run with the same interpreter.

    python benchmarks/stage_startup.py [--baseline 78ed0e2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def stage_modules(dvc_file: Path) -> dict[str, str]:
    """{stage: the module its command runs}, in dvc.yaml's order."""
    stages = yaml.safe_load(dvc_file.read_text())["stages"]
    modules = {}
    for name, spec in stages.items():
        words = spec["cmd"].split()
        modules[name] = words[words.index("-m") + 1]
    return modules


def startup(root: Path, module: str) -> float:
    """Seconds from process start to `module` imported, with `root` first on sys.path."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=root, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="78ed0e2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stages_of: dict[str, list[str]] = {}
    for stage, module in stage_modules(REPO / "dvc.yaml").items():
        stages_of.setdefault(module, []).append(stage)
    best: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.baseline],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
        try:
            startup(REPO, "tasks.params")  # warm the page cache for both
            startup(base, "tasks.params")
            for _ in range(args.rounds):
                for module in stages_of:
                    for label, root in (("baseline", base), ("now", REPO)):
                        seconds = startup(root, module)
                        key = (module, label)
                        best[key] = min(best.get(key, float("inf")), seconds)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO)
    print(f"stage start-up (process start to module imported), best of {args.rounds}\n")
    print(f"{'stages':<26}{'module':<16}{'baseline ' + args.baseline:>18}{'now':>8}")
    for module, stages in stages_of.items():
        then, now = best[(module, "baseline")], best[(module, "now")]
        print(f"{', '.join(stages):<26}{module:<16}{then:17.2f}s{now:7.2f}s")


if __name__ == "__main__":
    main()

"""seeds: the paper's claims over data and training seeds, as one table (`make seeds`).

For each seed s the pipeline runs up to `evaluate` as a DVC experiment `seeds-<s>` with
`seed` (training) and `data.synthetic.seed` (the clips) set to s; its metrics.json and
per_sample.csv are kept under reports/seeds/seed-<s>/. Each run's evaluate has tested the
paper's claims on its clips (metrics.json `claims`, on `evaluate.claim_metric`):

- joint attention helps: `joint-<sample.guidance>` beats `iso-<baseline_guidance>`;
- JointCFG helps: `joint-jointcfg` beats `joint-none`.

reports/seeds.json and reports/seeds.md hold the table. The default seed runs last and
params.yaml is restored byte for byte, so the workspace ends as `dvc repro` leaves it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.logs import get_logger
from tasks.params import load_params
from tasks.paths import REPORTS, write_json

SEEDS_DIR = REPORTS / "seeds"
PARAMS = Path("params.yaml")  # the file `dvc exp run -S` edits
HEADLINE = ("oracle_f1", "onsets", "objects_kept", "psnr", "fd_frames", "fd_logmel")


def run_seed(seed: int) -> Path:
    """The pipeline up to evaluate with every seed set to `seed`; returns its kept reports."""
    cmd = [
        sys.executable, "-m", "dvc", "exp", "run", "--name", f"seeds-{seed}",
        "-S", f"seed={seed}", "-S", f"data.synthetic.seed={seed}", "evaluate",
    ]  # fmt: skip
    get_logger().info("seeds: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    out = SEEDS_DIR / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "per_sample.csv"):
        (out / name).write_bytes((REPORTS / name).read_bytes())
    return out


def table(results: dict[int, dict[str, Any]], metric: str) -> str:
    """The claims and the headline metrics, per seed, as markdown."""
    lines = [
        f"| seed | claim | Δ {metric} | 2 × combined SE | paired SE | holds |",
        "|---:|---|---:|---:|---:|:---:|",
    ]
    for seed, r in results.items():
        for c in r["claims"]:
            lines.append(
                f"| {seed} | {c['better']} > {c['worse']} | {c['difference']:+.3f} | "
                f"{2 * c['combined_se']:.3f} | {c['paired_se']:.3f} | "
                f"{'yes' if c['holds'] else 'no'} |"
            )
    lines += ["", "| seed | system | " + " | ".join(HEADLINE) + " |"]
    lines.append("|---:|---|" + "---:|" * len(HEADLINE))
    for seed, r in results.items():
        for system, row in r["systems"].items():
            cells = [f"{row[k]:.3f}" if k in row else "–" for k in HEADLINE]
            lines.append(f"| {seed} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds(seeds: list[int], params_file: Path = PARAMS) -> dict[int, dict[str, Any]]:
    params = load_params(params_file)
    metric = params["evaluate"]["claim_metric"]
    default = params["seed"]
    order = [s for s in seeds if s != default] + [s for s in seeds if s == default]
    original = params_file.read_bytes()
    results: dict[int, dict[str, Any]] = {}
    try:
        for seed in order:
            run = run_seed(seed)
            metrics = json.loads((run / "metrics.json").read_text())
            results[seed] = {"claims": metrics["claims"], "systems": metrics["systems"]}
    finally:
        params_file.write_bytes(original)  # dvc exp run -S leaves its values in params.yaml
    results = dict(sorted(results.items()))
    write_json(REPORTS / "seeds.json", {"metric": metric, "seeds": results})
    markdown = table(results, metric)
    (REPORTS / "seeds.md").write_text(markdown)
    print(markdown)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    seeds(args.seeds)


if __name__ == "__main__":
    main()

"""seeds: the paper's claims over data and training seeds, as one table (`make seeds`).

For each seed s the pipeline runs up to `evaluate` as a DVC experiment `seeds-<s>` with
`seed` (training) and `data.synthetic.seed` (the clips) set to s; its metrics.json and
per_sample.csv are kept under reports/seeds/seed-<s>/. Then, per seed, each claim compares two
systems of that run on `metric`, clip by clip (jointdit.metrics.claims):

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

import pandas as pd

from jointdit.metrics.claims import Comparison, compare
from tasks.common import REPORTS, get_logger, load_params, write_json

SEEDS_DIR = REPORTS / "seeds"
HEADLINE = ("oracle_f1", "onsets", "objects_kept", "psnr", "fd_frames", "fd_logmel")


def run_seed(seed: int, params_file: Path) -> Path:
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


def claims_of(run: Path, params: dict[str, Any], metric: str) -> list[Comparison]:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = pd.read_csv(run / "per_sample.csv")
    ev = params["evaluate"]
    pairs = [
        (metrics["default_system"], f"iso-{ev['baseline_guidance']}"),
        ("joint-jointcfg", "joint-none"),
    ]

    def scores(system: str) -> list[float]:
        if system not in set(rows["system"]):
            raise ValueError(f"{run}: no system {system!r} (evaluate.guidances {ev['guidances']})")
        return rows[rows["system"] == system].sort_values("clip")[metric].tolist()

    return [compare(a, b, metric, scores(a), scores(b)) for a, b in pairs]


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


def seeds(params_file: Path, seeds: list[int], metric: str) -> dict[int, dict[str, Any]]:
    params = load_params(params_file)
    default = params["seed"]
    order = [s for s in seeds if s != default] + [s for s in seeds if s == default]
    original = params_file.read_bytes()
    results: dict[int, dict[str, Any]] = {}
    try:
        for seed in order:
            run = run_seed(seed, params_file)
            metrics = json.loads((run / "metrics.json").read_text())
            results[seed] = {
                "claims": [c.to_dict() for c in claims_of(run, params, metric)],
                "systems": metrics["systems"],
            }
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
    parser.add_argument("--metric", default="oracle_f1")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    seeds(args.params, args.seeds, args.metric)


if __name__ == "__main__":
    main()

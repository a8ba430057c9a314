"""`python -m tasks.summary`: what a pipeline run produced, short enough to read in a terminal.

The evaluation's system table with its headline columns (the ones `evaluate` draws as DVC plots,
read from reports/plots/systems.csv, with their standard errors from reports/metrics.json), the
validation losses, the registry's decision, and where the pictures and clips are.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from tasks.paths import PLOTS, REPORTS


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _cell(row: dict[str, float], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    sem = row.get(f"{column}_sem")
    if sem is not None and math.isfinite(sem) and math.isfinite(value):
        return f"{_number(value)} ± {_number(sem)}"
    return _number(value)


def table(rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; the first left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def headline_columns(systems_csv: Path, systems: dict[str, dict[str, float]]) -> list[str]:
    """The plotted columns that some system has a value for; without the plot's table (a
    metrics.json written by hand or by an older evaluate), every column but the errors."""
    if systems_csv.is_file():
        with open(systems_csv, newline="") as f:
            header = next(csv.reader(f))[1:]
    else:
        header = list(dict.fromkeys(c for row in systems.values() for c in row))
        header = [c for c in header if not c.endswith("_sem")]
    return [c for c in header if any(c in row for row in systems.values())]


def summary(reports: Path = REPORTS, plots: Path = PLOTS) -> str:
    metrics_path = reports / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no evaluation yet; run `dvc repro` first")
    metrics: dict[str, Any] = json.loads(metrics_path.read_text())
    systems = metrics["systems"]
    default = metrics["default_system"]
    columns = headline_columns(plots / "systems.csv", systems)
    rows = [["system", *columns]]
    rows += [
        [f"{name} *" if name == default else name, *(_cell(row, c) for c in columns)]
        for name, row in systems.items()
    ]
    lines = [
        f"Evaluation ({metrics_path}): {metrics.get('n_samples', '?')} validation clips, "
        f"{metrics.get('n_reference', '?')} reference clips; * = the default system, the one the "
        "register gate reads",
        *("  " + line for line in table(rows)),
    ]
    losses = metrics.get("val_loss", {})
    if losses:
        lines.append(
            "Validation loss: " + ", ".join(f"{k} {_number(v)}" for k, v in losses.items())
        )
    registry_path = reports / "registry.json"
    if registry_path.is_file():
        reg = json.loads(registry_path.read_text())
        verdict = "promoted to champion" if reg["promoted"] else "not promoted"
        lines.append(
            f"Registry: {reg['model_name']} version {reg['version']} {verdict} "
            f"(champion: version {reg['champion']}): {reg['reason']}"
        )
    lines.append("Pictures and clips:")
    samples = reports / "samples"
    pictures = [
        (samples / "systems.png", "every system's headline metrics as bars"),
        (samples / "sync_best0.png", "contact sheets of the best/worst clips by sync "
         "(sync_best*.png, sync_worst*.png), onsets and motion peaks drawn"),
        (samples / "00_joint.mp4", "sample clips with sound and their pictures: NN_joint, "
         "NN_iso, NN_real (.mp4, .png)"),
    ]  # fmt: skip
    for path, what in pictures:
        if path.exists():
            lines.append(f"  {path}: {what}")
    curves = sorted(plots.glob("*_loss.png"))
    if curves:
        lines.append(f"  {plots}/ ({', '.join(p.name for p in curves)}): training loss curves")
    return "\n".join(lines)


def main() -> None:
    try:
        print(summary())
    except FileNotFoundError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()

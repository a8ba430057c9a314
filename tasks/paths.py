"""Where the stages read and write in the workspace, and how a report is written there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jointdit.atomic import write_text

RAW = Path("data/raw")
VALIDATED = Path("data/validated")
CACHE = Path("data/cache")
MODELS = Path("models")
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"


def write_json(path: Path, obj: Any) -> None:
    """Atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")

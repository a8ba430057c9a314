"""The cache stage's input: clips under data/raw and their validated-manifest rows, each a
16x16, 8 fps clip of grey levels with mono clicks (the window tests and the fault tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jointdit.data.media import write_clip
from tests.media_files import clicks, grey_frames

SR = 16000


def make_raw(root: Path, durations: list[float]) -> list[dict]:
    """Clips under root/data/raw and their validated-manifest rows (all in train)."""
    rows = []
    for i, seconds in enumerate(durations):
        rel = f"clips/c{i}.mp4"
        (root / "data/raw/clips").mkdir(parents=True, exist_ok=True)
        n = round(seconds * 8)
        write_clip(
            root / "data/raw" / rel,
            grey_frames(np.arange(n) * 5 % 250, 16, 16),
            8.0,
            clicks(seconds, SR, (0.5, 2.5)),
            SR,
        )
        rows.append(
            validated_row(rel, i, seconds, caption=f"clip {i}", events=json.dumps([0.5, 2.5]))
        )
    return rows


def validated_row(path: str, i: int, seconds: float, **columns: Any) -> dict:
    """A validated-manifest row of a 16x16, 8 fps, mono clip in train."""
    return {
        "path": path,
        "sha256": f"{i:064x}",
        "duration_s": seconds,
        "fps": 8.0,
        "width": 16,
        "height": 16,
        "sample_rate": SR,
        "channels": 1,
        "has_audio": True,
        "caption": "",
        "events": "",
        "split": "train",
        **columns,
    }

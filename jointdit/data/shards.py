"""Latent shards: a few hundred clips per safetensors file, plus a JSON index.

Each shard carries the list of clips it holds in its own metadata, so a re-run can tell a
finished shard from a stale one and skip it; shards and index are written to a temporary name
and renamed, so a killed run never leaves a partial file under a final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from jointdit.flow import Batch

INDEX = "index.json"


@dataclass
class LatentSet:
    """Latents of one split, in memory, with each clip's manifest row."""

    batch: Batch
    clips: list[dict]


def shard_clips(path: Path) -> list[dict] | None:
    """The clip list a complete shard holds; None when it is missing, truncated or corrupt.

    Reads the safetensors header only: 8 bytes of header length, a JSON header whose tensor
    offsets say how long the file must be.
    """
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if path.stat().st_size != 8 + n + end:
            return None
        return json.loads(header["__metadata__"]["clips"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def write_shard(path: Path, tensors: dict[str, Tensor], clips: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(tmp), {"clips": json.dumps(clips)}
    )
    os.replace(tmp, path)


def write_index(out_dir: Path, index: dict) -> None:
    tmp = out_dir / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out_dir / INDEX)


def build_shards(
    out_dir: Path,
    split: str,
    clips: Sequence[dict],
    encode: Callable[[dict], dict[str, Tensor]],
    shard_size: int,
    on_clip: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Encode clips into `{split}-NNNN.safetensors` shards; reuse shards that already match.

    Returns the index entries of the shards. `encode(row)` gives one clip's tensors.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(0, len(clips), shard_size):
        rows = [dict(r) for r in clips[k : k + shard_size]]
        path = out_dir / f"{split}-{k // shard_size:04d}.safetensors"
        if shard_clips(path) != rows:
            items = []
            for row in rows:
                items.append(encode(row))
                on_clip()
            stacked = {key: torch.stack([it[key] for it in items]) for key in items[0]}
            write_shard(path, stacked, rows)
        else:
            for _ in rows:
                on_clip()
        entries.append({"file": path.name, "split": split, "clips": len(rows)})
    return entries


def load_split(cache_dir: Path, split: str) -> LatentSet:
    """All shards of one split, concatenated."""
    index = json.loads((cache_dir / INDEX).read_text())
    tensors: dict[str, list[Tensor]] = {}
    clips: list[dict] = []
    for entry in index["shards"]:
        if entry["split"] != split:
            continue
        path = cache_dir / entry["file"]
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors.setdefault(key, []).append(f.get_tensor(key))
            clips += json.loads(f.metadata()["clips"])
    if not clips:
        raise ValueError(f"{cache_dir / INDEX}: no clips in split {split!r}")
    cat = {k: torch.cat(v) for k, v in tensors.items()}
    batch = Batch(cat["video"], cat["audio"], cat["image"], cat["text"], cat.get("image_embedding"))
    return LatentSet(batch, clips)

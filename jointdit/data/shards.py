"""Latent shards: a few hundred training windows per safetensors file, plus a JSON index.

A shard's rows ("clips" in the file format) are training windows, each its clip's manifest
row plus the window's index and start time. Each shard carries the list of rows it holds in its
own metadata, so a re-run can tell a finished shard from a stale one and skip it; shards and
index are written to a temporary name and renamed, so a killed run never leaves a partial file
under a final name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from jointdit.atomic import atomic_path
from jointdit.flow import Batch

INDEX = "index.json"
SHARD_KEY = "shard"  # the safetensors metadata key of a shard's rows and encoding


@dataclass
class LatentSet:
    """Latents of one split, in memory, with each window's row (its clip's manifest row)."""

    batch: Batch
    clips: list[dict]


def shard_metadata(path: Path) -> dict[str, Any] | None:
    """A complete shard's metadata, {"clips": [row, ...], "encoding": str}; None when it is
    missing, truncated or corrupt.

    Reads the safetensors header only: 8 bytes of header length, a JSON header whose tensor
    offsets say how long the file must be.
    """
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        if path.stat().st_size != 8 + n + end:
            return None
        return _parse(header["__metadata__"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _parse(meta: dict[str, str]) -> dict[str, Any]:
    if SHARD_KEY in meta:
        return json.loads(meta[SHARD_KEY])
    # written before SHARD_KEY: still current, so existing caches are not encoded again
    return {"clips": json.loads(meta["clips"]), "encoding": meta.get("encoding", "")}


def shard_clips(path: Path) -> list[dict] | None:
    """The clip list a complete shard holds; None when it is missing, truncated or corrupt."""
    meta = shard_metadata(path)
    return None if meta is None else meta["clips"]


def write_shard(
    path: Path, tensors: dict[str, Tensor], clips: list[dict], encoding: str = ""
) -> None:
    """Atomically, synced before the rename: a crash leaves the old file or none, and no temp.

    Equal shards are equal byte for byte, so DVC sees an unchanged cache: safetensors writes
    its metadata map in an arbitrary key order, hence one key.
    """
    with atomic_path(path) as tmp:
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        meta = json.dumps({"clips": clips, "encoding": encoding})
        save_file(tensors, str(tmp), {SHARD_KEY: meta})


def write_index(out_dir: Path, index: dict) -> None:
    """Write the index, then delete shards it does not list and leftover temporary files.

    The cache directory survives between runs (so a killed run resumes), which leaves shards of
    an earlier, larger configuration behind, and the hidden temporary file of a write that a
    SIGKILL interrupted; once the new index is in place they are garbage, and they must go: the
    directory is a DVC output, hashed file by file.
    """
    with atomic_path(out_dir / INDEX) as tmp:
        tmp.write_text(json.dumps(index, indent=2))
    listed = {entry["file"] for entry in index["shards"]}
    for stale in out_dir.glob("*.safetensors"):
        if stale.name not in listed:
            stale.unlink()
    for part in out_dir.glob(".*.part"):
        part.unlink()


@dataclass(frozen=True)
class ShardPlan:
    """One shard to build: its file and the rows it holds, in order."""

    path: Path
    split: str
    rows: list[dict]

    @property
    def entry(self) -> dict:
        """The shard's entry in the index."""
        return {"file": self.path.name, "split": self.split, "clips": len(self.rows)}


def plan_shards(
    out_dir: Path, split: str, clips: Sequence[dict], shard_size: int
) -> list[ShardPlan]:
    """The rows of a split cut into `{split}-NNNN.safetensors` shards of `shard_size` rows."""
    return [
        ShardPlan(
            out_dir / f"{split}-{k // shard_size:04d}.safetensors",
            split,
            [dict(r) for r in clips[k : k + shard_size]],
        )
        for k in range(0, len(clips), shard_size)
    ]


def shard_is_current(plan: ShardPlan, encoding: str = "") -> bool:
    """Whether a complete shard holding the plan's rows, encoded the same way (`encoding`, a
    fingerprint of the codec and conditioning settings), is already there: the cache directory
    outlives a change of codec, and rows alone cannot tell its shards are stale."""
    meta = shard_metadata(plan.path)
    return meta is not None and meta["encoding"] == encoding and meta["clips"] == plan.rows


def encode_shard(
    plan: ShardPlan,
    encode: Callable[[list[dict]], Iterable[dict[str, Tensor]]],
    on_clip: Callable[[], None] = lambda: None,
) -> dict[str, Tensor]:
    """The plan's rows encoded and stacked: the tensors of its shard file.

    A pure function of the rows and the encoder, so any process or machine can compute any
    shard; only writing it (`write_shard`) touches the cache directory.
    """
    items = []
    for _, item in zip(plan.rows, encode(plan.rows), strict=True):
        items.append(item)
        on_clip()
    return {key: torch.stack([it[key] for it in items]) for key in items[0]}


def build_shard(
    plan: ShardPlan,
    encode: Callable[[list[dict]], Iterable[dict[str, Tensor]]],
    encoding: str = "",
    on_clip: Callable[[], None] = lambda: None,
) -> dict:
    """Encode one shard's rows and write it, unless it is current (`shard_is_current`).
    Returns its index entry."""
    if shard_is_current(plan, encoding):
        for _ in plan.rows:
            on_clip()
    else:
        write_shard(plan.path, encode_shard(plan, encode, on_clip), plan.rows, encoding)
    return plan.entry


def build_shards(
    out_dir: Path,
    split: str,
    clips: Sequence[dict],
    encode: Callable[[list[dict]], Iterable[dict[str, Tensor]]],
    shard_size: int,
    on_clip: Callable[[], None] = lambda: None,
    encoding: str = "",
) -> list[dict]:
    """Encode rows into `{split}-NNNN.safetensors` shards, one after another; reuse shards that
    already match (`build_shard`). Returns the index entries of the shards.

    `encode(rows)` yields each row's tensors in order: it gets a shard's rows at once so that
    it can decode the windows of one file in one pass.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        build_shard(plan, encode, encoding, on_clip)
        for plan in plan_shards(out_dir, split, clips, shard_size)
    ]


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
            clips += _parse(f.metadata())["clips"]
    if not clips:
        raise ValueError(f"{cache_dir / INDEX}: no clips in split {split!r}")
    cat = {k: torch.cat(v) for k, v in tensors.items()}
    batch = Batch(cat["video"], cat["audio"], cat["image"], cat["text"], cat.get("image_embedding"))
    return LatentSet(batch, clips)

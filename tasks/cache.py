"""cache: cut every accepted clip into windows of params.clip and encode them to latent shards.

A clip gives windows of `clip.duration_s` seconds every `clip.hop_s` seconds, at most
`clip.max_windows_per_clip` (`jointdit.data.windows`); a clip shorter than one window is
listed in `data/cache/rejected.csv` with code `too_short`. `data/cache/windows.csv` is the
window table the shards hold (`WindowManifest`), checked before any shard is written.

Shards are independent, so `cache.workers` / `cache.scheduler` hand their encoding to Dask
worker processes on this machine or others (infra/README.md); this process alone writes them
(temporary name, then rename) and the index, so a killed run resumes either way and the shards
are the same bit for bit as a run in one process.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from jointdit.codecs import Codec
from jointdit.conditioning import Conditioner
from jointdit.config import from_dict
from jointdit.data.manifest import (
    RejectedManifest,
    ValidatedManifest,
    WindowManifest,
    read_manifest,
    rejected_frame,
    write_manifest,
)
from jointdit.data.media import read_windows
from jointdit.data.shards import (
    ShardPlan,
    build_shards,
    encode_shard,
    plan_shards,
    shard_is_current,
    write_index,
    write_shard,
)
from jointdit.data.windows import ClipSpec
from tasks.encoding import codec_config, codec_from, conditioning_from
from tasks.logs import get_logger
from tasks.params import cli, clip_spec
from tasks.paths import CACHE, RAW, VALIDATED


def plan(clips: list[dict], spec: ClipSpec) -> tuple[list[dict], list[dict]]:
    """(window rows, rejected clips) of the validated manifest's rows.

    A window row is its clip's row plus `window` and `start_s`, with the clip's events moved to
    the window's time and cut to it ("" stays "": no ground truth).
    """
    windows, rejected = [], []
    length = spec.duration_s
    for row in clips:
        starts = spec.starts(row["duration_s"])
        if not starts:
            reason = f"{row['duration_s']:.3f} s is shorter than one {length} s window"
            rejected.append({"path": row["path"], "code": "too_short", "reason": reason})
        times = json.loads(row["events"]) if row["events"] else None
        for k, start in enumerate(starts):
            events = (
                ""
                if times is None
                else json.dumps([t - start for t in times if start <= t < start + length])
            )
            windows.append({**row, "window": k, "start_s": start, "events": events})
    return windows, rejected


def encode_windows(
    rows: list[dict], spec: ClipSpec, codec: Codec, conditioner: Conditioner
) -> Iterator[dict[str, torch.Tensor]]:
    """Each window's latents: video, first-frame image condition, audio, and the caption's
    text (and, with CLIP, the first frame's image embedding).

    Consecutive windows of one file are decoded in one pass over it.
    """
    for path, group in itertools.groupby(rows, key=lambda r: r["path"]):
        group = list(group)
        clips = read_windows(RAW / path, [r["start_s"] for r in group], spec)
        context = conditioner.encode(
            [r["caption"] for r in group], [media.frames[0] for media in clips]
        )
        for k, media in enumerate(clips):
            video = codec.encode_video(media.frames)
            yield {
                "video": video,
                "image": video[0],
                "audio": codec.encode_audio(media.audio),
                **{name: value[k] for name, value in context.items()},
            }


def window_encoder(params: dict[str, Any]) -> Callable[[list[dict]], Iterator[dict]]:
    """encode_windows with the codec and conditioner that params describe."""
    codec = codec_from(params)
    model = params["model"]
    conditioner = Conditioner(conditioning_from(params), model["text_len"], model["text_vocab"])
    spec = clip_spec(params)
    return lambda rows: encode_windows(rows, spec, codec, conditioner)


def encode_on_worker(shard: ShardPlan, params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One shard's tensors, on a Dask worker: the encoder is built there (models are not
    shipped over the wire), once per shard, which a few hundred windows amortise."""
    return encode_shard(shard, window_encoder(params))


@dataclass(frozen=True)
class CacheRun:
    """Where shards are encoded (params `cache`): here when `workers` is 0 and `scheduler` is
    empty; else on Dask, a local cluster of `workers` single-threaded processes, or the
    cluster whose scheduler listens at `scheduler` (tcp://host:8786)."""

    workers: int = 0
    scheduler: str = ""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"cache.workers: {self.workers} is negative")
        if self.workers and self.scheduler:
            raise ValueError("cache: set workers (a local cluster) or scheduler, not both")

    @property
    def distributed(self) -> bool:
        return bool(self.workers or self.scheduler)


@contextmanager
def dask_client(run: CacheRun) -> Iterator[Any]:
    """A Dask client of the cluster `run` names (imported here: a run in one process, the
    default, does not pay for Dask)."""
    from distributed import Client, LocalCluster

    # the scheduler's and nannies' INFO lines (workers joining and leaving) would bury the
    # stage's own log; their warnings and errors still show
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if run.scheduler:
        with Client(run.scheduler) as client:
            yield client
        return
    # One thread per worker: encoding holds the GIL in Python code between PyAV and torch
    # calls, so processes, not threads, use the cores.
    with (
        LocalCluster(
            n_workers=run.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def build_distributed(
    shards: list[ShardPlan],
    params: dict[str, Any],
    encoding: str,
    run: CacheRun,
    on_clips: Callable[[int], None],
) -> None:
    """Encode the shards that are not current on Dask; write each shard here as it arrives."""
    from distributed import as_completed

    todo = []
    for shard in shards:
        if shard_is_current(shard, encoding):
            on_clips(len(shard.rows))
        else:
            todo.append(shard)
    if not todo:
        return
    with dask_client(run) as client:
        get_logger().info(
            "cache: %d shards to %d Dask workers (scheduler %s)",
            len(todo),
            len(client.scheduler_info()["workers"]),
            client.scheduler.address,
        )
        futures = client.map(encode_on_worker, todo, params=params, pure=False)
        shard_of = {future.key: shard for future, shard in zip(futures, todo, strict=True)}
        for future, tensors in as_completed(futures, with_results=True):
            shard = shard_of[future.key]
            write_shard(shard.path, tensors, shard.rows, encoding)
            on_clips(len(shard.rows))


def encoding_key(params: dict[str, Any]) -> str:
    """A fingerprint of every setting that shapes a window's tensors (see shard_is_current)."""
    spec = {
        "clip": params["clip"],
        "codec": {k: v for k, v in params["codec"].items() if k != "shard_size"},
        "conditioning": params.get("conditioning"),
        "text": [params["model"]["text_vocab"], params["model"]["text_len"]],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache(params: dict[str, Any]) -> dict[str, Any]:
    log = get_logger()
    manifest = read_manifest(VALIDATED / "manifest.csv", ValidatedManifest)
    spec = clip_spec(params)
    windows, rejected = plan(manifest.to_dict("records"), spec)
    for row in rejected:
        log.warning("rejected %s [%s]: %s", row["path"], row["code"], row["reason"])
    if not windows:
        raise ValueError(f"cache: no clip is {spec.duration_s} s long (clip.duration_s)")
    CACHE.mkdir(parents=True, exist_ok=True)
    write_manifest(pd.DataFrame(windows), CACHE / "windows.csv", WindowManifest)
    write_manifest(rejected_frame(rejected), CACHE / "rejected.csv", RejectedManifest)

    run = from_dict(CacheRun, params.get("cache"), "cache")
    encoding = encoding_key(params)
    size = params["codec"]["shard_size"]
    splits = {split: [w for w in windows if w["split"] == split] for split in ("train", "val")}
    with tqdm(total=len(windows), desc="cache", dynamic_ncols=True) as bar:
        if run.distributed:
            shards = [
                shard
                for split, rows in splits.items()
                for shard in plan_shards(CACHE, split, rows, size)
            ]
            build_distributed(shards, params, encoding, run, bar.update)
            entries = [shard.entry for shard in shards]
        else:
            encode = window_encoder(params)
            entries = [
                entry
                for split, rows in splits.items()
                for entry in build_shards(
                    CACHE, split, rows, encode, size, lambda: bar.update(1), encoding
                )
            ]
    index = {
        "codec": codec_config(params).name,
        "conditioning": conditioning_from(params).encoder,
        "encoding": encoding,
        "clip": params["clip"],
        "clips": len(manifest) - len(rejected),
        "windows": len(windows),
        "shards": entries,
    }
    write_index(CACHE, index)
    log.info(
        "cache: %d windows of %d clips (%d too short) in %d shards -> %s",
        len(windows),
        index["clips"],
        len(rejected),
        len(entries),
        CACHE,
    )
    return index


if __name__ == "__main__":
    cli(cache)

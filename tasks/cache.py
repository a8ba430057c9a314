"""cache: cut every accepted clip into windows of params.clip and encode them to latent shards.

A clip gives windows of `clip.duration_s` seconds every `clip.hop_s` seconds, at most
`clip.max_windows_per_clip` (`jointdit.data.windows`); a clip shorter than one window is
listed in `data/cache/rejected.csv` with code `too_short`. `data/cache/windows.csv` is the
window table the shards hold (`WindowManifest`), checked before any shard is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from jointdit.codecs import Codec
from jointdit.conditioning import Conditioner
from jointdit.data.manifest import (
    RejectedManifest,
    ValidatedManifest,
    WindowManifest,
    read_manifest,
    rejected_frame,
    write_manifest,
)
from jointdit.data.shards import build_shards, write_index
from jointdit.data.windows import plan_windows
from tasks.encoding import codec_from, conditioning_from, read_normalised
from tasks.logs import get_logger
from tasks.params import cli
from tasks.paths import CACHE, RAW, VALIDATED


def plan(clips: list[dict], clip: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(window rows, rejected clips) of the validated manifest's rows.

    A window row is its clip's row plus `window` and `start_s`, with the clip's events moved to
    the window's time and cut to it ("" stays "": no ground truth).
    """
    windows, rejected = [], []
    length = clip["duration_s"]
    # A params file from before windows gets what it got then: one window per clip.
    hop, cap = clip.get("hop_s", length), clip.get("max_windows_per_clip", 1)
    for row in clips:
        starts = plan_windows(row["duration_s"], length, hop, cap)
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
    rows: list[dict], params: dict[str, Any], codec: Codec, conditioner: Conditioner
) -> Iterator[dict[str, torch.Tensor]]:
    """Each window's latents: video, first-frame image condition, audio, and the caption's
    text (and, with CLIP, the first frame's image embedding).

    Consecutive windows of one file are decoded in one pass over it.
    """
    for path, group in itertools.groupby(rows, key=lambda r: r["path"]):
        group = list(group)
        clips = read_normalised(RAW / path, params, [r["start_s"] for r in group])
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


def encoding_key(params: dict[str, Any]) -> str:
    """A fingerprint of every setting that shapes a window's tensors (see build_shards)."""
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
    windows, rejected = plan(manifest.to_dict("records"), params["clip"])
    for row in rejected:
        log.warning("rejected %s [%s]: %s", row["path"], row["code"], row["reason"])
    if not windows:
        raise ValueError(
            f"cache: no clip is {params['clip']['duration_s']} s long (clip.duration_s)"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    write_manifest(pd.DataFrame(windows), CACHE / "windows.csv", WindowManifest)
    write_manifest(rejected_frame(rejected), CACHE / "rejected.csv", RejectedManifest)

    codec = codec_from(params)
    model = params["model"]
    conditioner = Conditioner(conditioning_from(params), model["text_len"], model["text_vocab"])
    encoding = encoding_key(params)
    entries = []
    with tqdm(total=len(windows), desc="cache", dynamic_ncols=True) as bar:
        for split in ("train", "val"):
            entries += build_shards(
                CACHE,
                split,
                [w for w in windows if w["split"] == split],
                lambda rows: encode_windows(rows, params, codec, conditioner),
                params["codec"]["shard_size"],
                on_clip=lambda: bar.update(1),
                encoding=encoding,
            )
    index = {
        "codec": codec.name,
        "conditioning": conditioner.cfg.encoder,
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

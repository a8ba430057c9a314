"""cache: normalise every accepted clip to params.clip and encode it to latent shards."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from jointdit.codecs import Codec
from jointdit.data.manifest import ValidatedManifest, read_manifest
from jointdit.data.shards import build_shards, write_index
from jointdit.text import tokenize
from tasks.common import CACHE, RAW, VALIDATED, cli, codec_from, get_logger, read_normalised


def encode_clip(row: dict, params: dict[str, Any], codec: Codec) -> dict[str, torch.Tensor]:
    """One clip's latents: video, first-frame image condition, audio and caption tokens."""
    media = read_normalised(RAW / row["path"], params)
    video = codec.encode_video(media.frames)
    model = params["model"]
    return {
        "video": video,
        "image": video[0],
        "audio": codec.encode_audio(media.audio),
        "text": tokenize([row["caption"]], model["text_vocab"], model["text_len"])[0],
    }


def cache(params: dict[str, Any]) -> dict[str, Any]:
    manifest = read_manifest(VALIDATED / "manifest.csv", ValidatedManifest)
    codec = codec_from(params)
    rows = manifest.to_dict("records")
    entries = []
    with tqdm(total=len(rows), desc="cache", dynamic_ncols=True) as bar:
        for split in ("train", "val"):
            split_rows = [r for r in rows if r["split"] == split]
            entries += build_shards(
                CACHE,
                split,
                split_rows,
                lambda row: encode_clip(row, params, codec),
                params["codec"]["shard_size"],
                on_clip=lambda: bar.update(1),
            )
    index = {"codec": params["codec"]["name"], "clip": params["clip"], "shards": entries}
    write_index(CACHE, index)
    get_logger().info("cache: %d clips in %d shards -> %s", len(rows), len(entries), CACHE)
    return index


if __name__ == "__main__":
    cli(cache)

import hashlib
import json

import pandas as pd
import pytest

from jointdit.data.manifest import RawManifest, ValidationConfig, read_manifest
from jointdit.data.sources import fetch_folder, fetch_synthetic, write_raw
from jointdit.data.synthetic import SyntheticConfig, make_clip
from jointdit.data.validation import validate


@pytest.fixture
def src(tmp_path):
    # fetch_folder never opens files as media, so arbitrary bytes stand in for clips here.
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"clip a")
    (root / "a.txt").write_text("  a red ball bounces \n")
    (root / "sub" / "b.MOV").write_bytes(b"clip b")
    (root / "empty.mkv").write_bytes(b"")
    (root / "notes.txt").write_text("not a clip")
    (root / "sound.wav").write_bytes(b"not a video")
    return root


def test_fetch_folder_copies_and_lists_every_video_file(src, tmp_path):
    raw_dir = tmp_path / "raw"
    df = fetch_folder(src, raw_dir)

    assert list(df["path"]) == ["clips/a.mp4", "clips/empty.mkv", "clips/sub/b.MOV"]
    for row in df.itertuples():
        copy = raw_dir / row.path
        original = src / row.path.removeprefix("clips/")
        assert copy.read_bytes() == original.read_bytes()
        assert row.sha256 == hashlib.sha256(original.read_bytes()).hexdigest()
        assert row.size_bytes == original.stat().st_size
    assert list(df["caption"]) == ["a red ball bounces", "", ""]
    assert set(df["events"]) == {""}
    # Atomic copies leave no temporaries behind.
    assert sorted(p.name for p in (raw_dir / "clips").rglob("*") if p.is_file()) == [
        "a.mp4",
        "b.MOV",
        "empty.mkv",
    ]


def test_fetch_folder_is_deterministic_and_round_trips(src, tmp_path):
    first = fetch_folder(src, tmp_path / "raw")
    second = fetch_folder(src, tmp_path / "raw")
    pd.testing.assert_frame_equal(first, second)

    path = write_raw(first, tmp_path / "raw")
    assert path == tmp_path / "raw" / "manifest.csv"
    pd.testing.assert_frame_equal(read_manifest(path), RawManifest.validate(first))


def test_fetch_folder_of_nothing_is_an_empty_valid_manifest(tmp_path):
    (tmp_path / "src").mkdir()
    df = fetch_folder(tmp_path / "src", tmp_path / "raw")
    assert len(df) == 0
    RawManifest.validate(df)


def test_fetch_synthetic_writes_clips_that_validate(tmp_path):
    cfg = SyntheticConfig(num_clips=3, duration_s=1.5)
    raw_dir = tmp_path / "raw"
    df = fetch_synthetic(cfg, raw_dir)

    assert list(df["path"]) == [f"clips/synthetic_{i:05d}.mp4" for i in range(3)]
    assert set(df["source"]) == {"synthetic"}
    for i, row in enumerate(df.itertuples()):
        clip = make_clip(cfg, i)
        assert json.loads(row.events) == [impact.time_s for impact in clip.impacts]
        assert row.caption == clip.caption
        assert row.size_bytes == (raw_dir / row.path).stat().st_size > 0

    result = validate(read_manifest(write_raw(df, raw_dir)), raw_dir, ValidationConfig())
    assert result.rejected.empty, result.rejected.to_dict("records")
    assert list(result.accepted["path"]) == list(df["path"])
    assert list(result.accepted["events"]) == list(df["events"])

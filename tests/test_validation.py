import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from jointdit.data.manifest import (
    ManifestError,
    RawManifest,
    ValidatedManifest,
    ValidationConfig,
    read_manifest,
    resolve_inside,
    write_manifest,
)
from jointdit.data.media import write_clip
from jointdit.data.sources import fetch_folder
from jointdit.data.validation import (
    MEASURED_COLUMNS,
    assign_split,
    audio_loudness,
    excerpt_windows,
    gx_report,
    validate,
)
from tasks.validate import validation_config

GOOD = [f"clips/good{i}.mp4" for i in range(4)]
EXPECTED_REJECTIONS = {
    "corrupt.mp4": "unreadable",  # refused at fetch: not media, so never copied
    "empty.mp4": "empty_file",
    "clips/quiet.mp4": "silent",
    "clips/short.mp4": "too_short",
    "clips/video_only.mp4": "no_audio",
    "clips/zz_copy_of_good0.mp4": "duplicate",
}


def _write(path, duration_s=1.5, audio=True, seed=0, amplitude=0.3):
    fps, sr = 8.0, 16000
    frames = np.random.default_rng(seed).integers(0, 256, (round(duration_s * fps), 32, 32, 3))
    t = np.arange(round(duration_s * sr)) / sr
    sound = (amplitude * np.sin(2 * np.pi * (220 + 40 * seed) * t))[None].astype(np.float32)
    write_clip(path, frames.astype(np.uint8), fps, sound if audio else None, sr)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    src = root / "src"
    src.mkdir()
    for i in range(4):
        _write(src / f"good{i}.mp4", seed=i)
    for i in (1, 2, 3):
        (src / f"good{i}.txt").write_text("a tone and noise")
    _write(src / "video_only.mp4", audio=False)
    _write(src / "quiet.mp4", amplitude=0.0)
    _write(src / "short.mp4", duration_s=0.3)
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (src / "empty.mp4").write_bytes(b"")
    shutil.copy(src / "good0.mp4", src / "zz_copy_of_good0.mp4")
    raw_dir = root / "raw"
    fetched = fetch_folder(src, raw_dir)
    result = validate(fetched.manifest, raw_dir, ValidationConfig(), fetched.rejected)
    return fetched, raw_dir, result


def test_accepts_exactly_the_good_clips(folder):
    _, _, result = folder
    assert list(result.accepted["path"]) == GOOD
    ValidatedManifest.validate(result.accepted)
    assert result.accepted.set_index("path").at["clips/good1.mp4", "caption"] == "a tone and noise"
    assert result.accepted["has_audio"].all()


def test_rejects_each_bad_file_with_its_code_and_name(folder):
    fetched, _, result = folder
    assert dict(zip(result.rejected["path"], result.rejected["code"], strict=True)) == (
        EXPECTED_REJECTIONS
    )
    for row in result.rejected.itertuples():
        assert row.path in row.reason
    reasons = result.rejected.set_index("path")["reason"]
    assert "0.250 s long, shorter than the 1.0 s minimum" in reasons["clips/short.mp4"]
    assert "-120.0 dBFS RMS, below -60.0 dBFS" in reasons["clips/quiet.mp4"]
    assert len(result.accepted) + len(result.rejected) == len(fetched.manifest) + 2


def test_split_has_both_sides_and_is_stable(folder):
    _, _, result = folder
    assert set(result.accepted["split"]) == {"train", "val"}

    paths = pd.Series([f"clips/clip{i:03d}.mp4" for i in range(200)])
    split = assign_split(paths, 0.125, seed=0)
    assert 10 <= (split == "val").sum() <= 40
    # Adding clips does not move existing ones.
    pd.testing.assert_series_equal(assign_split(paths[:150], 0.125, seed=0), split[:150])
    assert not split.equals(assign_split(paths, 0.125, seed=1))
    # A clip whose file is rewritten (new bytes, same path) stays on its side.
    first = result.accepted.iloc[[0]]
    rewritten = first.assign(sha256="f" * 64)
    assert assign_split(rewritten["path"], 0.125, 0).iloc[0] == first["split"].iloc[0]
    # Two clips are always split one and one, even when the fraction says otherwise.
    for fraction in (0.0, 1.0):
        assert sorted(assign_split(paths[:2], fraction, seed=0)) == ["train", "val"]


def test_report_counts_match_and_serialise(folder):
    fetched, _, result = folder
    report = json.loads(json.dumps(result.report, allow_nan=False))
    assert report["n_inputs"] == len(fetched.manifest) + len(fetched.rejected) == 10
    assert report["n_accepted"] == 4
    assert report["n_rejected"] == 6
    assert report["n_rejected_at_fetch"] == 2
    assert report["n_train"] + report["n_val"] == 4
    assert report["rejected_by_code"] == {
        "duplicate": 1,
        "empty_file": 1,
        "no_audio": 1,
        "silent": 1,
        "too_short": 1,
        "unreadable": 1,
    }
    gx = report["gx"]
    assert isinstance(gx["success"], bool)
    assert all(isinstance(e["success"], bool) for e in gx["expectations"])
    # The report covers every probed clip, so the video-only, quiet and short ones show up as
    # failures, and 3 captions of 7 probed clips fall short of the captioned half.
    failing = {(e["type"], e["column"]) for e in gx["expectations"] if not e["success"]}
    assert failing == {
        ("expect_column_values_to_be_in_set", "has_audio"),
        ("expect_column_values_to_be_between", "duration_s"),
        ("expect_column_values_to_be_between", "sample_rate"),
        ("expect_column_values_to_be_between", "loudness_dbfs"),
        ("expect_column_value_lengths_to_be_between", "caption"),
    }
    profile = gx["profile"]
    assert profile["fps"] == {"8.0": 7}
    assert profile["sample_rate"] == {"16000": 6}  # the video-only clip has none
    assert profile["caption_fraction"] == pytest.approx(3 / 7)
    assert profile["duration_s"]["min"] == 0.25  # 0.3 s at 8 fps: 2 frames
    assert profile["duration_s"]["max"] == pytest.approx(1.5, abs=0.01)
    assert profile["loudness_dbfs"]["min"] == -120.0


def test_gx_report_flags_a_violating_table(folder):
    _, _, result = folder
    table = result.accepted.drop(columns="split").assign(**dict.fromkeys(MEASURED_COLUMNS, -20.0))
    assert gx_report(table, ValidationConfig())["success"] is True

    bad = table.assign(fps=[8.0, 8.0, 8.0, 240.0])
    report = gx_report(bad, ValidationConfig())
    assert report["success"] is False
    (fps,) = [e for e in report["expectations"] if e["column"] == "fps"]
    assert fps["success"] is False
    assert fps["unexpected_count"] == 1
    assert fps["partial_unexpected_list"] == [240.0]


def test_checksum_path_and_missing_file_rejections(folder):
    fetched, raw_dir, _ = folder
    raw = fetched.manifest
    tampered = raw[raw["path"].isin(GOOD[:3])].reset_index(drop=True)
    tampered.loc[0, "sha256"] = "0" * 64
    tampered.loc[1, "path"] = "../../etc/passwd"
    tampered.loc[2, "path"] = "clips/gone.mp4"
    result = validate(tampered, raw_dir, ValidationConfig())
    assert list(result.rejected["code"]) == ["checksum_mismatch", "path_escape", "missing_file"]
    assert result.accepted.empty


def test_thresholds_come_from_the_config(folder):
    fetched, raw_dir, _ = folder
    raw = fetched.manifest
    good = raw[raw["path"].isin(GOOD)]
    result = validate(good, raw_dir, ValidationConfig(min_fps=10.0))
    assert set(result.rejected["code"]) == {"schema"}
    assert all("fps" in reason for reason in result.rejected["reason"])


def test_resolve_inside_refuses_escapes(tmp_path):
    root = tmp_path / "raw"
    (root / "clips").mkdir(parents=True)
    assert resolve_inside(root, "clips/a.mp4") == (root / "clips" / "a.mp4").resolve()
    for bad in ("../../etc/passwd", "/etc/passwd", "clips/../../x.mp4"):
        with pytest.raises(ValueError, match=r"x\.mp4|passwd"):
            resolve_inside(root, bad)
    os.symlink(tmp_path, root / "clips" / "out")
    with pytest.raises(ValueError, match="out"):
        resolve_inside(root, "clips/out/secret.mp4")


def _raw_table():
    return pd.DataFrame(
        {
            "path": ["clips/a.mp4", "clips/b.mp4"],
            "sha256": ["1" * 64, "ab" * 32],
            "size_bytes": [10, 0],
            "caption": ["", "1.0"],  # empty and number-like captions must stay text
            "events": ["[0.5, 1.25]", ""],
            "source": ["folder", "folder"],
        }
    )


def test_manifest_csv_round_trip(tmp_path):
    df = _raw_table()
    write_manifest(df, tmp_path / "manifest.csv")
    back = read_manifest(tmp_path / "manifest.csv")
    pd.testing.assert_frame_equal(back, RawManifest.validate(df))
    assert list(back["caption"]) == ["", "1.0"]
    assert list(tmp_path.iterdir()) == [tmp_path / "manifest.csv"]


def test_write_manifest_refuses_an_invalid_table(tmp_path):
    path = tmp_path / "manifest.csv"
    bad = _raw_table().assign(sha256=["not-hex", "ab" * 32], events=["[-1]", "nope"])
    with pytest.raises(ManifestError, match=str(path)) as err:
        write_manifest(bad, path)
    assert "sha256" in str(err.value) and "events" in str(err.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_read_manifest_names_the_file_it_rejects(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("path,sha256\nclips/a.mp4,abc\n")
    with pytest.raises(ManifestError, match=str(path)):
        read_manifest(path)


def test_fetch_refusals_are_merged_and_counted(folder):
    fetched, raw_dir, _ = folder
    raw = fetched.manifest
    refused = pd.DataFrame(
        [{"path": "../x.mp4", "code": "path_escape", "reason": "'../x.mp4' leaves the folder"}]
    )
    result = validate(raw, raw_dir, ValidationConfig(), refused)
    assert result.rejected.iloc[0].to_dict() == refused.iloc[0].to_dict()
    assert result.report["n_inputs"] == len(raw) + 1 == len(result.accepted) + len(result.rejected)
    assert result.report["rejected_by_code"]["path_escape"] == 1


def test_the_training_window_is_the_shortest_clip():
    params = {"validate": {"min_duration_s": 1.0}, "clip": {"duration_s": 2.0}}
    assert validation_config(params).min_duration_s == 2.0
    params["validate"]["min_duration_s"] = 3.0
    assert validation_config(params).min_duration_s == 3.0


def test_excerpts_bound_the_audio_decoded():
    assert excerpt_windows(3.0, 4, 1.0) == [(0.0, 3.0)]
    assert excerpt_windows(4.0, 4, 1.0) == [(0.0, 4.0)]
    three_hours = excerpt_windows(10_800.0, 4, 1.0)
    assert [start for start, _ in three_hours] == pytest.approx([0, 3599.667, 7199.333, 10_799])
    assert {length for _, length in three_hours} == {1.0}


def test_loudness_is_the_rms_of_the_signal(folder):
    _, raw_dir, _ = folder
    good = audio_loudness(raw_dir / "clips" / "good0.mp4", 1.5, 4, 1.0)
    assert good.dbfs == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=1.0)
    assert good.seconds == pytest.approx(1.5, abs=0.2)
    quiet = audio_loudness(raw_dir / "clips" / "quiet.mp4", 1.5, 4, 1.0)
    assert quiet.dbfs == -120.0

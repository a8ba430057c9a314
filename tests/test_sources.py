import hashlib
import json
import os

import pandas as pd
import pytest

from jointdit.data.manifest import RawManifest, RejectedManifest, ValidationConfig, read_manifest
from jointdit.data.sources import FETCH_REJECTED_NAME, fetch_folder, fetch_synthetic, write_raw
from jointdit.data.synthetic import SyntheticConfig, make_clip
from jointdit.data.validation import validate
from tests.media_files import write


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Clips under any name (one without a video extension), a sidecar, and files that are
    no clips whatever their names say."""
    root = tmp_path_factory.mktemp("src")
    (root / "sub").mkdir()
    write(root / "a.mp4")
    (root / "a.txt").write_text("  a red ball bounces \n")
    write(root / "sub" / "b.MOV", fmt="mov")
    write(root / "c.M4V", fmt="mp4", fps=10)
    write(root / "really_a_video.dat", fmt="matroska")
    (root / "empty.mkv").write_bytes(b"")
    (root / "notes.txt").write_text("not a clip")
    write(root / "sound.wav", video=None, audio="pcm_s16le")
    return root


def test_fetch_folder_copies_and_lists_every_video_file(src, tmp_path):
    raw_dir = tmp_path / "raw"
    fetched = fetch_folder(src, raw_dir)
    df = fetched.manifest

    assert list(df["path"]) == [
        "clips/a.mp4",
        "clips/c.M4V",
        "clips/really_a_video.dat",
        "clips/sub/b.MOV",
    ]
    for row in df.itertuples():
        copy = raw_dir / row.path
        original = src / row.path.removeprefix("clips/")
        assert copy.read_bytes() == original.read_bytes()
        assert row.sha256 == hashlib.sha256(original.read_bytes()).hexdigest()
        assert row.size_bytes == original.stat().st_size
    # The clip in sub/ is labelled by its folder, and the label captions it.
    assert list(df["caption"]) == ["a red ball bounces", "", "", "a video of sub"]
    assert list(df["label"]) == ["", "", "", "sub"]
    assert set(df["events"]) == {""}
    # Everything else is refused by content, named, and never copied; the sidecar is a caption.
    refused = fetched.rejected
    assert list(zip(refused["path"], refused["code"], strict=True)) == [
        ("empty.mkv", "empty_file"),
        ("notes.txt", "unreadable"),
        ("sound.wav", "no_video"),
    ]
    assert list(refused["reason"].str.slice(0, 36)) == [
        "empty.mkv: file is empty",
        "notes.txt: not a media file FFmpeg c",
        "sound.wav: no video stream (audio on",
    ]
    # Atomic copies leave no temporaries behind.
    assert sorted(p.name for p in (raw_dir / "clips").rglob("*") if p.is_file()) == [
        "a.mp4",
        "b.MOV",
        "c.M4V",
        "really_a_video.dat",
    ]


def test_fetch_folder_is_deterministic_and_round_trips(src, tmp_path):
    first = fetch_folder(src, tmp_path / "raw").manifest
    second = fetch_folder(src, tmp_path / "raw").manifest
    pd.testing.assert_frame_equal(first, second)

    path = write_raw(first, tmp_path / "raw")
    assert path == tmp_path / "raw" / "manifest.csv"
    pd.testing.assert_frame_equal(read_manifest(path), RawManifest.validate(first))
    # Written even with nothing refused, so an earlier fetch's refusals never linger.
    assert read_manifest(tmp_path / "raw" / FETCH_REJECTED_NAME, RejectedManifest).empty


def test_fetch_folder_of_nothing_is_an_empty_valid_manifest(tmp_path):
    (tmp_path / "src").mkdir()
    fetched = fetch_folder(tmp_path / "src", tmp_path / "raw")
    assert len(fetched.manifest) == 0 and len(fetched.rejected) == 0
    RawManifest.validate(fetched.manifest)
    RejectedManifest.validate(fetched.rejected)


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


def test_captions_csv_sidecars_and_labels(tmp_path):
    root = tmp_path / "src"
    for name in ("dog_bark/x.mp4", "dog_bark/y.mp4", "rain/z.webm", "top.avi"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        webm = name.endswith("webm")
        write(root / name, video="libvpx" if webm else "mpeg4", audio="libopus" if webm else "mp2")
    (root / "dog_bark" / "y.txt").write_text("the sidecar wins")
    (root / "captions.csv").write_text(
        "path,caption\n"
        "dog_bark/x.mp4,  a dog barks \n"
        "dog_bark/y.mp4,the csv loses\n"
        "./top.avi,a clip at the root\n"
        "gone.mp4,no such clip\n"
    )
    fetched = fetch_folder(root, tmp_path / "raw")
    table = fetched.manifest.set_index("path")
    assert dict(table["caption"]) == {
        "clips/dog_bark/x.mp4": "a dog barks",
        "clips/dog_bark/y.mp4": "the sidecar wins",
        "clips/rain/z.webm": "a video of rain",
        "clips/top.avi": "a clip at the root",
    }
    assert dict(table["label"]) == {
        "clips/dog_bark/x.mp4": "dog_bark",
        "clips/dog_bark/y.mp4": "dog_bark",
        "clips/rain/z.webm": "rain",
        "clips/top.avi": "",
    }
    assert fetched.rejected.to_dict("records") == [
        {
            "path": "gone.mp4",
            "code": "missing_file",
            "reason": f"captions.csv names 'gone.mp4', which is not a file in {root}",
        }
    ]
    uncaptioned = fetch_folder(root, tmp_path / "raw2", label_captions=False).manifest
    assert uncaptioned.set_index("path").at["clips/rain/z.webm", "caption"] == ""


def test_paths_leaving_the_folder_are_refused_and_never_read(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"not yours")
    (tmp_path / "secret.txt").write_text("not yours either")
    write(root / "ok.mp4")
    os.symlink(tmp_path / "secret.mp4", root / "link.mp4")
    os.symlink(tmp_path / "secret.txt", root / "ok.txt")  # a sidecar that leaves the folder
    (root / "captions.csv").write_text(
        "path,caption\n../secret.mp4,x\n/etc/passwd,y\nok.mp4,an honest caption\n"
    )
    raw_dir = tmp_path / "raw"
    fetched = fetch_folder(root, raw_dir)

    assert list(fetched.manifest["path"]) == ["clips/ok.mp4"]
    assert fetched.manifest["caption"].iloc[0] == "an honest caption"
    assert list(zip(fetched.rejected["path"], fetched.rejected["code"], strict=True)) == [
        ("../secret.mp4", "path_escape"),
        ("/etc/passwd", "path_escape"),
        ("link.mp4", "path_escape"),
        ("ok.txt", "path_escape"),
    ]
    for row in fetched.rejected.itertuples():
        assert row.path in row.reason
    assert sorted(p.name for p in raw_dir.rglob("*")) == ["clips", "ok.mp4"]

    write_raw(fetched.manifest, raw_dir, fetched.rejected)
    back = read_manifest(raw_dir / FETCH_REJECTED_NAME, RejectedManifest)
    pd.testing.assert_frame_equal(back, RejectedManifest.validate(fetched.rejected))


@pytest.mark.parametrize(
    ("text", "match"),
    [("file,text\na.mp4,x\n", "needs columns"), ("path,caption\na.mp4,x\na.mp4,y\n", "a.mp4")],
)
def test_a_malformed_captions_csv_is_an_error_naming_it(tmp_path, text, match):
    root = tmp_path / "src"
    root.mkdir()
    (root / "captions.csv").write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        fetch_folder(root, tmp_path / "raw")
    assert "captions.csv" in str(err.value)

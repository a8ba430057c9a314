"""`jointdit footage`'s offline parts: archives read safely, films cut at key frames.

Downloading is pip's (`jointdit footage` is documented, never run by tests: no network at test
time); what it does with the archives is tested here on small ones made in the test.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest

from jointdit.data import footage
from jointdit.data.media import probe, read_windows
from jointdit.data.windows import ClipSpec
from tests.media_files import clicks, write


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def archives(tmp_path) -> tuple[Path, Path, bytes]:
    """A .tar.gz and a .zip holding `inner/clip.bin`, and its bytes."""
    data = np.random.default_rng(0).bytes(3000)
    tar_path = tmp_path / "a.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo("inner/clip.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    zip_path = tmp_path / "a.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr("inner/clip.bin", data)
    return tar_path, zip_path, data


def test_members_are_taken_by_name_and_checked(archives, tmp_path):
    tar_path, zip_path, data = archives
    for take, archive in ((footage._from_tar, tar_path), (footage._from_zip, zip_path)):
        target = tmp_path / f"out_{archive.suffix}"
        assert take(archive, "inner/clip.bin", target, sha(data)) == target
        assert target.read_bytes() == data
        with pytest.raises(ValueError, match="sha256"):
            take(archive, "inner/clip.bin", tmp_path / "other", "0" * 64)
        with pytest.raises(KeyError):
            take(archive, "../etc/passwd", tmp_path / "x", sha(data))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_no_member_larger_than_allowed_is_read(archives, tmp_path, monkeypatch):
    tar_path, zip_path, data = archives
    monkeypatch.setattr(footage, "MAX_MEMBER_BYTES", len(data) - 1)
    for take, archive in ((footage._from_tar, tar_path), (footage._from_zip, zip_path)):
        with pytest.raises(ValueError, match="more than the"):
            take(archive, "inner/clip.bin", tmp_path / "big", sha(data))
        assert not (tmp_path / "big").exists()


def test_a_member_longer_than_its_stated_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not the 10 bytes"):
        footage._copy_capped(io.BytesIO(b"x" * 11), tmp_path / "t", 10, "a member")
    with pytest.raises(ValueError, match="not the 10 bytes"):
        footage._copy_capped(io.BytesIO(b"x" * 9), tmp_path / "t", 10, "a member")
    assert list(tmp_path.iterdir()) == []


def test_a_film_is_cut_at_key_frames_without_re_encoding(tmp_path):
    film = write(
        tmp_path / "film.mp4", 20.0, fps=8, gop=16, rate=44100, sound=clicks(20.0, 44100, (7.3,))
    )
    parts = footage.cut_at_key_frames(film, tmp_path / "parts", 6.0, "film")
    assert [p.name for p in parts] == [f"film_part0{k}.mp4" for k in (1, 2, 3, 4)]
    durations = [probe(p).duration_s for p in parts]
    # Key frames every 2 s: parts of 6 s, the rest in the last.
    np.testing.assert_allclose(durations, [6.0, 6.0, 6.0, 2.0], atol=0.01)
    with av.open(str(film)) as source:
        original = [bytes(p) for p in source.demux(video=0) if p.size]
    copied = []
    for part in parts:
        with av.open(str(part)) as container:
            packets = [p for p in container.demux(video=0) if p.size]
            assert packets[0].is_keyframe and packets[0].pts == 0
            copied += [bytes(p) for p in packets]
    assert copied == original  # the same compressed pictures, in order
    # The sound went along, in sync: the click at 7.3 s is 1.3 s into the second part.
    audio = read_windows(
        parts[1], [0.0], ClipSpec(2.0, fps=8.0, width=16, height=16, sample_rate=16000)
    )[0].audio
    assert abs(int(np.argmax(np.abs(audio))) / 16000 - 1.3) < 0.03

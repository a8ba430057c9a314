"""Codecs: media <-> latents. A video codec and an audio codec, chosen separately in params
(`codec.video`, `codec.audio`), behind one interface; `patch` needs no weights (the default);
`hifigan` (audio) decodes with the universal HiFi-GAN vocoder, for real sound.

`build_codec` is the one builder: the cache, train and evaluate steps and the served model all
call it with the same `codec` params, so serving decodes with exactly the codec training used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import Tensor

from jointdit.codecs.audioldm2 import AudioLDM2AudioCodec, AudioLDM2CodecConfig
from jointdit.codecs.hifigan import HiFiGANAudioCodec, HiFiGANCodecConfig
from jointdit.codecs.patch import PatchCodec, PatchCodecConfig
from jointdit.codecs.svd import SVDCodecConfig, SVDVideoCodec

VIDEO_CODECS = ("patch", "svd")
AUDIO_CODECS = ("patch", "audioldm2", "hifigan")


class VideoCodec(Protocol):
    name: str

    @property
    def video_channels(self) -> int: ...

    def encode_video(self, frames: np.ndarray) -> Tensor: ...

    def decode_video(self, latents: Tensor) -> np.ndarray: ...


class AudioCodec(Protocol):
    name: str
    audio_decoder: str  # how latents become a waveform: "hifigan" | "griffin-lim"

    @property
    def audio_channels(self) -> int: ...

    @property
    def audio_bins(self) -> int: ...

    @property
    def audio_frame_rate(self) -> float: ...

    def encode_audio(self, wave: np.ndarray) -> Tensor: ...

    def decode_audio(self, latents: Tensor) -> np.ndarray: ...


class Codec(VideoCodec, AudioCodec, Protocol):
    """encode_video: uint8 (T, H, W, 3) -> float32 (T, C, h, w); decode_video the inverse.
    encode_audio: float (S,) -> float32 (Ca, F, L), L frames at `audio_frame_rate` Hz;
    decode_audio the inverse, float32 (S,)."""


@dataclass(frozen=True)
class CodecConfig:
    video: str = "patch"  # patch | svd
    audio: str = "patch"  # patch | audioldm2 | hifigan
    shard_size: int = 256  # windows per latent shard (the cache stage)
    patch: PatchCodecConfig = field(default_factory=PatchCodecConfig)
    svd: SVDCodecConfig = field(default_factory=SVDCodecConfig)
    audioldm2: AudioLDM2CodecConfig = field(default_factory=AudioLDM2CodecConfig)
    hifigan: HiFiGANCodecConfig = field(default_factory=HiFiGANCodecConfig)

    @property
    def name(self) -> str:
        """The pair's name, as the cache index and checkpoints record it: "patch",
        "svd+audioldm2"."""
        return self.video if self.video == self.audio else f"{self.video}+{self.audio}"


class CodecPair:
    """A video codec and an audio codec as one `Codec`."""

    def __init__(self, video: VideoCodec, audio: AudioCodec):
        self.video, self.audio = video, audio
        self.name = CodecConfig(video.name, audio.name).name
        self.audio_decoder = audio.audio_decoder

    @property
    def video_channels(self) -> int:
        return self.video.video_channels

    @property
    def audio_channels(self) -> int:
        return self.audio.audio_channels

    @property
    def audio_bins(self) -> int:
        return self.audio.audio_bins

    @property
    def audio_frame_rate(self) -> float:
        return self.audio.audio_frame_rate

    def encode_video(self, frames: np.ndarray) -> Tensor:
        return self.video.encode_video(frames)

    def decode_video(self, latents: Tensor) -> np.ndarray:
        return self.video.decode_video(latents)

    def encode_audio(self, wave: np.ndarray) -> Tensor:
        return self.audio.encode_audio(wave)

    def decode_audio(self, latents: Tensor) -> np.ndarray:
        return self.audio.decode_audio(latents)


def build_codec(cfg: CodecConfig, sample_rate: int) -> Codec:
    """The codec pair `cfg` names, for clips at `sample_rate` Hz."""
    if cfg.video not in VIDEO_CODECS:
        raise ValueError(f"unknown video codec {cfg.video!r}; available: {', '.join(VIDEO_CODECS)}")
    if cfg.audio not in AUDIO_CODECS:
        raise ValueError(f"unknown audio codec {cfg.audio!r}; available: {', '.join(AUDIO_CODECS)}")
    patch = None
    if "patch" in (cfg.video, cfg.audio):  # one instance when it serves both
        patch = PatchCodec(dataclasses.replace(cfg.patch, sample_rate=sample_rate))
    video = SVDVideoCodec(cfg.svd) if cfg.video == "svd" else patch
    if cfg.audio == "audioldm2":
        audio = AudioLDM2AudioCodec(cfg.audioldm2, sample_rate)
    elif cfg.audio == "hifigan":
        audio = HiFiGANAudioCodec(cfg.hifigan, sample_rate)
    else:
        audio = patch
    return CodecPair(video, audio)

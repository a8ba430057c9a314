import math

import numpy as np
import pytest

from jointdit.metrics.fidelity import psnr, ssim

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def _image(seed: int = 0, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    """A smooth gradient with texture, kept clear of 0 and 255 so added noise is not clipped."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    base = 60 + 2 * rows + 1.5 * cols + rng.uniform(0, 40, shape[:2])
    return np.round(base[..., None] + np.arange(shape[2]) * 10).astype(np.uint8)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of 2-D images, window by window, straight from the paper's weighted statistics."""
    offsets = np.arange(11) - 5
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    weights /= weights.sum()
    scores = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11].astype(float), y[i : i + 11, j : j + 11]
            mx, my = np.sum(weights * px), np.sum(weights * py)
            vx, vy = np.sum(weights * (px - mx) ** 2), np.sum(weights * (py - my) ** 2)
            cxy = np.sum(weights * (px - mx) * (py - my))
            scores.append(
                (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
            )
    return float(np.mean(scores))


def test_identical_images_are_perfect():
    image = _image()
    assert psnr(image, image.copy()) == math.inf
    assert ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("d", [1, 5, 20])
def test_psnr_of_constant_difference(d):
    image = _image()
    # MSE is d^2, so 10 log10(255^2 / d^2) = 20 log10(255 / d).
    assert psnr(image, image + np.uint8(d)) == pytest.approx(20 * math.log10(255 / d), abs=1e-12)


def test_psnr_hand_worked_value():
    # d = 5: 20 log10(51) = 34.1514 dB.
    a, b = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 5, np.uint8)
    assert psnr(a, b) == pytest.approx(34.1514, abs=1e-4)


def test_psnr_does_not_wrap_uint8():
    # uint8 subtraction would wrap 0 - 255 to 1; in float64 the error is the full range: 0 dB.
    assert psnr(np.zeros((3, 3), np.uint8), np.full((3, 3), 255, np.uint8)) == 0.0


def test_ssim_of_two_constant_images():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = np.full((32, 32, 3), 110, np.uint8)
    # No variance: the structure term is C2 / C2 = 1 and only luminance remains,
    # (2 * 100 * 110 + 6.5025) / (100^2 + 110^2 + 6.5025) = 22006.5025 / 22106.5025.
    assert ssim(a, b) == pytest.approx(22006.5025 / 22106.5025, abs=1e-12)
    assert ssim(a, b) == pytest.approx(0.9954764, abs=1e-7)


def test_ssim_matches_window_by_window_computation():
    x = _image(1, (16, 14, 1))[..., 0]
    y = np.clip(x + np.random.default_rng(2).normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    expected = _ssim_by_hand(x, y)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-12)
    assert expected < 0.95  # the noise is strong enough for the check to mean something
    # Per channel, then averaged: a second channel with a perfect copy averages with 1.
    stacked = ssim(np.stack([x, x], -1), np.stack([y, x], -1))
    assert stacked == pytest.approx((expected + 1) / 2, abs=1e-12)


def test_ssim_is_symmetric():
    a, b = _image(3), _image(4)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-15)
    assert ssim(a, b) < 0.9


def test_increasing_noise_lowers_both_scores():
    image = _image()
    unit = np.random.default_rng(5).standard_normal(image.shape)
    noisy = [np.clip(np.round(image + s * unit), 0, 255).astype(np.uint8) for s in (2, 5, 10, 20)]
    psnrs = [psnr(image, n) for n in noisy]
    ssims = [ssim(image, n) for n in noisy]
    assert all(np.diff(psnrs) < 0)
    assert all(np.diff(ssims) < 0)
    assert psnrs[0] == pytest.approx(20 * math.log10(255 / 2), abs=0.3)  # MSE ~ sigma^2


def test_small_images_use_a_window_that_fits():
    a = _image(6, (6, 8, 3))
    b = np.clip(a.astype(int) + 7, 0, 255).astype(np.uint8)
    score = ssim(a, b)
    assert 0.0 < score < 1.0
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # A 1x1 image has a 1x1 window: SSIM is the luminance term of the two pixel values.
    one = ssim(np.full((1, 1), 100, np.uint8), np.full((1, 1), 110, np.uint8))
    assert one == pytest.approx(22006.5025 / 22106.5025, abs=1e-12)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((32, 32, 3)), np.zeros((32, 32, 1)))

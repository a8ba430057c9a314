import librosa
import numpy as np
import pytest
import soundfile
from scipy.linalg import sqrtm

from jointdit.metrics.frechet import (
    frames_embedding,
    frechet_distance,
    kernel_distance,
    logmel_embedding,
)
from jointdit.metrics.sync import (
    audio_onsets,
    audio_onsets_fine,
    av_align,
    av_align_fine,
    event_iou,
    event_iou_fine,
    flow_magnitudes,
    onset_f1,
    peak_times,
    video_peaks,
    video_peaks_fine,
)

FPS = 8.0
SR = 16000
SIZE = 32
N_FRAMES = 32  # 4 s
SQUARE = 6
FLOOR = 28  # the square's bottom row at impact; a gap below keeps it off the frame border
DROP = 10.0  # pixels between apex and floor: at most 4 px per frame, under the square's size
IMPACTS = 0.55 + np.arange(4.0)  # one bounce a second, between frames 4 and 5 (0.5, 0.625 s)


def _bouncing_square() -> np.ndarray:
    """A white square bouncing on the floor at IMPACTS, rendered with sub-pixel coverage."""
    t = np.arange(N_FRAMES) / FPS
    half = 0.5
    since_impact = np.abs((t - IMPACTS[0] + half) % 1.0 - half)
    height = DROP * (1 - ((half - since_impact) / half) ** 2)  # ballistic: 0 at impact
    top = FLOOR - SQUARE - height
    rows = np.arange(SIZE)[None, :]
    coverage = np.clip(
        np.minimum(rows + 1, top[:, None] + SQUARE) - np.maximum(rows, top[:, None]), 0, 1
    )
    frames = np.zeros((N_FRAMES, SIZE, SIZE, 3), np.uint8)
    frames[:, :, 13 : 13 + SQUARE] = np.round(255 * coverage)[:, :, None, None]
    return frames


def _clicks(times: np.ndarray, duration_s: float, sample_rate: int = SR) -> np.ndarray:
    """Short decaying noise bursts at ``times`` over a faint noise floor."""
    rng = np.random.default_rng(0)
    audio = rng.normal(0.0, 1e-3, round(duration_s * sample_rate))
    burst = round(0.01 * sample_rate)
    envelope = np.exp(-np.arange(burst) / (0.0025 * sample_rate))
    for time in times:
        start = round(time * sample_rate)
        n = min(burst, len(audio) - start)
        if n > 0:
            audio[start : start + n] += 0.5 * rng.standard_normal(n) * envelope[:n]
    return audio.astype(np.float32)


# ---------------------------------------------------------------- AV-Align as published


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_audio_onsets_are_librosas_on_the_file_librosa_load_reads(tmp_path, sample_rate):
    # The published code calls librosa.load on a file: 22.05 kHz, mono by channel mean, soxr.
    stereo = np.stack(
        [
            _clicks(np.array([0.3, 0.77]), 2.0, sample_rate),
            _clicks(np.array([1.41]), 2.0, sample_rate),
        ]
    )
    soundfile.write(tmp_path / "a.wav", stereo.T, sample_rate, subtype="FLOAT")
    y, sr = librosa.load(tmp_path / "a.wav")
    envelope = librosa.onset.onset_strength(y=y, sr=sr)
    expected = librosa.frames_to_time(
        librosa.onset.onset_detect(onset_envelope=envelope, sr=sr), sr=sr
    )
    assert sr == 22050 and len(expected) >= 3  # the clicks (and the start of the noise floor)
    np.testing.assert_array_equal(audio_onsets(stereo, sample_rate), expected)


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_audio_onsets_find_clicks_late_on_librosas_grid(sample_rate):
    truth = np.array([0.3, 0.77, 1.41])
    onsets = audio_onsets(_clicks(truth, 2.0, sample_rate), sample_rate)
    # Frames of 512 samples at 22.05 kHz (23 ms), each stamped at its centre: a click is
    # reported up to ~1.5 frames after it starts, never before.
    assert len(onsets) == len(truth)
    assert np.all(onsets >= truth) and np.all(onsets - truth <= 0.035)
    np.testing.assert_allclose(onsets / (512 / 22050), np.round(onsets / (512 / 22050)))


def test_audio_onsets_of_silence_and_of_nothing_are_empty():
    assert audio_onsets(np.zeros(SR, np.float32), SR).size == 0
    assert audio_onsets(np.zeros(0, np.float32), SR).size == 0


def test_peak_rule_known_answers():
    # Pair j (frames j, j+1) is stamped at (j + 1) / fps. Strict local maxima of at least 0.1:
    # j = 2 (0.3) and j = 5 (0.1, exactly the threshold); j = 7 is a flat top; j = 9 is below
    # the threshold; the first and last pairs never count.
    magnitudes = np.array([0.9, 0.2, 0.3, 0.1, 0.05, 0.1, 0.0, 0.4, 0.4, 0.09, 0.0, 0.5])
    np.testing.assert_allclose(peak_times(magnitudes, 10.0), [0.3, 0.6])
    assert peak_times(np.array([0.0, 1.0]), 10.0).size == 0
    assert peak_times(np.zeros(0), 10.0).size == 0


def test_video_peaks_bracket_each_impact():
    # The impact at k + 0.55 s falls inside the frame pair (0.5, 0.625) + k, whose net
    # displacement is small (down, then up): the flow peaks on the pair before it (stamped
    # k + 0.5, one frame early at most) and on the pair after the rebound (k + 0.75).
    expected = np.sort(np.concatenate([IMPACTS - 0.05, IMPACTS + 0.2]))
    np.testing.assert_allclose(video_peaks(_bouncing_square(), FPS), expected)
    np.testing.assert_allclose(video_peaks_fine(_bouncing_square(), FPS), expected)


def test_flow_magnitudes_in_input_pixels_at_any_upsampling():
    frames = _bouncing_square()
    native, upsampled = flow_magnitudes(frames), flow_magnitudes(frames, 128)
    assert native.shape == upsampled.shape == (N_FRAMES - 1,)
    # The square falls at most 4 px a frame; on 1/6 of the columns, 6/32 of the rows move.
    assert 0.5 < native.max() < 4.0 and 0.5 < upsampled.max() < 4.0
    assert flow_magnitudes(np.repeat(frames[:1], 4, axis=0)).max() < 1e-3
    with pytest.raises(ValueError, match="uint8"):
        flow_magnitudes(frames.astype(np.float32))


def test_event_iou_matches_in_the_published_order_within_an_open_frame():
    # Each onset takes the first free peak less than a frame away: 0.30 takes 0.38, and 0.45
    # is left with nothing (0.25 is 0.2 away). Closest pairs first would match both.
    audio, video = np.array([0.30, 0.45]), np.array([0.38, 0.25])
    assert event_iou(audio, video, 10.0) == pytest.approx(1 / 3)
    assert event_iou_fine(audio, video, 10.0) == pytest.approx(1.0)
    # Exactly one frame apart is no match as published, a match in the fine variant.
    assert event_iou(np.array([0.5]), np.array([0.625]), 8.0) == 0.0
    assert event_iou_fine(np.array([0.5]), np.array([0.625]), 8.0) == 1.0
    # No events at all: 0 (the published code divides by zero).
    assert event_iou(np.array([]), np.array([]), 8.0) == 0.0
    assert event_iou_fine(np.array([]), np.array([]), 8.0) == 0.0


@pytest.mark.parametrize(("metric", "noise_max"), [(av_align, 0.35), (av_align_fine, 0.3)])
def test_av_align_aligned_beats_shifted_and_noise(metric, noise_max):
    frames = _bouncing_square()
    duration = N_FRAMES / FPS
    aligned = metric(frames, FPS, _clicks(IMPACTS, duration), SR)
    # Half a bounce later every click lands on an apex, where the square hardly moves.
    shifted = metric(frames, FPS, _clicks(IMPACTS + 0.5, duration), SR)
    noise_audio = np.random.default_rng(1).normal(0, 0.1, int(duration * SR)).astype(np.float32)
    noise = metric(frames, FPS, noise_audio, SR)
    # 4 clicks, 8 video peaks (two per impact, see above), and only the peak before each
    # impact is within a frame of its click: IoU 4 / (4 + 8 - 4). White noise has ~10 onsets a
    # second (librosa's defaults pick 2 a second of it), and some hit a video peak by chance.
    assert aligned == pytest.approx(0.5)
    assert shifted <= 0.1
    assert noise <= noise_max


@pytest.mark.parametrize("metric", [av_align, av_align_fine])
def test_av_align_without_events_is_zero(metric):
    frames = np.full((8, SIZE, SIZE, 3), 128, np.uint8)
    assert metric(frames, FPS, np.zeros(SR, np.float32), SR) == 0.0


# ---------------------------------------------------------------- the fine variant


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_audio_onsets_fine_finds_clicks_within_20ms(sample_rate):
    truth = np.array([0.3, 0.77, 1.41])
    onsets = audio_onsets_fine(_clicks(truth, 2.0, sample_rate), sample_rate)
    # Exactly three: the noise floor that is there from t = 0 is not an onset of its own.
    assert len(onsets) == len(truth)
    np.testing.assert_allclose(onsets, truth, atol=0.02)


def test_audio_onsets_fine_of_silence_is_empty():
    assert audio_onsets_fine(np.zeros(SR, np.float32), SR).size == 0


# ---------------------------------------------------------------- known event times


def test_onset_f1_known_answers():
    detected = np.array([0.1, 0.5, 0.52, 2.0])
    reference = np.array([0.11, 0.5, 1.0])
    scores = onset_f1(detected, reference, tolerance_s=0.05)
    # 0.1-0.11 and 0.5-0.5 match; 0.52 is a double detection of 0.5; 2.0 and 1.0 are unmatched.
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)


def test_onset_f1_greedy_closest_first_and_empty_sets():
    # 0.50 goes to the closer 0.52, leaving 0.46 unmatched.
    assert onset_f1(np.array([0.5]), np.array([0.46, 0.52]), 0.05) == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    )
    assert onset_f1(np.array([]), np.array([]), 0.05) == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }
    assert onset_f1(np.array([]), np.array([1.0]), 0.05) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert onset_f1(np.array([1.0]), np.array([1.2]), 0.05)["f1"] == 0.0


# ---------------------------------------------------------------- frechet


def _whitened(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) samples with sample mean exactly 0 and sample covariance exactly I."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    q, _ = np.linalg.qr(x - x.mean(axis=0))
    return q * np.sqrt(n - 1)


def test_frechet_of_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(50, 8))
    assert frechet_distance(a, a) < 1e-6


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.5
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-6)


def test_frechet_closed_form_for_diagonal_gaussians():
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    a = mu_a + _whitened(40, 3, 2) * np.sqrt(var_a)
    b = mu_b + _whitened(60, 3, 3) * np.sqrt(var_b)
    # |mu_a - mu_b|^2 + sum (sqrt(var_a) - sqrt(var_b))^2 = 5 + (4 + 1 + 0)
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=1e-9)


def test_frechet_mean_shift_adds_squared_norm():
    a = np.random.default_rng(4).normal(size=(100, 5))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(np.sum(shift**2), rel=1e-6)


def test_frechet_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(7, 32)) + 0.1
    distance = frechet_distance(a, b)
    assert np.isfinite(distance) and distance >= 0.0
    # Singular covariances: a pure shift is still exactly the squared shift.
    assert frechet_distance(a, a + 0.5) == pytest.approx(32 * 0.25, rel=1e-6)


def test_frechet_rejects_mismatched_features():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_kernel_distance_hand_worked():
    # Linear kernel x.y + 1 on a = b = {0, 1}: within-set off-diagonal means are 1 and 1, the
    # cross mean is (1 + 1 + 1 + 2) / 4 = 1.25, so the unbiased MMD^2 is 1 + 1 - 2.5 = -0.5:
    # unbiased means it can dip below zero for sets from one distribution.
    a = np.array([[0.0], [1.0]])
    assert kernel_distance(a, a, degree=1) == pytest.approx(-0.5)
    # Cubic kernel, 1-D: k(0, y) = 1, k(1, 1) = 8, k(2, 2) = 125, k(1, 2) = 27.
    # a = {0, 1}: within 1; b = {1, 2}: within 27; cross (1 + 1 + 8 + 27) / 4 = 9.25.
    assert kernel_distance(a, a + 1) == pytest.approx(1 + 27 - 18.5)


def test_kernel_distance_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(6)
    same = [kernel_distance(rng.normal(size=(20, 8)), rng.normal(size=(20, 8))) for _ in range(200)]
    shifted = kernel_distance(rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 1.0)
    # The mean over draws is 0 within 3 standard errors (no bias from n = 20); a mean shift of
    # 1 per dimension is far above the spread.
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert shifted > 10 * np.std(same)
    with pytest.raises(ValueError):
        kernel_distance(np.zeros((1, 3)), np.zeros((4, 3)))


# ---------------------------------------------------------------- embeddings


def test_logmel_embedding_shape_determinism_and_loudness():
    tone = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32) * 0.1
    first = logmel_embedding(tone, SR)
    assert first.shape == (128,)
    np.testing.assert_array_equal(first, logmel_embedding(tone.copy(), SR))
    louder = logmel_embedding(tone * 10, SR)
    # A gain of 10 is +2 ln 10 on the log-power mean of every band well above the floor.
    loud_bands = first[:64] > np.log(1e-6) + 10
    assert loud_bands.any()
    np.testing.assert_allclose((louder - first)[:64][loud_bands], 2 * np.log(10), atol=1e-3)
    clicks = logmel_embedding(_clicks(np.array([0.2, 0.6]), 1.0), SR)
    assert not np.allclose(clicks, first)


def test_frames_embedding_shape_determinism_and_motion():
    moving = _bouncing_square()
    first = frames_embedding(moving)
    assert first.shape == (256,)
    np.testing.assert_array_equal(first, frames_embedding(moving.copy()))
    still = np.repeat(moving[:1], N_FRAMES, axis=0)
    embedded_still = frames_embedding(still)
    np.testing.assert_array_equal(embedded_still[192:], 0.0)  # nothing moves
    assert first[192:].max() > 0.01
    assert not np.allclose(frames_embedding(255 - moving), first)

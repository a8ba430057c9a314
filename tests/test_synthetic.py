import dataclasses
import hashlib

import numpy as np
import pytest

from jointdit.data.synthetic import (
    DISTRACTOR_PITCHES,
    PALETTE,
    SyntheticClip,
    SyntheticConfig,
    make_clip,
)

CFG = SyntheticConfig()
SR = CFG.sample_rate
N_CLIPS = 20


@pytest.fixture(scope="module")
def clips() -> list[SyntheticClip]:
    return [make_clip(CFG, i) for i in range(N_CLIPS)]


def isolated(clip: SyntheticClip, quiet_s: float = 0.15):
    """Impacts with no other impact within ``quiet_s`` on either side."""
    times = np.array([imp.time_s for imp in clip.impacts])
    for imp in clip.impacts:
        if np.sum(np.abs(times - imp.time_s) < quiet_s) == 1:
            yield imp


def window(audio: np.ndarray, start_s: float, stop_s: float) -> np.ndarray:
    return audio[max(round(start_s * SR), 0) : round(stop_s * SR)]


def test_same_index_same_clip_other_index_other_clip():
    a, b, c = make_clip(CFG, 3), make_clip(CFG, 3), make_clip(CFG, 4)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert (a.impacts, a.caption) == (b.impacts, b.caption)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.audio, c.audio)
    other_seed = make_clip(SyntheticConfig(seed=1), 3)
    assert not np.array_equal(a.audio, other_seed.audio)


def test_shapes_and_ranges(clips):
    for clip in clips:
        assert clip.frames.shape == (16, 32, 32, 3)
        assert clip.frames.dtype == np.uint8
        assert clip.audio.shape == (1, 32000)
        assert clip.audio.dtype == np.float32
        assert np.abs(clip.audio).max() <= 1.0
        assert 1 <= len(clip.ball_colors) <= CFG.max_balls
        assert clip.centers.shape == (16, len(clip.ball_colors), 2)
    assert {len(clip.ball_colors) for clip in clips} == {1, 2}


def test_other_sizes_and_rates():
    clip = make_clip(
        SyntheticConfig(duration_s=1.0, fps=10, width=48, height=24, sample_rate=8000), 0
    )
    assert clip.frames.shape == (10, 24, 48, 3)
    assert clip.audio.shape == (1, 8000)


def test_every_clip_has_a_floor_impact_inside_the_clip(clips):
    for clip in clips:
        assert any(imp.surface == "floor" for imp in clip.impacts)
        times = [imp.time_s for imp in clip.impacts]
        assert times == sorted(times)
        assert all(0 < t < CFG.duration_s for t in times)
        assert {imp.surface for imp in clip.impacts} <= {"floor", "left", "right", "ceiling"}
        assert all(imp.speed > 0 for imp in clip.impacts)


def test_sound_peaks_at_impacts_and_is_quiet_between(clips):
    checked = 0
    for clip in clips:
        audio = clip.audio[0]
        for imp in isolated(clip):
            around = window(audio, imp.time_s - 0.05, imp.time_s + 0.05)
            peak_s = imp.time_s - 0.05 + np.argmax(np.abs(around)) / SR
            assert 0 <= peak_s - imp.time_s <= 0.010
            checked += 1
        # Far from every impact: 150 ms after the last one, 20 ms before the next one.
        quiet = np.ones(audio.shape, bool)
        for imp in clip.impacts:
            quiet[max(round((imp.time_s - 0.02) * SR), 0) : round((imp.time_s + 0.15) * SR)] = False
        assert np.abs(audio[quiet]).max() < 0.01
    assert checked >= 20


def test_faster_impact_sounds_louder(clips):
    # Same ball colour (same tone), isolated impacts; compare clearly different speeds.
    by_color: dict[str, list[tuple[float, float]]] = {}
    for clip in clips:
        for imp in isolated(clip):
            peak = np.abs(window(clip.audio[0], imp.time_s, imp.time_s + 0.03)).max()
            by_color.setdefault(clip.ball_colors[imp.ball], []).append((imp.speed, peak))
    pairs = 0
    for hits in by_color.values():
        for speed_a, peak_a in hits:
            for speed_b, peak_b in hits:
                if speed_a > 1.3 * speed_b:
                    assert peak_a > peak_b
                    pairs += 1
    assert pairs >= 10


def test_caption_names_the_balls_and_pitch_follows_colour(clips):
    checked = 0
    for clip in clips:
        for color in clip.ball_colors:
            assert f"a {color} ball" in clip.caption
        assert clip.caption.endswith("bouncing on a grey floor")
        for imp in isolated(clip):
            if imp.time_s + 0.1 > CFG.duration_s:
                continue  # cut off by the end of the clip
            # No window function: the decay has faded the tone out by the end of the 100 ms.
            tone = window(clip.audio[0], imp.time_s, imp.time_s + 0.1)
            spectrum = np.abs(np.fft.rfft(tone, n=1 << 15))
            dominant = np.argmax(spectrum) * SR / (1 << 15)
            assert dominant == pytest.approx(PALETTE[clip.ball_colors[imp.ball]][1], abs=15)
            checked += 1
    assert checked >= 20


def test_ball_pixels_are_where_the_simulation_puts_them(clips):
    rows, cols = np.mgrid[0 : CFG.height, 0 : CFG.width] + 0.5
    checked = 0
    for clip in clips:
        for k, frame in enumerate(clip.frames):
            centers = clip.centers[k]
            for i, color in enumerate(clip.ball_colors):
                others = np.delete(centers, i, axis=0)
                if len(others) and np.hypot(*(others - centers[i]).T).min() < 12:
                    continue  # overlapping discs hide part of each other
                inside = np.all(frame == PALETTE[color][0], axis=-1)  # fully covered pixels
                centroid = np.array([cols[inside].mean(), rows[inside].mean()])
                assert np.hypot(*(centroid - centers[i])) <= 2.0
                checked += 1
    assert checked >= 200


def test_balls_stay_above_the_floor_and_inside_the_walls(clips):
    floor_px = CFG.height * (1 - 0.125)
    for clip in clips:
        x, y = clip.centers[..., 0], clip.centers[..., 1]
        min_radius = 0.1 * CFG.height
        assert (x >= min_radius - 1e-6).all() and (x <= CFG.width - min_radius + 1e-6).all()
        assert (y >= min_radius - 1e-6).all() and (y <= floor_px - min_radius + 1e-6).all()
        assert (clip.frames[:, round(floor_px) :] == 128).all()  # the floor band is never covered


KNOBS_OFF = SyntheticConfig(background_variety=False, camera_shake_px=0.0, max_distractors=0)
KNOBS_ON = dataclasses.replace(CFG, background_variety=True, camera_shake_px=1.5, max_distractors=3)
# Recorded from the code before the variety knobs existed. The audio is hashed as 16-bit PCM:
# immune to last-ulp differences of numpy's sin/exp between CPUs, not to any real change.
BEFORE_KNOBS = {
    0: (
        "d8458b4082641cfdbf0f5d401498db361940ff414f44760e89673a7965c44c02",
        "fe0ea3055f160572eefc34c939d5d353d5adfe029092220508329d010a8d3c2f",
    ),
    7: (
        "61f704f48c1f33459831da4dacc6e584b9e62ff9419de981e489122dd630447b",
        "57657e741f999eab7ae53d48ed7f95e5b715eb408625f36c83807674dd6ce765",
    ),
}


def _hashes(clip: SyntheticClip) -> tuple[str, str]:
    pcm = np.round(clip.audio * 32767).astype("<i2")
    return (
        hashlib.sha256(clip.frames.tobytes()).hexdigest(),
        hashlib.sha256(pcm.tobytes()).hexdigest(),
    )


@pytest.mark.parametrize("index", sorted(BEFORE_KNOBS))
def test_default_clips_are_what_they_were_before_the_knobs(index):
    clip = make_clip(CFG, index)
    assert _hashes(clip) == BEFORE_KNOBS[index]
    off = make_clip(KNOBS_OFF, index)
    assert clip.frames.tobytes() == off.frames.tobytes()
    assert clip.audio.tobytes() == off.audio.tobytes()
    assert clip.distractors == [] and not clip.shake.any()


def test_knobs_keep_the_ground_truth_impacts_exact():
    for index in range(6):
        plain, varied = make_clip(CFG, index), make_clip(KNOBS_ON, index)
        assert varied.impacts == plain.impacts
        assert varied.caption == plain.caption
        np.testing.assert_array_equal(varied.centers, plain.centers + varied.shake[:, None, :])
        assert np.abs(varied.shake).max() <= KNOBS_ON.camera_shake_px


def test_backgrounds_vary_and_stay_unsaturated():
    # The top-left pixel over time: a ball touches that corner for a frame at most.
    corners = {
        tuple(np.median(make_clip(KNOBS_ON, i).frames[:, 0, 0], axis=0).astype(int))
        for i in range(12)
    }
    assert len(corners) >= 3
    for corner in corners:
        assert max(corner) - min(corner) <= 24  # far below the tracker's chroma threshold


def test_distractors_are_sounds_apart_from_the_impacts():
    with_any = 0
    for index in range(8):
        plain, varied = make_clip(CFG, index), make_clip(KNOBS_ON, index)
        assert len(varied.distractors) <= KNOBS_ON.max_distractors
        times = [d.time_s for d in varied.distractors]
        assert times == sorted(times) and all(0 <= t < CFG.duration_s for t in times)
        assert all(d.pitch_hz in DISTRACTOR_PITCHES for d in varied.distractors)
        # The main stream (noise floor, impact sounds) is unchanged: the difference is the
        # distractors, heard only from their onsets on.
        heard = np.abs(varied.audio[0] - plain.audio[0]) > 0
        allowed = np.zeros_like(heard)
        for d in varied.distractors:
            onset = int(np.ceil(d.time_s * SR))  # the first sample at or after it
            allowed[onset : onset + round(0.12 * SR)] = True
            assert np.abs(window(varied.audio[0], d.time_s, d.time_s + 0.02)).max() > 0.03
        assert not (heard & ~allowed).any()
        with_any += bool(varied.distractors)
    assert with_any >= 3


def test_shaken_balls_are_where_the_centres_say():
    rows, cols = np.mgrid[0 : CFG.height, 0 : CFG.width] + 0.5
    checked = 0
    for index in range(6):
        clip = make_clip(KNOBS_ON, index)
        for k, frame in enumerate(clip.frames):
            for i, color in enumerate(clip.ball_colors):
                others = np.delete(clip.centers[k], i, axis=0)
                if len(others) and np.hypot(*(others - clip.centers[k, i]).T).min() < 12:
                    continue
                inside = np.all(frame == PALETTE[color][0], axis=-1)
                centroid = np.array([cols[inside].mean(), rows[inside].mean()])
                assert np.hypot(*(centroid - clip.centers[k, i])) <= 2.0
                checked += 1
    assert checked >= 60

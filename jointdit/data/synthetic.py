"""The embedded default data set: balls bouncing under gravity, with an impact sound per bounce.

Every clip is a pure function of ``(cfg, index)``, so the data set needs no download and any
clip can be regenerated on its own. The sound is built from the simulated impacts, which makes
audio-video synchrony checkable: each impact has an exact time, a ball colour (-> pitch) and a
speed (-> loudness).

Variety knobs (all off by default, which reproduces the original data set byte for byte): a few
dark background colours and gradients, camera shake (a random whole-frame shift per frame) and
off-screen distractor sounds, which have no visible cause and are listed apart from the impacts
so they never count as sync ground truth. Each knob draws from its own random stream, so turning
one on changes neither the balls nor the other knobs' draws.

Coordinates: lengths are in units of the frame height, ``x`` to the right in ``[0, W/H]`` and
``y`` downwards in ``[0, 1]``; pixel = unit * H. The floor surface is the top of a grey band at
the bottom of the frame, the ceiling and the walls are the frame edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# name -> (RGB, pitch in Hz). 110 Hz apart so a short FFT tells them apart, and every second
# harmonic (<= 1760 Hz) stays below Nyquist at 16 kHz.
PALETTE: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((230, 40, 40), 330.0),
    "green": ((40, 200, 60), 440.0),
    "blue": ((50, 90, 240), 550.0),
    "yellow": ((235, 220, 40), 660.0),
    "magenta": ((220, 60, 220), 770.0),
    "cyan": ((40, 210, 220), 880.0),
}
BACKGROUND_RGB = (12, 12, 20)
# (colour at the top or left, colour at the bottom or right, gradient axis): dark and of low
# chroma (at most 24), so balls stay the only saturated objects (the oracle tracker relies on it).
BACKDROPS: tuple[tuple[tuple[int, int, int], tuple[int, int, int], str], ...] = (
    (BACKGROUND_RGB, BACKGROUND_RGB, "vertical"),
    ((28, 28, 28), (28, 28, 28), "vertical"),
    ((10, 14, 28), (40, 44, 56), "vertical"),
    ((30, 22, 16), (12, 12, 12), "horizontal"),
    ((8, 8, 8), (36, 32, 40), "vertical"),
)
# Distractor pitches: on the palette's 110 Hz grid (FFT-separable) but above it, so no ball has
# them; the third harmonic of 1100 Hz stays below Nyquist at 8 kHz.
DISTRACTOR_PITCHES = (990.0, 1100.0)
FLOOR_RGB = (128, 128, 128)
FLOOR_FRACTION = 0.125  # height of the floor band, in frame heights
RESTITUTION = 0.8
RADIUS_RANGE = (0.10, 0.14)  # in frame heights

_SOUND_S = 0.12  # long enough that the decay has reached the noise floor when the tone is cut
_DECAY_S = 0.02
_ATTACK_S = 0.001  # a ramp instead of a step, so the onset is a tone and not a broadband click
_PARTIALS = ((1, 1.0), (2, 0.35), (3, 0.15))  # (harmonic, relative amplitude)
_MAX_AMPLITUDE = 0.35  # per impact at full speed; two coinciding impacts still fit in [-1, 1]
_NOISE_FLOOR = 0.001


@dataclass(frozen=True)
class SyntheticConfig:
    num_clips: int = 48
    duration_s: float = 2.0
    fps: float = 8.0
    width: int = 32
    height: int = 32
    sample_rate: int = 16000
    max_balls: int = 2
    seed: int = 0
    background_variety: bool = False  # one of BACKDROPS per clip instead of BACKGROUND_RGB
    camera_shake_px: float = 0.0  # per frame, x and y uniform in [-shake, shake] pixels
    max_distractors: int = 0  # off-screen sounds per clip: uniform in 0..max_distractors

    def __post_init__(self) -> None:
        if not 1 <= self.max_balls <= len(PALETTE):
            raise ValueError(f"max_balls must be in 1..{len(PALETTE)}, got {self.max_balls}")
        if self.camera_shake_px < 0 or self.max_distractors < 0:
            raise ValueError("camera_shake_px and max_distractors must not be negative")
        if self.duration_s <= 0 or self.fps <= 0 or self.sample_rate <= 0:
            raise ValueError("duration_s, fps and sample_rate must be positive")
        if self.width < 8 or self.height < 8:
            raise ValueError("width and height must be at least 8 pixels")


@dataclass(frozen=True)
class Impact:
    time_s: float
    ball: int
    speed: float  # normal speed just before the bounce, frame heights per second
    surface: str  # "floor" | "left" | "right" | "ceiling"


@dataclass(frozen=True)
class Distractor:
    """A sound with no visible cause: not an impact, never sync ground truth."""

    time_s: float
    pitch_hz: float
    gain: float  # peak amplitude scale, as an impact's at full speed times [0.3, 1]


@dataclass
class SyntheticClip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    audio: np.ndarray  # float32 (1, S) in [-1, 1]
    impacts: list[Impact]  # sorted by time; the only sync ground truth
    caption: str
    ball_colors: tuple[str, ...]  # PALETTE name of ball i
    centers: np.ndarray  # float64 (T, balls, 2): (x, y) disc centres on screen, pixels, t = k/fps
    shake: np.ndarray  # float64 (T, 2): the camera shift (x, y) in pixels, included in centers
    distractors: list[Distractor]  # sorted by time; heard, not seen


@dataclass(frozen=True)
class _Ball:
    x: float
    y: float
    vx: float
    vy: float
    radius: float


def make_clip(cfg: SyntheticConfig, index: int) -> SyntheticClip:
    """Render clip ``index`` of the data set described by ``cfg``."""
    rng = np.random.default_rng([cfg.seed, index])
    aspect = cfg.width / cfg.height
    floor_y = 1.0 - FLOOR_FRACTION
    # Time scale: a fall of one frame height from rest takes 0.45 * duration, so every ball
    # (starting in the upper half, moving down) hits the floor within the first half.
    time_scale = 0.45 * cfg.duration_s
    gravity = 2.0 / time_scale**2

    n_balls = int(rng.integers(1, cfg.max_balls + 1))
    names = list(PALETTE)
    colors = tuple(names[i] for i in rng.choice(len(names), size=n_balls, replace=False))
    balls = []
    for _ in range(n_balls):
        radius = float(rng.uniform(*RADIUS_RANGE))
        balls.append(
            _Ball(
                x=float(rng.uniform(radius, aspect - radius)),
                y=float(rng.uniform(radius + 0.02, 0.45)),
                vx=float(rng.uniform(-0.8, 0.8)) / time_scale,
                vy=float(rng.uniform(0.0, 0.4)) / time_scale,
                radius=radius,
            )
        )

    # Below this bounce speed (a bounce of 0.5 % of the frame height) the ball settles on the
    # floor, which ends the otherwise infinite series of ever smaller bounces.
    rest_speed = math.sqrt(2.0 * gravity * 0.005)
    times = np.arange(round(cfg.duration_s * cfg.fps)) / cfg.fps
    centers = np.empty((len(times), n_balls, 2))
    impacts: list[Impact] = []
    for i, ball in enumerate(balls):
        segments, ball_impacts = _simulate(
            ball, i, gravity, aspect, floor_y, cfg.duration_s, rest_speed
        )
        centers[:, i] = _positions(segments, times) * cfg.height
        impacts += ball_impacts
    impacts.sort(key=lambda imp: imp.time_s)

    backdrop = _backdrop(cfg, _knob_rng(cfg, index, 1))
    shake = _shake(cfg, len(times), _knob_rng(cfg, index, 2))
    distractor_rng = _knob_rng(cfg, index, 3)
    distractors = _distractors(cfg, distractor_rng)
    radii = [b.radius * cfg.height for b in balls]
    frames = _render(centers, radii, colors, cfg, floor_y, backdrop, shake)
    max_speed = math.sqrt(2.0 * gravity)  # speed after falling one frame height from rest
    audio = _sound(impacts, colors, max_speed, cfg, rng, distractors, distractor_rng)
    return SyntheticClip(
        frames=frames,
        audio=audio,
        impacts=impacts,
        caption=_caption(colors),
        ball_colors=colors,
        centers=centers + shake[:, None, :],
        shake=shake,
        distractors=distractors,
    )


def _knob_rng(cfg: SyntheticConfig, index: int, knob: int) -> np.random.Generator:
    """A stream of its own per variety knob: the clip's main stream (balls, noise) and the other
    knobs draw the same numbers whether this knob is on or not."""
    return np.random.default_rng([cfg.seed, index, knob])


def _backdrop(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[tuple[int, int, int], tuple[int, int, int], str]:
    return BACKDROPS[int(rng.integers(len(BACKDROPS)))] if cfg.background_variety else BACKDROPS[0]


def _shake(cfg: SyntheticConfig, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    if not cfg.camera_shake_px:
        return np.zeros((n_frames, 2))
    return rng.uniform(-cfg.camera_shake_px, cfg.camera_shake_px, (n_frames, 2))


def _distractors(cfg: SyntheticConfig, rng: np.random.Generator) -> list[Distractor]:
    if not cfg.max_distractors:
        return []
    count = int(rng.integers(0, cfg.max_distractors + 1))
    times = np.sort(rng.uniform(0.0, cfg.duration_s, count))
    pitches = rng.choice(DISTRACTOR_PITCHES, count)
    gains = _MAX_AMPLITUDE * rng.uniform(0.3, 1.0, count)
    return [
        Distractor(time_s=float(t), pitch_hz=float(p), gain=float(g))
        for t, p, g in zip(times, pitches, gains, strict=True)
    ]


def _simulate(
    ball: _Ball,
    index: int,
    gravity: float,
    aspect: float,
    floor_y: float,
    duration_s: float,
    rest_speed: float,
) -> tuple[np.ndarray, list[Impact]]:
    """Event-driven ballistic flight: impact times are exact roots, not a time-step artefact.

    Returns the flight segments as rows ``(t0, x0, y0, vx, vy, ay)`` and the impacts.
    Balls do not collide with each other, so every sound belongs to one ball and one surface.
    """
    lo_x, hi_x = ball.radius, aspect - ball.radius
    lo_y, hi_y = ball.radius, floor_y - ball.radius
    t, x, y, vx, vy = 0.0, ball.x, ball.y, ball.vx, ball.vy
    resting = False
    segments: list[tuple[float, ...]] = []
    impacts: list[Impact] = []
    while True:
        ay = 0.0 if resting else gravity
        segments.append((t, x, y, vx, vy, ay))
        events = [(math.inf, "")]
        if vx > 0:
            events.append(((hi_x - x) / vx, "right"))
        elif vx < 0:
            events.append(((lo_x - x) / vx, "left"))
        if not resting:
            drop = max(hi_y - y, 0.0)
            events.append(((-vy + math.sqrt(vy * vy + 2.0 * gravity * drop)) / gravity, "floor"))
            rise = vy * vy - 2.0 * gravity * (y - lo_y)
            if vy < 0 and rise > 0:
                events.append(((-vy - math.sqrt(rise)) / gravity, "ceiling"))
        dt, surface = min(events)
        if t + dt >= duration_s:
            break
        t += dt
        x += vx * dt
        y += vy * dt + 0.5 * ay * dt * dt
        vy += ay * dt
        if surface in ("left", "right"):
            x = hi_x if surface == "right" else lo_x
            speed, vx = abs(vx), -RESTITUTION * vx
        else:
            y = hi_y if surface == "floor" else lo_y
            speed, vy = abs(vy), -RESTITUTION * vy
            if surface == "floor" and abs(vy) < rest_speed:
                vy, resting = 0.0, True
        impacts.append(Impact(time_s=t, ball=index, speed=speed, surface=surface))
    return np.asarray(segments), impacts


def _positions(segments: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(x, y) of the ball at ``times``, evaluated on the flight segment each time falls in."""
    t0, x0, y0, vx, vy, ay = segments[np.searchsorted(segments[:, 0], times, side="right") - 1].T
    dt = times - t0
    return np.stack([x0 + vx * dt, y0 + vy * dt + 0.5 * ay * dt * dt], axis=-1)


def _render(
    centers: np.ndarray,
    radii_px: list[float],
    colors: tuple[str, ...],
    cfg: SyntheticConfig,
    floor_y: float,
    backdrop: tuple[tuple[int, int, int], tuple[int, int, int], str],
    shake: np.ndarray,
) -> np.ndarray:
    """Frames of the scene (``centers`` in scene pixels) seen by a camera shifted by ``shake``."""
    # Scene coordinates of the pixel centres: the camera moves, the scene (floor included) not.
    rows = np.arange(cfg.height) + 0.5 - shake[:, 1, None]  # (T, H)
    cols = np.arange(cfg.width) + 0.5 - shake[:, 0, None]  # (T, W)
    first, last, axis = backdrop
    along = rows[:, :, None] / cfg.height if axis == "vertical" else cols[:, None, :] / cfg.width
    ramp = np.clip(along, 0.0, 1.0).astype(np.float32)[..., None]
    start, end = np.asarray(first, np.float32), np.asarray(last, np.float32)
    # Equal ends make `end - start` zero and the canvas exactly `first`, as before the knob.
    canvas = np.empty((len(centers), cfg.height, cfg.width, 3), np.float32)
    canvas[:] = start + ramp * (end - start)
    canvas[rows >= floor_y * cfg.height] = FLOOR_RGB
    for i, (radius, name) in enumerate(zip(radii_px, colors, strict=True)):
        dx = cols[:, None, :] - centers[:, i, 0, None, None]
        dy = rows[:, :, None] - centers[:, i, 1, None, None]
        # Coverage ramps over one pixel across the rim: a cheap, smooth anti-aliased edge.
        alpha = np.clip(radius + 0.5 - np.hypot(dx, dy), 0.0, 1.0)[..., None]
        canvas += alpha * (np.asarray(PALETTE[name][0], np.float32) - canvas)
    return np.round(canvas).astype(np.uint8)


def _sound(
    impacts: list[Impact],
    colors: tuple[str, ...],
    max_speed: float,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    distractors: list[Distractor],
    distractor_rng: np.random.Generator,
) -> np.ndarray:
    sr = cfg.sample_rate
    audio = rng.normal(0.0, _NOISE_FLOOR, round(cfg.duration_s * sr))
    if impacts:
        onset = np.array([imp.time_s for imp in impacts])
        pitch = np.array([PALETTE[colors[imp.ball]][1] for imp in impacts])
        gain = _MAX_AMPLITUDE * np.minimum(np.array([imp.speed for imp in impacts]) / max_speed, 1)
        _add_knocks(audio, onset, pitch, gain, sr, rng)
    if distractors:
        onset = np.array([d.time_s for d in distractors])
        pitch = np.array([d.pitch_hz for d in distractors])
        gain = np.array([d.gain for d in distractors])
        _add_knocks(audio, onset, pitch, gain, sr, distractor_rng)
    # Clip rather than normalise: a fixed gain keeps loudness comparable across clips.
    return np.clip(audio, -1.0, 1.0).astype(np.float32)[None, :]


def _add_knocks(
    audio: np.ndarray,
    onset: np.ndarray,
    pitch: np.ndarray,
    gain: np.ndarray,
    sr: int,
    rng: np.random.Generator,
) -> None:
    """Add a decaying tone with a noise burst at each onset (seconds) to ``audio`` in place."""
    # Sample indices from the first sample at or after each onset; ``tt`` keeps the sub-sample
    # phase, so the sound starts at the exact onset time.
    index = np.ceil(onset * sr).astype(np.int64)[:, None] + np.arange(round(_SOUND_S * sr))
    tt = index / sr - onset[:, None]
    tone = sum(
        amp * np.exp(-tt * k / _DECAY_S) * np.sin(2 * np.pi * k * pitch[:, None] * tt)
        for k, amp in _PARTIALS
    )
    burst = 0.25 * rng.standard_normal(tt.shape) * np.exp(-tt / 0.004)
    sound = gain[:, None] * (np.minimum(tt / _ATTACK_S, 1.0) * tone + burst)
    inside = index < len(audio)
    np.add.at(audio, index[inside], sound[inside])


def _caption(colors: tuple[str, ...]) -> str:
    balls = [f"a {name} ball" for name in colors]
    listed = balls[0] if len(balls) == 1 else ", ".join(balls[:-1]) + " and " + balls[-1]
    return f"{listed} bouncing on a grey floor"

"""Oracle audio-video sync for the synthetic bouncing-ball source, with no learned model.

A generated clip of that source should sound exactly when a ball hits a floor, a wall or the
ceiling. The video's own impacts are found by tracking the balls and looking for velocity
reversals; the audio's onsets are compared with those times by ``onset_f1``. Unlike AV-Align's
optical-flow peaks, these are the events that make the sound, and no reference is needed: the
impacts come from the generated frames, so a clip is judged against itself.

Segmentation relies on the look of the source rather than on a background model: the
background (near black) and the floor band (grey) have almost no chroma, the balls are
saturated colours of distinct hues. A per-pixel temporal median would also work for moving
balls, but it absorbs a ball that rests on the floor, and generated clips have no clean
background frame to subtract.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jointdit.metrics.sync import audio_onsets_fine, onset_f1

# Chroma (max - min channel) of the palette is 160-195 and of the background and floor 0-8.
# The threshold sits far from both, so pixel noise of sigma 8 almost never crosses it and a
# rim pixel counts once at least ~1/3 of it is covered.
_MIN_CHROMA = 60.0
# Palette hues are at least 44 degrees apart; a pixel belongs to the nearest object hue within
# this distance, and peaks of the hue histogram closer than it are one object.
_HUE_RADIUS_DEG = 20.0
_HUE_SMOOTH_DEG = 4.0
# An object must own this share of the clip's saturated pixels: the colour fringes where blur
# mixes two balls (red + green reads as yellow) stay well below it.
_MIN_HUE_SHARE = 0.05
# A blob smaller than this share of the squared frame height is noise (ball sizes scale with the
# height): the smallest ball covers pi 0.1^2 = 3 %, so even a mostly hidden one stays.
_MIN_BLOB_SHARE = 0.004

# How far an onset may lie from an impact to be its sound. The tracker stamps impacts to 0.09
# frames on average and the onsets are within a few ms, so on real clips half a frame keeps F1 at
# 0.86 (one frame: 0.88), while audio of another clip matches by chance far less often (0.33
# against 0.48 at one frame, on the 48 default clips): the measure separates real from chance.
TOLERANCE_FRAMES = 0.5

# A reversal is an impact only if the velocity changes by at least this much (frame heights
# per second): 0.6 px per frame at 32 px and 8 fps, three times the largest frame-to-frame
# change of a still ball's centroid under pixel noise of sigma 8. Wall bounces slower than
# this (under 0.08 frame heights per second) move too little to be seen anyway.
_MIN_SPEED_CHANGE = 0.15
# Walls and ceiling are the frame edges: a horizontal or an up-to-down reversal (every apex of
# a flight is one) is an impact only when the object comes this close to the edge (frame
# heights) beyond the distance it moves in a frame. Without it a ball passing behind another
# shows spurious horizontal reversals.
_EDGE_MARGIN = 0.05


def track_objects(frames: np.ndarray) -> np.ndarray:
    """Centroids ``(T, K, 2)`` (x, y in pixels) of the coloured objects in uint8 ``(T, H, W, 3)``.

    Pixels with chroma (max - min channel) of at least 60 are foreground. The K objects are
    the peaks of the clip's hue histogram of those pixels that own at least 5 % of them,
    ordered by hue (red first); each foreground pixel goes to the nearest object hue within
    20 degrees. In every frame an object is its largest connected blob (4-connectivity) of at
    least 0.4 % of H^2 pixels; its centroid is chroma-weighted, which counts anti-aliased rim
    pixels by their coverage. NaN where an object has no such blob; K = 0 gives ``(T, 0, 2)``.
    """
    return _track(frames)[0]


def impact_times(frames: np.ndarray, fps: float) -> np.ndarray:
    """Sorted times in seconds of the impacts the video shows, from its object tracks.

    Per object and axis, an impact is a sign change of the frame-to-frame velocity by at
    least 0.15 frame heights per second, with each direction held for two frames where the
    track shows them. Down to up is the floor; left/right and up-to-down reversals are walls
    and the ceiling only if the object's edge comes within one frame's travel (+ 5 % of the
    frame height) of the frame edge, since every apex of a flight reverses too. A frame where
    the object is lost breaks its track.

    The impact lies between the frames either side of the extreme frame. It is stamped where
    straight incoming and outgoing tracks meet: the extreme frame is either before or after
    the impact, and of the two guesses the one whose tracks meet on its own side is taken;
    if both or neither do, the tracks through the two frames before and the two after. On 48
    default clips (32 px, 8 fps) the mean absolute error against the true times is 0.09
    frames, against 0.15 for the tracks that skip the extreme frame and 0.25 for the extreme
    frame itself (48 clips at 64 px, 16 fps: 0.07, 0.09 and 0.26).
    """
    centroids, radii = _track(frames)
    height, width = np.shape(frames)[1:3]
    min_change = _MIN_SPEED_CHANGE * height / fps  # in pixels per frame
    margin = _EDGE_MARGIN * height
    times: list[float] = []
    for k in range(centroids.shape[1]):
        x, y, radius = centroids[:, k, 0], centroids[:, k, 1], radii[k]
        for i in _reversals(x, min_change):
            gap = width - x[i] - radius if x[i] > x[i - 1] else x[i] - radius
            if _reaches(gap, x, i, margin):
                times.append(_stamp(x, i))
        for i in _reversals(y, min_change):
            is_apex = y[i] < y[i - 1]
            if not is_apex or _reaches(y[i] - radius, y, i, margin):
                times.append(_stamp(y, i))
    return np.sort(np.asarray(times, dtype=np.float64)) / fps


def oracle_sync(
    frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int
) -> dict[str, float]:
    """Precision, recall and F1 of the audio's onsets against the impacts the video shows.

    An onset within half a frame (0.5 / fps s) of an impact is a hit: precision is the share of
    sounds with a visible cause, recall the share of visible impacts that are heard.
    """
    return onset_f1(
        audio_onsets_fine(audio, sample_rate),
        impact_times(frames, fps),
        tolerance_s=TOLERANCE_FRAMES / fps,
    )


def objects_kept(frames: np.ndarray) -> float:
    """Share of frames 1.. that show the same objects as frame 0: the same set of tracked
    colours, none lost and none new (a generated ball that changes colour does both).

    Real clips score below 1 only where one ball passes in front of another.
    """
    present = ~np.isnan(_track(frames)[0][..., 0])  # (T, K)
    if len(present) < 2:
        return 1.0
    return float(np.mean(np.all(present[1:] == present[0], axis=1)))


def _track(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``(T, K, 2)`` as in ``track_objects`` and object radii ``(K,)`` in pixels."""
    video = np.asarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got shape {video.shape}")
    hue, chroma = _hue_chroma(video)
    foreground = chroma >= _MIN_CHROMA
    centres = _object_hues(hue[foreground])
    n_frames, height, width = foreground.shape
    centroids = np.full((n_frames, len(centres), 2), np.nan)
    if not len(centres):
        return centroids, np.zeros(0)

    distance = _hue_distance(hue[..., None], centres)
    owner = np.where(
        foreground & (distance.min(axis=-1) <= _HUE_RADIUS_DEG), distance.argmin(axis=-1), -1
    )
    min_blob = _MIN_BLOB_SHARE * height * height
    rows, cols = np.mgrid[:height, :width] + 0.5  # pixel centres, as the renderer has them
    areas = np.zeros((n_frames, len(centres)))
    for t in range(n_frames):
        for k in range(len(centres)):
            labels, count = ndimage.label(owner[t] == k)
            if not count:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            if sizes.max() < min_blob:
                continue
            blob = labels == 1 + int(sizes.argmax())
            weight = chroma[t][blob]
            centroids[t, k] = (cols[blob] @ weight, rows[blob] @ weight) / weight.sum()
            areas[t, k] = sizes.max()
    # The median blob is an unoccluded view of the object in most frames.
    radii = np.array([np.sqrt(np.median(a[a > 0]) / np.pi) if a.any() else 0.0 for a in areas.T])
    return centroids, radii


def _hue_chroma(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360) and chroma (max - min) in 8-bit units, per pixel."""
    rgb = video.astype(np.float64)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = high - low
    r, g, b = np.moveaxis(rgb, -1, 0)
    safe = np.where(chroma > 0, chroma, 1.0)
    sector = np.select(
        [high == r, high == g], [(g - b) / safe, (b - r) / safe + 2.0], (r - g) / safe + 4.0
    )
    return (60.0 * sector) % 360.0, chroma


def _hue_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


def _object_hues(hues: np.ndarray) -> np.ndarray:
    """Hue centres (degrees) of the clusters that own enough foreground pixels, red first."""
    if not hues.size:
        return np.zeros(0)
    counts = np.bincount(hues.astype(np.int64) % 360, minlength=360).astype(np.float64)
    smooth = ndimage.gaussian_filter1d(counts, _HUE_SMOOTH_DEG, mode="wrap")
    window = 2 * round(_HUE_RADIUS_DEG) + 1
    is_peak = (smooth == ndimage.maximum_filter1d(smooth, window, mode="wrap")) & (smooth > 0)
    # A flat top gives a run of equal maxima: keep the first of each run.
    peaks = np.flatnonzero(is_peak & ~np.roll(is_peak, 1)) + 0.5  # bin centres
    distance = _hue_distance(hues[:, None], peaks)
    nearest = distance.argmin(axis=1)
    owned = np.bincount(nearest[distance.min(axis=1) <= _HUE_RADIUS_DEG], minlength=len(peaks))
    kept = peaks[owned >= _MIN_HUE_SHARE * hues.size]
    # Red straddles 0 degrees (rims blended with the bluish background read as 355): start the
    # order at -30 so red comes first whichever side its peak lands on.
    return kept[np.argsort((kept + 30.0) % 360.0)]


def _reversals(position: np.ndarray, min_change: float) -> list[int]:
    """Frames at which the velocity along one coordinate flips sign by at least min_change."""
    velocity = np.diff(position)
    before, after = velocity[:-1], velocity[1:]
    flips = (before * after < 0) & (np.abs(after - before) >= min_change)
    # A centroid pulled off for one frame (a ball passing behind another) reverses twice in a
    # row; a bounce keeps each direction for two frames wherever the track shows them.
    preceding = np.insert(velocity[:-2], 0, np.nan)
    following = np.append(velocity[2:], np.nan)
    flips &= ~(preceding * before < 0) & ~(following * after < 0)
    return [int(i) + 1 for i in np.flatnonzero(flips)]


def _reaches(gap: float, position: np.ndarray, i: int, margin: float) -> bool:
    """Whether an object ``gap`` pixels from an edge at extreme frame ``i`` can have touched it.

    The impact lies between frames i - 1 and i + 1, so at frame i the object is at most one
    frame's displacement from the edge it hit; ``margin`` absorbs blur and centroid error.
    """
    step = max(abs(position[i] - position[i - 1]), abs(position[i + 1] - position[i]))
    return bool(gap <= step + margin)


def _stamp(position: np.ndarray, i: int) -> float:
    """Impact time in frames near the extreme frame ``i`` of a reversal: see ``impact_times``."""
    if i < 2 or i + 2 >= len(position) or not np.isfinite(position[i - 2 : i + 3]).all():
        return float(i)
    # Frame i was taken either before or after the impact. Each guess gives an incoming and an
    # outgoing straight track that must meet on its side of frame i; take the guess that does.
    before = _meet(position, i - 1, i + 1)
    after = _meet(position, i - 2, i)
    before_fits, after_fits = i <= before <= i + 1, i - 1 <= after <= i
    if before_fits != after_fits:
        return float(before if before_fits else after)
    # Both or neither fit: leave frame i out of both tracks.
    time = _meet(position, i - 2, i + 1)
    return float(np.clip(time, i - 1, i + 1)) if np.isfinite(time) else float(i)


def _meet(position: np.ndarray, a: int, c: int) -> float:
    """Frame where the lines through frames (a, a + 1) and (c, c + 1) cross; NaN if parallel."""
    slope_in, slope_out = position[a + 1] - position[a], position[c + 1] - position[c]
    if slope_in == slope_out:
        return np.nan
    return (position[c] - position[a + 1] + slope_in * (a + 1) - slope_out * c) / (
        slope_in - slope_out
    )

"""Where the training windows of one clip start.

A clip longer than the model's window (``clip.duration_s``) gives several windows, ``hop_s``
apart. Only whole windows count: padding a window past the end of a clip would teach the model
frozen frames and silence that the data does not have.

A clip with more whole windows than ``max_windows`` gives ``max_windows`` of them spread evenly
over its length, first and last included, so a film is not represented by its opening titles.
They stay on the hop grid (start times are multiples of ``hop_s``). Reading them costs a seek
and about one window (plus a key-frame interval) of decoding each (`media.read_windows`), so
the cost of a clip is bounded by its number of windows, not by its length: a 3-hour file costs
what a 20-second one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Slack on durations read from container metadata: a 2 s clip may be listed as 1.9999 s. Far
# below any frame interval, so it never admits a window that misses a frame.
_DURATION_EPS = 1e-3


@dataclass(frozen=True)
class ClipSpec:
    """The clip every input is normalised to (params' `clip`): windows of `duration_s` on a
    grid `hop_s` apart, at most `max_windows_per_clip` per input, each `fps` frames per second
    at `width` x `height` with mono sound at `sample_rate`."""

    duration_s: float = 2.0
    hop_s: float = 2.0
    max_windows_per_clip: int = 8
    fps: float = 8.0
    width: int = 32
    height: int = 32
    sample_rate: int = 16000

    @property
    def frames(self) -> int:
        return round(self.duration_s * self.fps)

    def starts(self, clip_duration_s: float) -> list[float]:
        """Where the windows of a clip of `clip_duration_s` seconds start (`plan_windows`)."""
        return plan_windows(clip_duration_s, self.duration_s, self.hop_s, self.max_windows_per_clip)


def plan_windows(duration_s: float, window_s: float, hop_s: float, max_windows: int) -> list[float]:
    """Start times (seconds from the first video frame) of a clip's whole windows.

    The candidates start at ``0, hop_s, 2 hop_s, ...`` while they end inside the clip; when
    there are more than ``max_windows``, that many are taken, evenly spread over them (the
    first and the last always; one window is the first). A clip shorter than one window has
    none.
    """
    if min(window_s, hop_s) <= 0 or max_windows < 1:
        raise ValueError(
            f"need window_s, hop_s > 0 and max_windows >= 1, got {window_s}, {hop_s}, {max_windows}"
        )
    if duration_s + _DURATION_EPS < window_s:
        return []
    candidates = math.floor((duration_s + _DURATION_EPS - window_s) / hop_s) + 1
    if candidates <= max_windows:
        picked = range(candidates)
    elif max_windows == 1:
        picked = range(1)
    else:
        # Distinct because candidates > max_windows: consecutive picks differ by more than one.
        step = (candidates - 1) / (max_windows - 1)
        picked = [round(k * step) for k in range(max_windows)]
    # Rounded so that 3 * 0.1 is 0.3: start times are compared and stored as keys.
    return [float(round(k * hop_s, 9)) for k in picked]

"""Where the training windows of one clip start.

A clip longer than the model's window (``clip.duration_s``) gives several windows, ``hop_s``
apart. Only whole windows count: padding a window past the end of a clip would teach the model
frozen frames and silence that the data does not have.

A long file is capped at the *first* ``max_windows`` windows, not spread over its length. The
reader decodes a file once, front to back, and stops when the last window is complete, so the
cost of a clip is bounded by ``(max_windows - 1) * hop_s + window_s`` seconds of decoding
whatever its length: a 3-hour file costs what a 20-second one does. Spreading the windows
evenly would need the whole file decoded (or a seek per window) for the same number of windows.
"""

from __future__ import annotations

import math

# Slack on durations read from container metadata: a 2 s clip may be listed as 1.9999 s. Far
# below any frame interval, so it never admits a window that misses a frame.
_DURATION_EPS = 1e-3


def plan_windows(duration_s: float, window_s: float, hop_s: float, max_windows: int) -> list[float]:
    """Start times (seconds from the first video frame) of a clip's whole windows.

    Windows start at ``0, hop_s, 2 hop_s, ...`` while they end inside the clip, at most
    ``max_windows`` of them; a clip shorter than one window has none.
    """
    if min(window_s, hop_s) <= 0 or max_windows < 1:
        raise ValueError(
            f"need window_s, hop_s > 0 and max_windows >= 1, got {window_s}, {hop_s}, {max_windows}"
        )
    if duration_s + _DURATION_EPS < window_s:
        return []
    count = min(max_windows, math.floor((duration_s + _DURATION_EPS - window_s) / hop_s) + 1)
    # Rounded so that 3 * 0.1 is 0.3: start times are compared and stored as keys.
    return [round(k * hop_s, 9) for k in range(count)]

import pytest

from tasks.register import gate

CHAMPION = {"av_align": 0.30, "fd_logmel": 40.0, "fd_frames": 4.0}


@pytest.mark.parametrize(
    ("candidate", "promote", "why"),
    [
        ({"av_align": 0.35, "fd_logmel": 41.0, "fd_frames": 4.0}, True, "within 10%"),
        ({"av_align": 0.30, "fd_logmel": 10.0, "fd_frames": 1.0}, False, "does not beat"),
        ({"av_align": 0.40, "fd_logmel": 45.0, "fd_frames": 4.0}, False, "fd_logmel 45"),
        ({"av_align": 0.40, "fd_logmel": 40.0, "fd_frames": 4.5}, False, "fd_frames 4.5"),
    ],
)
def test_gate_promotes_only_better_sync_without_worse_fidelity(candidate, promote, why):
    ok, reason = gate(candidate, CHAMPION, tol=0.1)
    assert ok is promote
    assert why in reason


def test_first_version_is_always_promoted():
    assert gate({"av_align": 0.0, "fd_logmel": 1e9, "fd_frames": 1e9}, None, 0.1)[0]

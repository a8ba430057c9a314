import pytest

from tasks.register import GateConfig, gate

CHAMPION = {"av_align": 0.30, "fd_logmel": 40.0, "fd_frames": 4.0}
RULE = GateConfig(primary="av_align", min_gain=0.0, guards=("fd_logmel", "fd_frames"))


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
    ok, reason = gate(candidate, CHAMPION, RULE)
    assert ok is promote
    assert why in reason


def test_min_gain_and_other_metrics_come_from_the_rule():
    candidate = {"av_align": 0.35, "oracle_f1": 0.9, "fd_logmel": 1e9}
    rule = GateConfig(primary="av_align", min_gain=0.1, guards=())
    assert not gate(candidate, CHAMPION, rule)[0]  # +0.05 is not more than 0.1
    assert gate({**candidate, "av_align": 0.41}, CHAMPION, rule)[0]  # guards off: FD ignored
    rule = GateConfig(primary="oracle_f1", guards=())
    ok, reason = gate(candidate, {"oracle_f1": 0.8}, rule)
    assert ok and "oracle_f1 0.9000 > 0.8000" in reason
    assert "oracle_f1 must beat the champion's by more than 0" in rule.rule()


def test_first_version_is_always_promoted():
    assert gate({"av_align": 0.0, "fd_logmel": 1e9, "fd_frames": 1e9}, None, RULE)[0]


def test_a_rule_naming_a_missing_metric_is_refused_and_a_champion_without_it_is_kept():
    with pytest.raises(ValueError, match="'fad'"):
        GateConfig(primary="av_align", guards=("fad",)).check(CHAMPION)
    ok, reason = gate({**CHAMPION, "oracle_f1": 0.5}, CHAMPION, GateConfig(primary="oracle_f1"))
    assert not ok and "champion has no ['oracle_f1']" in reason


def test_numbers_from_another_evaluation_protocol_never_move_the_champion():
    better = {"av_align": 0.9, "fd_logmel": 1.0, "fd_frames": 1.0}
    assert gate(better, CHAMPION, RULE, ("abc", "abc"))[0]
    ok, reason = gate(better, CHAMPION, RULE, ("abc", "def"))
    assert not ok and "protocol def" in reason and "do not compare" in reason
    assert not gate(better, CHAMPION, RULE, ("abc", ""))[0]  # a champion from before protocols

import math

import pytest

from jointdit.metrics.claims import compare


def test_compare_known_answer():
    a, b = [0.6, 0.8, 0.7, 0.9], [0.2, 0.5, 0.3, 0.4]
    c = compare("joint", "iso", "oracle_f1", a, b)
    assert c.difference == pytest.approx(0.4)
    # se(a) = se(b) = std([.6,.8,.7,.9], ddof=1) / 2 = 0.129099 / 2
    se = 0.12909944487358055 / 2
    assert c.combined_se == pytest.approx(math.sqrt(2) * se)
    # differences 0.4, 0.3, 0.4, 0.5: std 0.08165, / 2
    assert c.paired_se == pytest.approx(0.08164965809277261 / 2)
    assert c.holds and c.n == 4
    assert c.to_dict()["holds"] is True


def test_a_difference_within_twice_the_combined_error_does_not_hold():
    c = compare("a", "b", "m", [0.5, 0.9, 0.1, 0.7], [0.4, 0.8, 0.2, 0.5])
    assert 0 < c.difference < 2 * c.combined_se and not c.holds
    # the same scores the other way round: a negative difference never holds
    assert not compare("b", "a", "m", [0.4, 0.8, 0.2, 0.5], [0.5, 0.9, 0.1, 0.7]).holds


@pytest.mark.parametrize(("a", "b"), [([0.1, 0.2], [0.1]), ([0.1], [0.2]), ([], [])])
def test_compare_needs_paired_lists_of_at_least_two(a, b):
    with pytest.raises(ValueError, match="per-clip"):
        compare("a", "b", "m", a, b)

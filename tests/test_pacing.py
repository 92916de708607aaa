"""Pacing against hand-computed cases."""

import math

import numpy as np
import pytest

from p3.pacing import eligible, momentum_difficulty, percentile_at


def test_linear_schedule_is_the_papers():
    # pct(e) = 45 + e·(95−45)/E, E = 5
    assert [percentile_at(e, 5) for e in range(5)] == [45.0, 55.0, 65.0, 75.0, 85.0]


def test_root_and_geometric_shapes():
    assert percentile_at(1, 4, 20, 80, "root") == pytest.approx(20 + 60 * 0.5)
    assert percentile_at(0, 4, 20, 80, "root") == 20
    assert percentile_at(2, 4, 10, 90, "geometric") == pytest.approx(10 * 3.0)  # 10·9^(1/2)
    assert percentile_at(1, 3, 10, 80, "geometric") == pytest.approx(10 * 2.0)  # 10·8^(1/3)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="shape"):
        percentile_at(0, 3, shape="cubic")
    with pytest.raises(ValueError, match="start > 0"):
        percentile_at(1, 3, 0, 50, "geometric")
    with pytest.raises(ValueError):
        percentile_at(0, 0)


def test_threshold_mode_hand_case():
    d = np.array([0.1, 0.9, 0.5, 0.3, 0.7])  # sorted: .1 .3 .5 .7 .9
    # epoch 0 of 5: pct 45 -> position 0.45·4 = 1.8 -> 0.3 + 0.8·0.2 = 0.46
    pace = eligible(d, 0, 5)
    assert pace.percentile == 45.0
    assert pace.threshold == pytest.approx(0.46)
    assert pace.eligible.tolist() == [True, False, False, True, False]
    # epoch 4: pct 85 -> position 3.4 -> 0.7 + 0.4·0.2 = 0.78
    pace = eligible(d, 4, 5)
    assert pace.threshold == pytest.approx(0.78)
    assert pace.eligible.tolist() == [True, False, True, True, True]


def test_band_mode_hand_case():
    d = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    # epoch 2 of 4, linear: upper 45 + 25 = 70 -> pos 2.8 -> 0.66; lower 0 + 25 = 25 -> pos 1 -> 0.3
    pace = eligible(d, 2, 4, mode="band", lower_start=0, lower_end=50)
    assert pace.percentile == 70 and pace.lower_percentile == 25
    assert pace.threshold == pytest.approx(0.66)
    assert pace.lower_threshold == pytest.approx(0.3)
    assert pace.eligible.tolist() == [False, False, True, True, False]


def test_momentum_mode_hand_case():
    cur = np.array([0.2, 0.4, 0.6, 0.8])
    prev = np.array([0.4, 0.4, 0.2, np.nan])
    # d̃ = d + 0.1 (d − prev): 0.18, 0.40, 0.64, 0.80 (no previous score)
    np.testing.assert_allclose(momentum_difficulty(cur, prev, 0.1), [0.18, 0.40, 0.64, 0.80])
    # pct 45 of d̃: pos 1.35 -> 0.40 + 0.35·0.24 = 0.484
    pace = eligible(cur, 0, 5, mode="momentum", alpha=0.1, previous=prev)
    assert pace.threshold == pytest.approx(0.484)
    assert pace.eligible.tolist() == [True, True, False, False]
    # without a previous epoch it is the threshold mode
    assert eligible(cur, 0, 5, mode="momentum").eligible.tolist() == eligible(cur, 0, 5).eligible.tolist()
    # the pace says whether momentum moved the values: only with some earlier difficulty
    assert pace.momentum_applied
    assert not eligible(cur, 0, 5, mode="momentum").momentum_applied
    assert not eligible(cur, 0, 5, mode="momentum", previous=np.full(len(cur), np.nan)).momentum_applied
    assert not eligible(cur, 0, 5, previous=prev).momentum_applied


def test_eligible_fraction_grows_with_epochs():
    d = np.random.default_rng(0).uniform(size=1000)
    fracs = [eligible(d, e, 5).eligible.mean() for e in range(5)]
    assert fracs == sorted(fracs)
    assert math.isclose(fracs[0], 0.45, abs_tol=0.002)

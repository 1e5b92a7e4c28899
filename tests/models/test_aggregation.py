"""Study-level aggregation (seed 004 §6.2.2)."""

import pytest

from models.aggregation import aggregate, aggregate_study


def test_rules_on_hand_worked_values() -> None:
    p = [0.9, 0.2, 0.1]
    assert aggregate(p, "max") == pytest.approx(0.9)
    assert aggregate(p, "mean") == pytest.approx(0.4)
    assert aggregate(p, "noisy_or") == pytest.approx(1 - 0.1 * 0.8 * 0.9)
    assert aggregate(p, "majority") == pytest.approx(1 / 3)


def test_at_least_one_flags_a_fracture_seen_in_one_view_majority_does_not() -> None:
    # Seed 004 §6.3: the fracture is visible in the AP view only.
    views = [("WRIST R", 0.92), ("WRIST R", 0.08)]
    assert aggregate_study(views, "max").positive
    assert not aggregate_study(views, "majority").positive  # a tie is not a majority


def test_sites_first_then_study() -> None:
    views = [("HIP L", 0.2), ("HIP L", 0.4), ("HIP R", 0.7), ("HIP R", 0.9)]
    result = aggregate_study(views, "mean")
    assert [(s.site, s.probability, s.views) for s in result.sites] == [
        ("HIP L", pytest.approx(0.3), 2), ("HIP R", pytest.approx(0.8), 2)]
    assert result.probability == pytest.approx(0.55)
    assert result.positive


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregation"):
        aggregate([0.1], "median")
    with pytest.raises(ValueError, match="zero views"):
        aggregate([], "max")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aggregate([1.5], "max")
    with pytest.raises(ValueError, match="at least one"):
        aggregate_study([], "max")

"""Learning-rate schedule: linear warmup, cosine to the floor at the last step."""

import math

import pytest

from caramba.training.schedule import lr_at


def test_warmup_ramps_linearly_and_never_starts_at_zero() -> None:
    values = [lr_at(s, lr=1.0, total_steps=100, warmup_steps=4) for s in range(4)]
    assert values == [0.25, 0.5, 0.75, 1.0]


def test_decay_starts_at_peak_and_ends_at_floor_on_last_step() -> None:
    kwargs = dict(lr=2e-3, total_steps=101, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(10, **kwargs) == pytest.approx(2e-3)
    assert lr_at(100, **kwargs) == pytest.approx(2e-4)
    midpoint = 10 + 45  # half of the 90 decay steps
    assert lr_at(midpoint, **kwargs) == pytest.approx((2e-3 + 2e-4) / 2)


def test_decay_is_monotonic_and_clamped_past_the_end() -> None:
    values = [lr_at(s, lr=1.0, total_steps=50, min_lr_ratio=0.0) for s in range(50)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr_at(80, lr=1.0, total_steps=50, min_lr_ratio=0.0) == values[-1]


def test_no_room_for_decay_keeps_peak_rate() -> None:
    assert lr_at(0, lr=0.5, total_steps=1) == 0.5
    assert lr_at(4, lr=0.5, total_steps=5, warmup_steps=5) == 0.5


def test_is_a_pure_function_of_step() -> None:
    a = [lr_at(s, lr=1e-3, total_steps=30, warmup_steps=5) for s in range(30)]
    b = [lr_at(s, lr=1e-3, total_steps=30, warmup_steps=5) for s in reversed(range(30))]
    assert a == b[::-1]
    assert all(math.isfinite(v) and v > 0 for v in a)


def test_negative_step_is_rejected() -> None:
    with pytest.raises(ValueError):
        lr_at(-1, lr=1.0, total_steps=10)

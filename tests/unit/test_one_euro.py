"""The One-Euro filter against what the paper predicts: first-order low-pass gain and lag, and a
cutoff that rises with speed as `fc = min_cutoff + beta * |dx|`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.tracking.one_euro import OneEuroConfig, OneEuroFilter

pytestmark = pytest.mark.unit

RATE_HZ = 1000.0  # well above every frequency below: the discrete filter follows the analogue one


def run(config: OneEuroConfig, signal: np.ndarray, rate_hz: float = RATE_HZ) -> np.ndarray:
    one_euro = OneEuroFilter(config)
    return np.array([one_euro(np.array([x]), i / rate_hz)[0] for i, x in enumerate(signal)])


@pytest.mark.parametrize(("f_hz", "fc_hz"), [(5.0, 1.0), (10.0, 2.0), (0.5, 1.0)])
def test_a_sinusoid_is_attenuated_as_a_first_order_low_pass_at_beta_zero(f_hz: float, fc_hz: float) -> None:
    t = np.arange(int(RATE_HZ * 12)) / RATE_HZ
    out = run(OneEuroConfig(min_cutoff=fc_hz, beta=0.0), np.sin(2 * math.pi * f_hz * t))
    settled = out[t >= 6.0]  # transients long gone (tau <= 0.16 s)
    gain = (settled.max() - settled.min()) / 2.0
    expected = 1.0 / math.sqrt(1.0 + (f_hz / fc_hz) ** 2)
    assert gain == pytest.approx(expected, rel=0.03)


def test_a_step_is_reached_with_the_lag_tau_at_beta_zero() -> None:
    fc_hz = 2.0
    signal = np.r_[np.zeros(100), np.ones(2000)]
    out = run(OneEuroConfig(min_cutoff=fc_hz, beta=0.0), signal)
    after = out[100:]
    t63_s = np.argmax(after >= 1 - math.exp(-1)) / RATE_HZ  # time constant of a first-order filter
    assert t63_s == pytest.approx(1.0 / (2 * math.pi * fc_hz), rel=0.03)
    assert after[-1] == pytest.approx(1.0, abs=1e-3)  # no overshoot, no steady-state error
    assert after.max() <= 1.0 + 1e-9


def test_speed_raises_the_cutoff_so_a_step_lags_less_with_beta() -> None:
    signal = np.r_[np.zeros(100), 100 * np.ones(1000)]
    t63 = []
    for beta in (0.0, 0.01, 0.1):
        after = run(OneEuroConfig(min_cutoff=1.0, beta=beta, d_cutoff=1.0), signal)[100:]
        t63.append(np.argmax(after >= 100 * (1 - math.exp(-1))) / RATE_HZ)
    assert t63[0] > t63[1] > t63[2]


@pytest.mark.parametrize(("speed", "beta"), [(50.0, 0.0), (50.0, 0.02), (200.0, 0.05)])
def test_the_lag_behind_a_ramp_follows_the_cutoff_formula(speed: float, beta: float) -> None:
    """Behind a ramp of speed v a first-order low-pass lags v * tau, tau = 1 / (2 pi fc);
    the speed estimate settles to v, so fc = min_cutoff + beta * v."""
    min_cutoff = 1.0
    t = np.arange(int(RATE_HZ * 10)) / RATE_HZ
    out = run(OneEuroConfig(min_cutoff=min_cutoff, beta=beta, d_cutoff=1.0), speed * t)
    lag = speed * t[-1] - out[-1]
    fc_hz = min_cutoff + beta * speed
    assert lag == pytest.approx(speed / (2 * math.pi * fc_hz), rel=0.02)


def test_arrays_are_filtered_elementwise_and_timestamps_may_be_uneven() -> None:
    one_euro = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0))
    first = one_euro(np.array([[0.0, 10.0], [5.0, 5.0]]), 0.0)
    np.testing.assert_array_equal(first, [[0.0, 10.0], [5.0, 5.0]])  # the first sample passes
    before = one_euro(np.zeros((2, 2)), 0.1)
    again = one_euro(np.ones((2, 2)), 0.1)  # a repeated timestamp changes nothing
    np.testing.assert_array_equal(again, before)
    later = one_euro(np.ones((2, 2)), 0.35)
    alone = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0))
    for x, t_s in ((5.0, 0.0), (0.0, 0.1), (1.0, 0.35)):
        last = alone(np.array([x]), t_s)
    assert later[1, 0] == pytest.approx(last[0])  # element (1, 0) as if filtered alone

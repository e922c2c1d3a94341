"""engine.summaries on a trace long enough that "the second half" and "all but the first
step" are different sets of steps."""

from __future__ import annotations

import math

import pytest
import torch

from engine.summaries import column_stability
from engine.trace import TraceOptions


def test_late_cos_averages_the_second_half_of_a_longer_trace(tiny_bundle):
    config = tiny_bundle.default_config("vanilla", scale=3.0)
    result = tiny_bundle.sample([config], [1, 7], [0, 1], respacing="8", trace=TraceOptions(record_every=4))
    (row,) = column_stability(result)
    cos = result.traces["vanilla"].series("cos_raw").double()  # (8 steps, 2 images); step 0 is NaN
    assert cos.shape == (8, 2) and torch.isnan(cos[0]).all() and torch.isfinite(cos[1:]).all()
    assert row.late_cos == pytest.approx(float(cos[4:].mean()), abs=1e-9)  # steps 4..7: the low-noise half
    assert row.mean_cos == pytest.approx(float(cos[1:].mean()), abs=1e-9)
    assert abs(float(cos[4:].mean()) - float(cos[1:].mean())) > 1e-6  # the two windows really differ here
    assert not math.isnan(row.mean_grad_norm)

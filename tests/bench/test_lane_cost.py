"""bench/lane_cost.py: the in-process measure of what a V2 binary request costs beside the model's run, on a real
exported model through the real app's inference lane, and how docs/benchmarks.md words it."""

from __future__ import annotations

import math

from bench import document, lane_cost


def test_lane_cost_times_the_real_lane(model_repository):
    cost = lane_cost.measure(model_repository, "lstm_step", seconds=0.2)
    values = [cost.model_us, cost.whole_us, cost.hot_us, cost.cold_us]
    assert all(math.isfinite(v) and v > 0 for v in values), cost
    # The whole answer does what the stand-in answer does plus a real run of the model.
    assert cost.whole_us > cost.hot_us, cost
    assert cost.beside_us == cost.whole_us - cost.model_us


def test_the_report_gives_each_number_and_passes_a_reason_through():
    cost = lane_cost.LaneCost("h32", model_us=1100.4, whole_us=1300.2, hot_us=70.0, cold_us=221.6)
    (text,) = document._beside(cost)
    for shown in ("1,100 us", "1,300 us", "**200 us beside the run**", "70 us", "**222 us right after a real run**"):
        assert shown in text, (shown, text)
    assert document._beside("FAILED: RuntimeError: boom") == ["FAILED: RuntimeError: boom"]

"""bench/lane_cost.py: the in-process measure of what a binary request costs beside the model's run, on a real
exported model through the real app's inference lane, and how docs/benchmarks.md words it."""

from __future__ import annotations

import math

from bench import document, lane_cost


def test_lane_cost_times_the_real_lane_for_each_binary_format(model_repository):
    costs = lane_cost.measure(model_repository, "lstm_step", seconds=0.2)
    assert [c.format for c in costs] == list(lane_cost.FORMATS)
    for cost in costs:
        values = [cost.model_us, cost.whole_us, cost.hot_us, cost.cold_us, cost.encode_us]
        assert all(math.isfinite(v) and v > 0 for v in values), cost
        assert cost.beside_us == cost.whole_us - cost.model_us
    # measure() asserts a 200 for every answer it times, the stand-in's included: a lane that refused the request
    # (or a stand-in whose outputs the answer could not encode) fails it before any number is reported.


def test_the_report_gives_each_number_and_passes_a_reason_through():
    v2 = lane_cost.LaneCost("h32", "v2-binary", 1100.4, 1300.2, 70.0, 221.6, 3.2)
    v1 = lane_cost.LaneCost("h32", "v1-binary", 1100.4, 1800.0, 450.0, 590.0, 359.0)
    lines = document._beside([v2, v1])
    assert "Model h32" in lines[0]
    rows = [line for line in lines if line.startswith("| V2") or line.startswith("| v1")]
    assert rows == [
        "| V2 binary | 1,100 us | 1,300 us | **200 us** | 70 us | **222 us** | 3 us |",
        "| v1 raw float32 | 1,100 us | 1,800 us | **700 us** | 450 us | **590 us** | 359 us |",
    ]
    assert document._beside("FAILED: RuntimeError: boom") == ["FAILED: RuntimeError: boom"]

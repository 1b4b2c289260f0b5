"""bench/ab.py reads its sides, cells and per-side settings as documented, and refuses what it cannot run."""

from __future__ import annotations

import argparse

import pytest

from bench.ab import SEQSERVE, Cell, Side, parser, with_env
from tests.conftest import REPO_ROOT


def test_side_and_cell_specs():
    side = Side.parse(f"new={REPO_ROOT}")
    bare = Side.parse(f"bare={REPO_ROOT}@bench.apps.bare:create_app()")
    assert (side.name, side.checkout, side.app) == ("new", REPO_ROOT.resolve(), SEQSERVE)
    assert bare.app == "bench.apps.bare:create_app()"
    cell = Cell.parse("h32/v2-binary/64x50/8")
    assert (cell.path(side), cell.path(bare), cell.concurrency) == ("/v2/models/h32/infer", "/predict", 8)
    assert Cell.parse("h128/v1-json/1x50/1").path(side) == "/v1/models/h128/predict"


@pytest.mark.parametrize(
    ("parse", "spec"),
    [
        (Side.parse, "no-equals-sign"),
        (Side.parse, "x=/nonexistent/checkout"),
        (Cell.parse, "h32/v1-json/1x50"),
        (Cell.parse, "h32/protobuf/1x50/8"),
        (Cell.parse, "h32/v1-json/1x50/eight"),
        (Cell.parse, "h32/v1-json/2x7/8"),
    ],
)
def test_bad_specs_are_refused(parse, spec):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(spec)


def test_env_goes_to_its_side_only():
    a, b = Side.parse(f"a={REPO_ROOT}"), Side.parse(f"b={REPO_ROOT}")
    a2, b2 = with_env([a, b], ["b:SEQSERVE_INLINE_BELOW_MS=5"])
    assert (a2.env, b2.env) == ((), (("SEQSERVE_INLINE_BELOW_MS", "5"),))
    with pytest.raises(SystemExit):
        with_env([a, b], ["c:X=1"])


def test_warm_cells_are_read_as_cells():
    args = parser().parse_args(
        ["--side", f"a={REPO_ROOT}", "--cell", "h32/v2-binary/64x50/8", "--warm", "h128/v1-json/64x50/32"]
    )
    assert args.warm == [Cell.parse("h128/v1-json/64x50/32")]
    assert args.warm_seconds == 4
    with pytest.raises(SystemExit):
        parser().parse_args(["--side", f"a={REPO_ROOT}", "--cell", "h32/v2-binary/64x50/8", "--warm", "h128/x/1x50/1"])

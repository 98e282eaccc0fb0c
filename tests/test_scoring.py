"""The scoring-function grammar accepts what waterz ships and composes, and nothing else."""

from __future__ import annotations

import pytest
from waterz import _codegen

from neurosam.graph.scoring import ScoringFunctionError, parse_scoring_function


def test_every_function_waterz_ships_prebuilt_is_accepted():
    for spec in _codegen.iter_specs():
        assert parse_scoring_function(spec.scoring_function) == parse_scoring_function(_codegen.normalize(spec.scoring_function))


@pytest.mark.parametrize("function", [
    "OneMinus<QuantileAffinity<RegionGraphType, 75, ScoreValue>>",
    "Multiply<OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>, MinSize<RegionGraphType>>",
    "Step<MeanMaxKAffinity<RegionGraphType, 3, ScoreValue>, Constant<RegionGraphType, 2>>",
])
def test_composed_functions_are_accepted(function):
    assert parse_scoring_function(function) == parse_scoring_function(function.replace(" ", ""))


@pytest.mark.parametrize("function", [
    "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>> > 0",
    "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>",
    "Add<MinSize<RegionGraphType>>",
    "MeanAffinity<RegionGraphType, ScoreValue, 3>",
    "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>/**/",
    "std::system",
])
def test_anything_else_is_refused(function):
    with pytest.raises(ScoringFunctionError):
        parse_scoring_function(function)

"""Normalisation statistics: upstream presets and user stats.json validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.tokens.stats import PRESETS, load_stats


def test_presets_have_upstream_dims_and_values():
    so100, libero, world = load_stats("so100"), load_stats("libero"), load_stats("libero_world")
    assert (so100.action.dim, so100.state.dim, libero.action.dim, libero.state.dim) == (6, 6, 7, 8)
    assert world.state is None and world.action.dim == 7
    assert so100.action.min[0] == -27.33398438 and so100.state.max[4] == 172.61718750
    assert so100.action.min.dtype == np.float64
    # upstream writes the LIBERO state max in full precision (the research summary rounds it)
    assert libero.state.max[0] == 2.10313803e-01 and libero.state.max[7] == 1.31260958e-03
    # the world model tokenises actions with a different range in dims 3 and 5 only
    differs = (world.action.min != libero.action.min) | (world.action.max != libero.action.max)
    assert np.flatnonzero(differs).tolist() == [3, 5]
    assert (world.action.min[3], world.action.max[3]) == (-0.32571429, 0.375)


def test_stats_json_round_trip(tmp_path):
    path = tmp_path / "stats.json"
    PRESETS["so100"].save(path)
    loaded = load_stats(path)
    np.testing.assert_array_equal(loaded.state.max, PRESETS["so100"].state.max)
    np.testing.assert_array_equal(loaded.action.min, PRESETS["so100"].action.min)
    path.write_text(json.dumps({"action": {"min": [-1, 0], "max": [1, 2.5]}}))
    only_action = load_stats(str(path))
    assert only_action.state is None and only_action.action.max.tolist() == [1.0, 2.5]


GOOD = {"min": [0.0, 0.0], "max": [1.0, 1.0]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        (json.dumps({"state": GOOD}), 'missing key "action"'),
        (json.dumps({"action": GOOD, "extra": GOOD}), r"unknown key\(s\) \['extra'\]"),
        (json.dumps({"action": [0, 1]}), '"action" must be an object with "min" and "max"'),
        (json.dumps({"action": {"min": [0.0]}}), '"action" must be an object with "min" and "max"'),
        (json.dumps({"action": {"min": [], "max": []}}), "action.min must be a non-empty list"),
        (
            json.dumps({"action": {"min": [0, 0], "max": [1, 1, 1]}}),
            "action.min has 2 values but action.max has 3",
        ),
        ('{"action": {"min": [0, 0], "max": [1, NaN]}}', r"action.max\[1\] = nan is not a finite number"),
        (json.dumps({"action": {"min": [0, "0"], "max": [1, 1]}}), r"action.min\[1\] = '0' is not a finite"),
        (json.dumps({"action": {"min": [0, True], "max": [1, 1]}}), r"action.min\[1\] = True"),
        (
            json.dumps({"action": GOOD, "state": {"min": [0, 2], "max": [1, 2]}}),
            r"state.min\[1\] = 2 is not below",
        ),
    ],
)
def test_stats_json_errors_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "my_stats.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        load_stats(path)
    assert str(path) in str(err.value)


def test_unknown_name_lists_presets():
    with pytest.raises(UserError, match="so100, libero, libero_world"):
        load_stats("so101")

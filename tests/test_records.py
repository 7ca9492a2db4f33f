"""The run folder's records: history lines."""

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from epochal.records import json_line


@given(st.dictionaries(st.sampled_from(["step", "loss", "lr", "grad_norm"]),
                       st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True))))
def test_a_history_line_is_standard_json_with_null_for_non_finite_numbers(record):
    line = json_line(record)
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert "NaN" not in line and "Infinity" not in line
    back = json.loads(line)
    for key, value in record.items():
        finite = not isinstance(value, float) or math.isfinite(value)
        assert back[key] == (value if finite else None)

"""The run folder's records: history lines."""

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from epochal.run_folder import json_line


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


def test_a_run_folder_has_seed_003s_names_as_links_to_the_files_that_hold_the_data(run_toy, tmp_path):
    import os

    result = run_toy("r", settings={"train.max_epochs": 1})
    folder = result.run_dir
    assert os.readlink(folder / "metrics.json") == "result.json"
    assert os.readlink(folder / "logs" / "history.jsonl") == "../history.jsonl"
    assert (folder / "metrics.json").read_text() == (folder / "result.json").read_text()
    assert (folder / "logs" / "history.jsonl").read_text() == (folder / "history.jsonl").read_text()
    # a folder of the layout before the links gets them when it is resumed
    (folder / "metrics.json").unlink()
    (folder / "logs" / "history.jsonl").unlink()
    (folder / "logs").rmdir()
    resumed = run_toy("r", settings={"train.max_epochs": 2}, resume="must", force=True)
    assert resumed.status == "completed"
    assert (folder / "metrics.json").read_text() == (folder / "result.json").read_text()
    assert (folder / "logs" / "history.jsonl").read_text().count("epoch_end") == 2

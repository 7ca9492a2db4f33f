from types import SimpleNamespace

import pytest

from epochal.callbacks.gate import Gate
from epochal.decisions import Save, Stop
from epochal.errors import ConfigError
from epochal.state import TrainState


def make(stop=True):
    return Gate({"edge_compliance": 0.95, "rule_compliance": 0.80}, {}, stop), SimpleNamespace(state=TrainState())


def test_gate_passes_only_when_every_threshold_is_exceeded():
    gate, run = make()
    assert gate.on_eval_end(run, {"edge_compliance": 0.99, "rule_compliance": 0.80}) == []  # not strictly above
    assert not gate.passed
    run.state.epoch = 5
    decisions = gate.on_eval_end(run, {"edge_compliance": 0.99, "rule_compliance": 0.81})
    assert decisions == [Save("gate"), Stop("gate passed at epoch 5")]
    assert gate.passed and gate.passed_epoch == 5
    meta = gate.result()["metadata"]
    assert meta["gate_passed"] is True and "failure_reason" not in meta
    assert gate.on_eval_end(run, {"edge_compliance": 0.99, "rule_compliance": 0.9}) == []  # passes once


def test_a_gate_that_does_not_stop_still_keeps_its_checkpoint():
    gate, run = make(stop=False)
    assert gate.on_eval_end(run, {"edge_compliance": 0.99, "rule_compliance": 0.9}) == [Save("gate")]


def test_gate_failure_metadata_names_final_values():
    gate, run = make()
    gate.on_eval_end(run, {"edge_compliance": 0.5, "rule_compliance": 0.2})
    meta = gate.result()["metadata"]
    assert meta["gate_passed"] is False and "gate not passed" in meta["failure_reason"]
    assert meta["final_edge_compliance"] == 0.5 and meta["final_rule_compliance"] == 0.2


def test_below_thresholds_and_unknown_metric():
    gate = Gate({}, {"loss": 0.1})
    assert gate.check({"loss": 0.05}) and not gate.check({"loss": 0.1})
    with pytest.raises(ConfigError, match="'loss' is not an evaluation metric"):
        gate.check({"acc": 1.0})

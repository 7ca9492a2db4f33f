from types import SimpleNamespace

import pytest

from epochal.callbacks.gate import Gate
from epochal.errors import ConfigError
from epochal.state import TrainState


def make():
    return Gate({"edge_compliance": 0.95, "rule_compliance": 0.80}, {}), SimpleNamespace(state=TrainState())


def test_gate_passes_only_when_every_threshold_is_exceeded():
    gate, fit = make()
    gate.on_eval_end(fit, {"edge_compliance": 0.99, "rule_compliance": 0.80})  # not strictly above
    assert not gate.passed and not fit.state.should_stop
    fit.state.epoch = 4
    gate.on_eval_end(fit, {"edge_compliance": 0.99, "rule_compliance": 0.81})
    assert gate.passed and gate.passed_epoch == 5 and fit.state.should_stop
    assert gate.metadata()["gate_passed"] is True and "failure_reason" not in gate.metadata()


def test_gate_failure_metadata_names_final_values():
    gate, fit = make()
    gate.on_eval_end(fit, {"edge_compliance": 0.5, "rule_compliance": 0.2})
    meta = gate.metadata()
    assert meta["gate_passed"] is False and "gate not passed" in meta["failure_reason"]
    assert meta["final_edge_compliance"] == 0.5 and meta["final_rule_compliance"] == 0.2


def test_below_thresholds_and_unknown_metric():
    gate = Gate({}, {"loss": 0.1})
    assert gate.check({"loss": 0.05}) and not gate.check({"loss": 0.1})
    with pytest.raises(ConfigError, match="'loss' is not an evaluation metric"):
        gate.check({"acc": 1.0})

import json
import os
import signal

import numpy as np
import pytest
import torch

from epochal import run as fit
from epochal.callbacks.base import Callback
from epochal.checkpoint import CheckpointStore
from epochal.config import load_toml
from epochal.resolve import resolve
from epochal.errors import ConfigError
from epochal.tasks import RunContext, get_task
from epochal.tasks.walks.corpus import load_corpus, load_graph
from epochal.tasks.walks.graph import reach_sets

# Small enough to train in a few seconds on one CPU thread, large enough that an untrained model fails the gate.
TINY = {
    "task.n_vertices": 16, "task.n_blocks": 4, "task.p_in": 0.5, "task.p_out": 0.08, "task.n_jumpers": 3,
    "task.rule_distance": 3, "task.num_walks": 700, "task.walk_length": 18, "task.eval_sequences": 100,
    "task.context": 8, "task.d_model": 32, "task.n_layers": 1, "task.n_heads": 2,
    "optim.lr": 3e-3, "train.batch_size": 32, "train.max_epochs": 10, "train.progress": False,
}


def quiet(_message):
    pass


def run_walks(tmp_path, experiment_id="run", **settings):
    return fit("walks", overrides={**TINY, **settings}, out_dir=tmp_path, experiment_id=experiment_id, log=quiet)


def build_tiny(tmp_path, **settings):
    config = resolve("walks", [{"task": {k.split(".", 1)[1]: v for k, v in {**TINY, **settings}.items()
                                         if k.startswith("task.")}}])
    run = RunContext(tmp_path, torch.device("cpu"), 0, config)
    task = get_task("walks")
    return task, config, task.build(config.task, run)


def test_defaults_carry_the_seed_recipe():
    config = resolve("walks", [])
    assert config.train.batch_size == 64 and config.train.max_epochs == 50 and config.train.eval_every == 1
    assert config.optim.lr == 3e-4 and config.optim.weight_decay == 0.01 and config.train.grad_clip == 1.0
    assert config.schedule.kind == "cosine" and config.schedule.warmup_fraction == 0.1
    assert config.schedule.min_lr_ratio == 0.1
    assert config.gate.above == {"edge_compliance": 0.95, "rule_compliance": 0.80}
    assert config.task.eval_sequences == 1000


def test_the_default_recipe_file_spells_out_the_defaults():
    from_file = resolve(None, [load_toml("walks")])
    assert from_file.to_dict() == resolve("walks", []).to_dict()


def test_the_large_recipe_is_research_sized():
    large = resolve(None, [load_toml("walks-large")])
    assert large.task.n_vertices >= 500 and large.task.context == 64 and large.task.walk_length == 256
    assert large.gate.above == {"edge_compliance": 0.95, "rule_compliance": 0.80}
    assert large.optim.lr == 3e-4 and large.train.batch_size == 64


@pytest.mark.parametrize("key,value,message", [
    ("task.rule_distance", 40, "task.rule_distance: 40 exceeds the context 32"),
    ("task.walk_length", 20, "task.walk_length: 20 is shorter than context \\+ 1 = 33"),
    ("task.eval_sequences", 5000, "task.eval_sequences: 5000 leaves no training walks"),
    ("task.n_heads", 5, "task.n_heads: 5 does not divide d_model 64"),
    ("task.p_out", 1.5, "task.p_out: 1.5 out of range"),
    ("task.n_blocks", 100, "task.n_blocks: 100 blocks for 64 vertices"),
    ("task.n_jumpers", 65, "task.n_jumpers: 65 out of range"),
    ("task.context", 0, "task.context: 0 must be positive"),
])
def test_impossible_settings_name_the_key(key, value, message):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=message):
        resolve("walks", [{section: {name: value}}])


def test_build_writes_the_graph_and_walks_and_hands_chunks(tmp_path):
    task, config, built = build_tiny(tmp_path)
    tokens = built.train_data["tokens"]
    assert tokens.dtype == torch.int64 and tokens.shape == (600 * 2, 9)  # 18 // 9 = 2 chunks per train walk
    graph, jumpers = load_graph(tmp_path / "graph.npz")
    corpus = load_corpus(tmp_path / "walks.npz")
    assert corpus.train.shape == (600, 18) and corpus.eval.shape == (100, 18)
    assert torch.equal(tokens, torch.from_numpy(corpus.train.reshape(-1, 9)))
    assert torch.equal(built.eval_context.starts, torch.from_numpy(corpus.eval[:, 0]))
    assert np.array_equal(graph.indices, built.eval_context.graph.indices)
    assert len(jumpers) == 3 and all(j.r == 3 for j in jumpers)
    # Building again with the same seed gives the same files' contents.
    _, _, again = build_tiny(tmp_path / "again")
    assert torch.equal(again.train_data["tokens"], tokens)


def test_loss_is_next_vertex_cross_entropy(tmp_path):
    task, _, built = build_tiny(tmp_path)
    batch = {"tokens": built.train_data["tokens"][:5]}
    loss = task.loss(built.model, batch)["loss"]
    logits = built.model(batch["tokens"][:, :-1])
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), batch["tokens"][:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert abs(loss.item() - np.log(16)) < 0.2  # near uniform at init


def test_a_configuration_whose_rules_cannot_hold_is_a_config_error(tmp_path):
    # Blocks with no edges between them: no jumper can ever reach another block.
    with pytest.raises(ConfigError, match="task.p_in/task.p_out: no strongly connected graph"):
        build_tiny(tmp_path, **{"task.p_out": 0.0})


def test_too_many_jumpers_for_the_rule_distance_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"task.rule_distance/task.n_jumpers: only \d+ vertices can reach"):
        build_tiny(tmp_path, **{"task.rule_distance": 1, "task.n_jumpers": 16, "task.p_out": 0.05})


@pytest.mark.slow
def test_tiny_run_passes_the_gate_that_an_untrained_model_fails(tmp_path):
    result = run_walks(tmp_path)
    assert result.status == "completed"
    assert result.result["metadata"]["gate_passed"] is True
    assert result.metrics["edge_compliance"] > 0.95 and result.metrics["rule_compliance"] > 0.80
    assert result.stop_reason.startswith("gate passed")
    assert (result.run_dir / "graph.npz").exists() and (result.run_dir / "walks.npz").exists()

    task, _, built = build_tiny(tmp_path / "fresh")
    with torch.no_grad():
        untrained = task.evaluate(built.model.eval(), built.eval_context)
    assert untrained["edge_compliance"] < 0.95


@pytest.mark.slow
def test_gate_failure_is_recorded_in_result_json(tmp_path):
    result = run_walks(tmp_path, **{"train.max_epochs": 1, "optim.lr": 1e-6})
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert result.status == saved["status"] == "gate_failed" and result.exit_code == 3
    assert saved["metadata"]["gate_passed"] is False
    assert "gate not passed" in saved["metadata"]["failure_reason"]
    assert saved["metadata"]["final_edge_compliance"] == saved["metrics"]["edge_compliance"] < 0.95
    assert len(saved["curves"]["rule_compliance"]) == 1


class SignalAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, fit):
        if fit.state.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(tmp_path):
    settings = {"train.max_epochs": 2, "gate.above.edge_compliance": 2.0}  # the gate never stops these runs
    straight = run_walks(tmp_path, "straight", **settings)
    stopped = fit("walks", overrides={**TINY, **settings}, out_dir=tmp_path, experiment_id="stopped", log=quiet,
                  callbacks=[SignalAtStep(25)])
    assert stopped.status == "preempted"
    resumed = fit("walks", overrides={**TINY, **settings}, out_dir=tmp_path, experiment_id="stopped", log=quiet,
                  resume="must")
    assert resumed.status == straight.status == "gate_failed"  # the gate never passes: a failed config
    assert resumed.result["curves"] == straight.result["curves"]
    a = CheckpointStore(straight.run_dir / "checkpoints", 3).load_states("last.pt")["model"]
    b = CheckpointStore(resumed.run_dir / "checkpoints", 3).load_states("last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rules_of_the_built_graph_are_satisfiable(tmp_path):
    _, _, built = build_tiny(tmp_path)
    graph, jumpers = built.eval_context.graph, built.eval_context.jumpers
    reach = reach_sets(graph, 3)
    assert all(reach[j.target_block, j.r, j.vertex_id] for j in jumpers)
    assert all(j.target_block != graph.blocks[j.vertex_id] for j in jumpers)
